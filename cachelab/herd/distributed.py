"""``"distributed"``: one load per key across every process: local single-flight, then a Redis lock.

The protocol keeps the round trips on the critical path to three plus the load:

1. the lookup's shared read misses;
2. CLAIM (one Lua call) returns the value if someone stored it meanwhile, else grants the key's
   lock with a fencing token, else says how long the current holder has left;
3. the holder loads, then one Lua call stores the value if the fence still holds its token,
   releases the lock and publishes the stored entry on the key's channel.

The process's one waiter subscribes only after a refused CLAIM, claims once more (the fill may
have landed in between), then sleeps until the message arrives (it carries the value), or until
the holder's lock runs out, so a crashed holder delays the others by at most ``lock_ttl``. While
loading, the holder extends its lock every ``lock_ttl / 3`` seconds over a connection of its own,
for at most ``max_hold_s``; a paused holder cannot extend, loses the lock, and its late store is
refused by the fence.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .._checks import positive_seconds
from ..codec import Entry
from ..errors import ConfigurationError, LockTimeoutError, RemoteLoadError
from ..metrics import Outcome
from ..redis_lock import RedisLock
from ..store import Read
from ..subscriber import Subscriber
from .base import NOT_REFRESHED, Loaded, Produce, non_negative_seconds, quietly
from .local import LocalSingleFlight

__all__ = ["Distributed"]


class Distributed(LocalSingleFlight):
    """One load per key across every process (see the module docstring).

    ``fence=False`` turns the fence check off for the holder's store (for teaching only: then a
    paused holder's late store lands). ``wait="poll"`` makes waiters retry every
    ``poll_interval`` seconds instead of listening, like redis-py's ``Lock``, so the difference
    can be measured. ``load_timeout`` cancels a load that runs longer (its waiters get the
    timeout); ``max_hold_s`` bounds how long the keep-alive extends a lock, so a hung loader
    cannot hold a key for ever.
    """

    name = "distributed"

    def __init__(
        self,
        *,
        lock_ttl: float = 10.0,
        wait_timeout: float | None = 30.0,
        wait: str = "notify",
        poll_interval: float = 0.1,
        fence: bool = True,
        load_timeout: float | None = None,
        max_hold_s: float = 300.0,
    ) -> None:
        self.lock_ttl = positive_seconds(
            lock_ttl, "lock_ttl", "it bounds how long a crashed holder delays the others"
        )
        if wait not in ("notify", "poll"):
            raise ConfigurationError(
                f'wait must be "notify" (woken by a message) or "poll" (retry every '
                f"poll_interval seconds, like redis-py's Lock), got {wait!r}"
            )
        hint = "it bounds how long a caller waits for another process's load"
        self.wait_timeout = (
            None if wait_timeout is None else positive_seconds(wait_timeout, "wait_timeout", hint)
        )
        self.wait = wait
        self.poll_interval = positive_seconds(
            poll_interval, "poll_interval", "waiters retry that often with wait='poll'"
        )
        super().__init__(fence=fence)
        self.load_timeout = non_negative_seconds(
            load_timeout, "load_timeout", "e.g. load_timeout=30", allow_none=True
        )
        self.max_hold_s = positive_seconds(
            max_hold_s, "max_hold_s", "it bounds how long a hung loader can keep the lock"
        )

    def __repr__(self) -> str:
        return f"Distributed(lock_ttl={self.lock_ttl:g}, wait={self.wait!r}, fence={self.fence})"

    def _lock(self, key: str) -> RedisLock:
        keys = self.store.keys
        return RedisLock(
            self.store.redis,
            keys.helper(key, "lock"),
            ttl=self.lock_ttl,
            fence_key=keys.helper(key, "fence"),
            channel=keys.helper(key, "filled"),
            wait="poll" if self.wait == "poll" else "notify",
            poll_interval=self.poll_interval,
            commands=self.store.locks,
        )

    async def load_once(self, key: str, read: Read, produce: Produce) -> tuple[Any, Outcome]:
        lock = self._lock(key)
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        claimed = await self._claim(key, lock, read.unreadable)
        if claimed is None and self.wait == "poll":
            while claimed is None:
                await asyncio.sleep(self._wait_for(lock, deadline, key))
                claimed = await self._claim(key, lock, read.unreadable)
        if claimed is None:
            claimed = await self._wait_for_holder(key, lock, deadline, read.unreadable)
        if isinstance(claimed, Entry):
            return claimed.value, Outcome.SHARED
        # Our own grant moved the fence: callers here that read it now join this load instead
        # of starting one that would wait on Redis for it.
        self.loads.alias((key, read.fence), (key, claimed))
        return await self._hold(key, lock, claimed, produce), Outcome.LOAD

    async def _claim(self, key: str, lock: RedisLock, unreadable: bytes) -> Entry | int | None:
        """One CLAIM: the entry someone stored, our fencing token, or None while another holds
        the lock. Stored bytes that do not decode count as missing: CLAIM is asked again to look
        past exactly those bytes, so the lock is granted and the fill overwrites them."""
        value_key = self.store.keys.value(key)
        while (claimed := await lock.claim(value_key, unreadable)) is not None:
            if claimed[0] == "granted":
                return claimed[1]
            entry = self.store.decode(claimed[1])
            if entry is not None:
                return entry
            unreadable = claimed[1]
        return None

    async def _wait_for_holder(
        self, key: str, lock: RedisLock, deadline: float | None, unreadable: bytes
    ) -> Entry | int:
        """Listen on the key's channel until the holder's value arrives, or a CLAIM succeeds."""
        subscriber = Subscriber.of(self.store.redis)
        inbox = await self.store.guard(subscriber.subscribe, lock.channel)
        try:
            while (claimed := await self._claim(key, lock, unreadable)) is None:
                message = await inbox.get(timeout=self._wait_for(lock, deadline, key))
                if not isinstance(message, bytes):
                    continue  # timed out, or the subscriber reconnected: claim again
                if message.startswith(b"filled\n"):
                    entry = self.store.decode(message[7:])
                    if entry is not None:
                        return entry
                elif message.startswith(b"error "):
                    kind = message[6:].decode(errors="replace")
                    raise RemoteLoadError(
                        f"the load of {key!r} failed in another process ({kind}); its message "
                        "stays in that process (it may hold secrets): look there for details"
                    )
                # refused, released, or the lock ran out: claim again
            return claimed
        finally:
            await asyncio.shield(subscriber.unsubscribe(inbox))

    def _wait_for(self, lock: RedisLock, deadline: float | None, key: str) -> float:
        wanted = self.poll_interval if self.wait == "poll" else lock.remaining_ms / 1000 + 0.001
        try:
            return lock.until(deadline, wanted)
        except LockTimeoutError:
            raise LockTimeoutError(
                f"waited {self.wait_timeout:g} s for another process to load {key!r}; it holds "
                "the lock but has not stored a value. Raise wait_timeout if loads are that slow."
            ) from None

    async def refresh_once(self, key: str, read: Read, produce: Produce) -> Any:
        lock = self._lock(key)
        fence = await lock.try_acquire()
        if fence is None:
            return NOT_REFRESHED  # another process is reloading it
        return await self._hold(key, lock, fence, produce)

    async def _hold(self, key: str, lock: RedisLock, fence: int, produce: Produce) -> Any:
        """Load while holding the lock (kept alive), then store, release and notify in one call.

        Whatever ends the load early (its error, a timeout, a cancellation, even one that lands
        while the keep-alive stops) releases the lock and tells the waiters: never the error's
        text, which may hold secrets, only its type."""
        token = lock.token
        try:
            async with lock.keep_alive(max_hold=self.max_hold_s):
                loaded = await self._produce(produce)
        except BaseException as exc:
            failure = f"error {type(exc).__name__}" if isinstance(exc, Exception) else "released"
            await quietly(lock.release(failure))
            raise
        lock.released()
        await asyncio.shield(
            self.store.fill_and_release(
                key, loaded.packed, self.token(fence), lock.name, token or ""
            )
        )
        return loaded.value

    async def _produce(self, produce: Produce) -> Loaded:
        if self.load_timeout is None:
            return await produce()
        async with asyncio.timeout(self.load_timeout):
            return await produce()
