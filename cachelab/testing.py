"""Helpers for your own tests and experiments: a slow fake backend and a starting gate.

They are public API (as structlog's test helpers are): a stampede test needs a backend that is
slow on purpose and counts its calls, and a way to release many coroutines at the same moment.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["BACKEND_COLUMNS", "BackendError", "Gate", "SlowBackend"]

BACKEND_COLUMNS = ["key", "start_ms", "end_ms", "ok"]


class BackendError(Exception):
    """The simulated database failed (see :attr:`SlowBackend.fail_next`)."""


@dataclass(frozen=True, slots=True)
class BackendCall:
    key: str
    start: float
    end: float
    ok: bool


class SlowBackend:
    """A stand-in for a database: every ``fetch`` sleeps ``latency_ms`` (± ``jitter_ms``).

    It counts calls and the peak number of calls in flight, and records each call's start and end
    (seconds on ``time.perf_counter``), so an experiment can show exactly when the backend was hit.
    Set ``fail_next = n`` to make the next ``n`` calls raise :class:`BackendError` after their
    delay, like a database that times out.
    """

    def __init__(
        self, latency_ms: float = 50.0, jitter_ms: float = 0.0, *, seed: int | None = None
    ):
        if latency_ms < 0 or jitter_ms < 0:
            raise ConfigurationError(
                f"latency_ms and jitter_ms must be >= 0, got {latency_ms!r} and {jitter_ms!r}"
            )
        self.latency_ms = float(latency_ms)
        self.jitter_ms = float(jitter_ms)
        self.fail_next = 0
        self.calls = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.versions: dict[str, int] = {}
        self.rows: dict[str, object] = {}
        self.log: list[BackendCall] = []
        self._random = random.Random(seed)

    def _delay(self) -> float:
        jitter = self._random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000

    async def fetch(self, key: str):
        """The row last stored for ``key`` (else ``{"key": key, "version": n}``), after the delay.

        The row is read when the call *starts* and delivered when it ends, like a query whose
        answer travels back slowly: a write that lands meanwhile is not in it. That is what
        makes a slow load able to put an outdated value into the cache (a "stale set").
        """
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        start = time.perf_counter()
        failing = self.fail_next > 0
        if failing:
            self.fail_next -= 1
        row = self.rows.get(key, {"key": key, "version": self.versions.get(key, 0)})
        try:
            await asyncio.sleep(self._delay())
            if failing:
                raise BackendError(f"backend failed while loading {key!r} (simulated)")
            return row
        finally:
            self.in_flight -= 1
            self.log.append(BackendCall(key, start, time.perf_counter(), not failing))

    async def store(self, key: str, value: object) -> None:
        """Persist a write (for write-through) after the delay; later fetches return ``value``.

        Each store also bumps the key's version, so experiments can tell old data from new.
        """
        await asyncio.sleep(self._delay())
        self.rows[key] = value
        self.versions[key] = self.versions.get(key, 0) + 1

    def call_records(self, origin: float = 0.0) -> list[dict]:
        """One dict per call: key, start_ms, end_ms (relative to ``origin``), ok."""
        return [
            {
                "key": c.key,
                "start_ms": (c.start - origin) * 1000,
                "end_ms": (c.end - origin) * 1000,
                "ok": c.ok,
            }
            for c in self.log
        ]

    def calls_frame(self, origin: float = 0.0):
        """:meth:`call_records` as a pandas DataFrame (columns ``BACKEND_COLUMNS``)."""
        import pandas as pd  # only here: worker processes should not pay for importing pandas

        return pd.DataFrame(self.call_records(origin), columns=BACKEND_COLUMNS)


class Gate:
    """Hold many coroutines at a line and release them at once.

    ``await gate.wait()`` parks a coroutine; ``await gate.arrivals(n)`` returns once ``n`` are
    parked, so the release really is simultaneous; ``gate.open()`` releases them and returns the
    release time (``time.perf_counter()``).
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._arrived = 0
        self._changed = asyncio.Event()
        self.opened_at: float | None = None

    @property
    def waiting(self) -> int:
        return 0 if self._open.is_set() else self._arrived

    async def wait(self) -> None:
        self._arrived += 1
        self._changed.set()
        await self._open.wait()

    async def arrivals(self, n: int) -> None:
        while self._arrived < n:
            self._changed.clear()
            await self._changed.wait()

    def open(self) -> float:
        self.opened_at = time.perf_counter()
        self._open.set()
        return self.opened_at
