"""Herd policies: when many callers want a key that is missing, who calls the loader?

A herd policy is the piece of a :class:`~cachelab.Cache` that turns a read-through lookup into Redis
reads and loader calls. Each is a small class with one method, so the policies read side by side:

- ``"none"``: plain cache-aside; every caller that misses loads. This *is* the stampede, kept as
  the baseline.
- ``"lock_table"``: a per-key asyncio lock; the holder loads, the others queue on the lock and
  re-read Redis one at a time (the earlier demo's approach). It coordinates one process only, and
  when the loader fails, every waiter tries again in turn.
- ``"local"``: single-flight per process: concurrent lookups of a key share one Redis read and, on
  a miss, one load, and all get its value or its error.

Policies that coordinate across processes (``"distributed"``, ``"lease"``) plug in the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigurationError
from .metrics import Outcome
from .singleflight import InlineFlight, LockTable, SingleFlight

if TYPE_CHECKING:
    from .cache import Cache

__all__ = [
    "HERD_POLICIES",
    "HerdPolicy",
    "LocalSingleFlight",
    "LockTablePolicy",
    "NoProtection",
    "herd_policy",
]

Loader = Callable[[], Awaitable[Any]]


class HerdPolicy(ABC):
    """Decides who loads a missing key. One instance belongs to one cache (one process)."""

    name: ClassVar[str]

    @abstractmethod
    async def lookup(
        self, cache: Cache, key: str, loader: Loader, ttl: float | None
    ) -> tuple[Any, Outcome]:
        """Return the value of ``key`` (read from Redis or loaded) and how it was obtained."""

    def written(self, key: str) -> None:  # noqa: B027 - a hook; most policies need nothing
        """Called after this cache wrote or deleted ``key``: later lookups must see the write."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoProtection(HerdPolicy):
    """Every caller that misses runs the loader: N concurrent misses make N backend calls."""

    name = "none"

    async def lookup(self, cache, key, loader, ttl):
        return await cache.read_or_load(key, loader, ttl)


class LockTablePolicy(HerdPolicy):
    """Hold a per-key lock, re-read Redis, load only if still missing (double-checked locking)."""

    name = "lock_table"

    def __init__(self) -> None:
        self.locks = LockTable()

    async def lookup(self, cache, key, loader, ttl):
        found, value = await cache.read(key)
        if found:
            return value, Outcome.HIT
        async with self.locks.lock(key):
            found, value = await cache.read(key)
            if found:
                return value, Outcome.SHARED
            return await cache.load_and_store(key, loader, ttl), Outcome.LOAD


class LocalSingleFlight(HerdPolicy):
    """Concurrent lookups of a key in this process share one Redis read and, on a miss, one load.

    The read is shared through an :class:`InlineFlight` (no task, so an uncontended hit costs
    the same as a plain GET); the load through a :class:`SingleFlight`, so that cancelling the
    caller who started it does not cancel it for the others. A write through the same cache
    detaches the key from both, so a lookup that starts after the write never receives a read
    or a load that began before it.
    """

    name = "local"

    def __init__(self) -> None:
        self.reads = InlineFlight()
        self.flight = SingleFlight()

    async def lookup(self, cache, key, loader, ttl):
        (found, value), _ = await self.reads.do(key, lambda: cache.read(key))
        if found:
            return value, Outcome.HIT
        leader = key not in self.flight
        value, _shared = await self.flight.do(key, lambda: cache.load_and_store(key, loader, ttl))
        return value, Outcome.LOAD if leader else Outcome.SHARED

    def written(self, key: str) -> None:
        self.reads.forget(key)
        self.flight.forget(key)


HERD_POLICIES: dict[str, type[HerdPolicy]] = {
    p.name: p for p in (NoProtection, LockTablePolicy, LocalSingleFlight)
}


def herd_policy(spec: str | HerdPolicy) -> HerdPolicy:
    """A fresh policy for a name, or the given instance."""
    if isinstance(spec, HerdPolicy):
        return spec
    try:
        return HERD_POLICIES[spec]()
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown herd policy {spec!r}; choose one of {', '.join(HERD_POLICIES)} "
            "or pass a HerdPolicy instance"
        ) from None
