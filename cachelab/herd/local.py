"""``"local"``: single-flight per process.

Concurrent lookups of a key share one Redis read and, on a miss, one load, and all get its value
or its error. Loads and early refreshes are separate flights, so a miss never receives a
refresh's result. A flight is keyed by the key *and the fence its leader read*: a lookup that
read a newer fence (a write or delete happened since, here or in another process) starts its own
load instead of receiving the value of one that began before the write.
"""

from __future__ import annotations

from typing import Any

from ..metrics import Outcome
from ..singleflight import InlineFlight, SingleFlight
from ..store import Read
from .base import NOT_REFRESHED, HerdPolicy, HerdStatistics, Produce

__all__ = ["LocalSingleFlight"]


class LocalSingleFlight(HerdPolicy):
    """Concurrent lookups of a key in this process share one Redis read and, on a miss, one load.

    The read is shared through the store's per-tick batches (a key read by many callers in one
    tick is read once), or, without batching, an :class:`~cachelab.singleflight.InlineFlight` (no
    task, so an uncontended hit costs what a plain read costs); the load through a
    :class:`~cachelab.singleflight.SingleFlight`, so that cancelling the caller who started it
    does not cancel it for the others.
    """

    name = "local"
    reads: InlineFlight
    loads: SingleFlight
    refreshes: SingleFlight

    def _start(self) -> None:
        self.reads = InlineFlight()
        self.loads = SingleFlight()
        self.refreshes = SingleFlight()
        if self.store.reads is not None:  # the store's batches already read a key once a tick
            self.read = self.store.read  # type: ignore[method-assign]

    async def read(self, key: str) -> Read:
        read, _leader = await self.reads.do(key, self.store.read, key)
        return read

    async def load(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        flight = (key, read.fence)
        leader = flight not in self.loads
        (value, outcome), _shared = await self.loads.do(
            flight, lambda: self.load_once(key, read, produce)
        )
        if leader or outcome is Outcome.STALE:
            return value, outcome
        return value, Outcome.SHARED  # the leader loaded; this caller shared its result

    async def load_once(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        """The one load this process makes for a missing key, and how it went."""
        return await super().refresh(key, read, produce), Outcome.LOAD

    async def refresh(self, key: str, read: Read, produce: Produce) -> Any:
        flight = (key, read.fence)
        if flight in self.refreshes:
            return NOT_REFRESHED
        value, _shared = await self.refreshes.do(
            flight, lambda: self.refresh_once(key, read, produce)
        )
        return value

    async def refresh_once(self, key: str, read: Read, produce: Produce) -> Any:
        """The one early reload this process makes (or NOT_REFRESHED)."""
        return await super().refresh(key, read, produce)

    def statistics(self) -> HerdStatistics:
        loads, refreshes = self.loads.statistics(), self.refreshes.statistics()
        return HerdStatistics(
            loads.in_flight + refreshes.in_flight, loads.callers + refreshes.callers
        )

    def forget(self, key: str) -> None:
        self.reads.forget(key)
