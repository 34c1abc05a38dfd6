"""A circuit breaker: stop calling a Redis that is down, and notice by itself when it is back.

Without one, every request during an outage pays for finding out again that Redis is gone: a
refused connection costs little, but a server that is frozen, overloaded or behind a dropped
network link costs a full socket timeout per request, and the requests pile up behind each other.
A breaker remembers the verdict instead:

- **closed** (normal): every call goes to Redis; ``failures`` consecutive failures open it.
- **open**: no call goes to Redis at all; the cache answers at once (from the loader, or with an
  error, per its ``on_redis_error``). After ``reset_after`` seconds it becomes half-open.
- **half-open**: exactly one call (the *probe*) goes to Redis; the others are still answered as if
  open. If the probe succeeds the breaker closes, if it fails it opens for another ``reset_after``.

The breaker knows nothing about Redis: the caller asks :meth:`CircuitBreaker.allow` for a
:class:`Permit`, and reports how the call went with :meth:`~CircuitBreaker.success`,
:meth:`~CircuitBreaker.failure` or (for a call that ended without a verdict, e.g. cancelled)
:meth:`~CircuitBreaker.release`. A result only counts if the breaker is still in the state that
issued the permit, so a slow call started long ago cannot reopen a breaker that a probe just
closed. Time comes from an injectable ``clock``, so the state machine is tested without sleeping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ._checks import positive_seconds
from .errors import ConfigurationError

__all__ = ["BreakerState", "BreakerStatistics", "CircuitBreaker", "Permit"]

BreakerState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to make one call; ``probe`` marks the single trial call of a half-open breaker."""

    generation: int
    probe: bool = False


@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    """A snapshot of a breaker: its state and what it has done so far."""

    state: BreakerState
    consecutive_failures: int
    opened: int  # times the breaker opened (from closed, or again after a failed probe)
    probes: int  # trial calls let through while half-open
    rejected: int  # calls refused because the breaker was open (or a probe was in flight)
    retry_in: float  # seconds until the next probe may run (0 unless open)


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures → half-open after ``reset_after``
    seconds → closed again when the one probe succeeds.

    One breaker per Redis is the natural grain; several caches on the same server may share one.
    ``history`` keeps the last state changes as ``(clock time, new state)`` pairs.
    """

    def __init__(
        self,
        failures: int = 5,
        reset_after: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if type(failures) is not int or failures < 1:
            raise ConfigurationError(
                f"failures must be a positive int (consecutive failures that open the breaker), "
                f"got {failures!r}; e.g. CircuitBreaker(failures=5)"
            )
        hint = "it is how long the breaker stays open before it probes, e.g. reset_after=1.0"
        self.reset_after = positive_seconds(reset_after, "reset_after", hint)
        if not callable(clock):
            raise ConfigurationError(f"clock must be a callable returning seconds, got {clock!r}")
        self.failures = failures
        self._clock = clock
        self._state: BreakerState = "closed"
        self._generation = 0
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._opened = self._probes = self._rejected = 0
        self.history: deque[tuple[float, BreakerState]] = deque(maxlen=256)

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failures={self.failures}, reset_after={self.reset_after:g}, "
            f"state={self.state!r})"
        )

    @property
    def state(self) -> BreakerState:
        """The current state (an open breaker whose cool-down has passed reads as half-open)."""
        if self._state == "open" and self._clock() >= self._opened_at + self.reset_after:
            return "half_open"
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it is not open)."""
        if self._state != "open":
            return 0.0
        return max(0.0, self._opened_at + self.reset_after - self._clock())

    def would_allow(self) -> bool:
        """Would :meth:`allow` grant a permit now? (Asks without taking the probe.)"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self._probing)

    def allow(self) -> Permit | None:
        """A permit for one call, or None: the breaker is open, or another probe is in flight."""
        state = self.state
        if state == "closed":
            return Permit(self._generation)
        if state == "half_open" and not self._probing:
            if self._state == "open":
                self._change("half_open")
            self._probing = True
            self._probes += 1
            return Permit(self._generation, probe=True)
        self._rejected += 1
        return None

    def success(self, permit: Permit) -> None:
        """The call reached Redis and got an answer."""
        if not self._current(permit):
            return
        if permit.probe:
            self._probing = False
            self._change("closed")
        self._consecutive = 0

    def failure(self, permit: Permit) -> None:
        """The call could not reach Redis (refused, reset, timed out)."""
        if not self._current(permit):
            return
        if permit.probe:
            self._probing = False
            self._open()
            return
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._open()

    def release(self, permit: Permit) -> None:
        """The call ended without telling whether Redis works (cancelled): free the probe slot."""
        if permit.probe and self._current(permit):
            self._probing = False

    def statistics(self) -> BreakerStatistics:
        return BreakerStatistics(
            state=self.state,
            consecutive_failures=self._consecutive,
            opened=self._opened,
            probes=self._probes,
            rejected=self._rejected,
            retry_in=self.retry_in(),
        )

    # --- transitions ----------------------------------------------------------------------------

    def _current(self, permit: Permit) -> bool:
        """Only results of calls admitted in the present state count (see the module docstring)."""
        return permit.generation == self._generation

    def _open(self) -> None:
        self._opened += 1
        self._opened_at = self._clock()
        self._consecutive = 0
        self._change("open")

    def _change(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self.history.append((self._clock(), state))
