"""``"lock_table"``: a per-key asyncio lock, the earlier demo's approach (double-checked locking).

The holder loads; the others queue on the lock and re-read Redis one at a time when their turn
comes. It coordinates one process only, and when the loader fails, every waiter tries again in
turn, serially: both limits are what notebook 01 measures.
"""

from __future__ import annotations

from typing import Any

from ..metrics import Outcome
from ..singleflight import LockTable
from ..store import Read
from .base import NOT_REFRESHED, HerdPolicy, HerdStatistics, Produce

__all__ = ["LockTablePolicy"]


class LockTablePolicy(HerdPolicy):
    """Hold a per-key lock, re-read Redis, load only if still missing."""

    name = "lock_table"
    locks: LockTable

    def _start(self) -> None:
        self.locks = LockTable()

    def statistics(self) -> HerdStatistics:
        locks = self.locks.statistics()
        return HerdStatistics(locks.keys, locks.holders_and_waiters)

    async def load(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        async with self.locks.lock(key):
            again = await self.store.read(key)
            if again.entry is not None:
                return again.entry.value, Outcome.SHARED
            loaded = await produce()
            await self.store.fill(key, loaded.packed, self.token(again.fence))
            return loaded.value, Outcome.LOAD

    async def refresh(self, key: str, read: Read, produce: Produce) -> Any:
        if key in self.locks:
            return NOT_REFRESHED
        async with self.locks.lock(key):
            return await super().refresh(key, read, produce)
