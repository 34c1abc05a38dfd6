"""``"lease"``: memcache's leases (Nishtala et al., "Scaling Memcache at Facebook", NSDI 2013).

A miss is granted a lease token (the key's fence, moved); the fill must present it, and a write
or delete of the key revokes it (moves the fence again), so a slow filler cannot store a value
that an invalidation already superseded. One lease per key at a time is the herd control: the
others get the previous value marked stale when one exists (a delete keeps it readable for
``keep_stale_s``), else wait ``retry_s`` and ask again. An early or background refresh takes a
lease too, so across every process one caller refreshes a key at a time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .._checks import positive_seconds
from ..errors import LockTimeoutError
from ..metrics import Outcome
from ..store import Read
from .base import NOT_REFRESHED, Produce, non_negative_seconds, quietly
from .local import LocalSingleFlight

__all__ = ["Lease"]


class Lease(LocalSingleFlight):
    """Memcache-style leases: a fill must present the token its miss was granted."""

    name = "lease"

    def __init__(
        self,
        *,
        lease_ttl: float = 10.0,
        retry_s: float = 0.01,
        keep_stale_s: float = 10.0,
        wait_timeout: float | None = 30.0,
    ) -> None:
        super().__init__()  # a lease is a fence: it has no unfenced mode
        self.lease_ttl = positive_seconds(
            lease_ttl, "lease_ttl", "it bounds how long a crashed filler blocks the others"
        )
        self.retry_s = positive_seconds(
            retry_s, "retry_s", "callers without the lease ask again that often"
        )
        self.keep_stale_s = non_negative_seconds(
            keep_stale_s, "keep_stale_s", "0 serves no stale value after a delete"
        )
        hint = "it bounds how long a caller waits for the lease holder's fill"
        self.wait_timeout = (
            None if wait_timeout is None else positive_seconds(wait_timeout, "wait_timeout", hint)
        )

    def __repr__(self) -> str:
        return f"Lease(lease_ttl={self.lease_ttl:g}, keep_stale_s={self.keep_stale_s:g})"

    @property
    def _lease_ms(self) -> int:
        return max(1, round(self.lease_ttl * 1000))

    async def load_once(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        unreadable = read.unreadable
        while True:
            kind, first, _pttl = await self.store.lease(key, self._lease_ms, unreadable=unreadable)
            if kind == 3:
                token = int(first)
                self.loads.alias((key, read.fence), (key, token))  # our grant: join, not wait
                return await self._fill(key, token, produce), Outcome.LOAD
            if kind == 1 or first:
                entry = self.store.decode(first)
                if entry is not None:
                    return entry.value, Outcome.SHARED if kind == 1 else Outcome.STALE
                if kind == 1:  # a corrupt value: ask again as if it were missing, and fill it
                    unreadable = first
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"waited {self.wait_timeout:g} s for the lease holder of {key!r} to fill it; "
                    "raise wait_timeout if loads are that slow"
                )
            await asyncio.sleep(self.retry_s)

    async def refresh_once(self, key: str, read: Read, produce: Produce) -> Any:
        kind, first, _pttl = await self.store.lease(key, self._lease_ms, refresh=True)
        if kind != 3:
            return NOT_REFRESHED  # someone holds the key's lease: they are refreshing it
        return await self._fill(key, int(first), produce)

    async def _fill(self, key: str, token: int, produce: Produce) -> Any:
        """Load with the lease; if the load fails, give the lease back so others need not wait
        out its TTL (the fill deletes it on success)."""
        try:
            loaded = await produce()
        except BaseException:
            await quietly(self.store.give_back(key, token))
            raise
        await self.store.fill(key, loaded.packed, token)
        return loaded.value
