"""A Redis lock whose waiters are woken by a message, and whose grants carry a fencing token.

The protocol (redis.io, "Distributed Locks with Redis"), in Lua scripts kept in
:mod:`cachelab.store`:

- **acquire**: ``SET lock <random token> NX PX <ttl>``; on success move the fence and return it.
  The fencing token only ever rises (its floor is the server's clock, so it rises across a
  FLUSHALL or a restart too), so a store that checks it can refuse a write from a holder whose
  lock was taken over (Kleppmann, 2016). On failure the script returns the lock's remaining TTL,
  which bounds how long to wait.
- **claim**: acquire unless the result the lock protects already exists; then return that.
- **release**: delete the lock only if it still holds *our* token (a plain DEL could delete a lock
  someone else now holds), and PUBLISH on the lock's channel in the same atomic step.
- **extend**: push the expiry out only if the lock still holds our token.

Waiters do not poll. They subscribe to the lock's channel (through the process's shared
:class:`~cachelab.subscriber.Subscriber`) *before* trying, then sleep until the release message
arrives, or until the lock's TTL runs out, which is how a crashed holder (whose release never
comes) delays the others by at most the TTL. ``wait="poll"`` sleeps ``poll_interval`` between
attempts instead, like redis-py's ``Lock`` (``sleep=0.1``); it exists so the difference can be
measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from redis.exceptions import RedisError

from ._checks import positive_seconds
from .cluster import RedisClient, is_cluster, same_slot
from .errors import CachelabError, ConfigurationError, LockLostError, LockTimeoutError
from .store import FENCE_TTL_MS, LockCommands
from .subscriber import Subscriber
from .tasks import cancel_all

__all__ = ["Claimed", "RedisLock"]

Claimed = tuple[Literal["found"], bytes] | tuple[Literal["granted"], int]
"""What :meth:`RedisLock.claim` obtained: the protected value, or the lock and its token."""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisLock:
    """A lock named ``name`` on Redis, held for at most ``ttl`` seconds unless extended.

    ``async with RedisLock(redis, "report"):`` acquires (waiting without polling) and releases.
    ``lock.fence`` is the fencing token of the current grant. ``fence_key`` and ``channel``
    default to ``name + ":fence"`` and ``name + ":released"``; a cache passes its own so that the
    fence counter doubles as the key's version. On a Redis Cluster the lock and its fence key must
    share a hash slot: give the name a hash tag, e.g. ``"{report}"``.
    """

    def __init__(
        self,
        redis: RedisClient,
        name: str,
        *,
        ttl: float = 10.0,
        fence_key: str | None = None,
        channel: str | None = None,
        wait: Literal["notify", "poll"] = "notify",
        poll_interval: float = 0.1,
        commands: LockCommands | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a lock needs a non-empty string name, got {name!r}")
        hint = "it bounds how long a crashed holder blocks the others"
        self.ttl = positive_seconds(ttl, "lock ttl", hint)
        if wait not in ("notify", "poll"):
            raise ConfigurationError(f'wait must be "notify" or "poll", got {wait!r}')
        self.poll_interval = positive_seconds(
            poll_interval, "poll_interval", "waiters retry that often with wait='poll'"
        )
        self.redis = redis
        self.name = name
        self.fence_key = fence_key or f"{name}:fence"
        self.channel = channel or f"{name}:released"
        if is_cluster(redis) and not same_slot(name, self.fence_key):
            raise ConfigurationError(
                f"on a Redis Cluster the lock {name!r} and its fence counter {self.fence_key!r} "
                "must share a hash slot (one script updates both); put a hash tag in the name, "
                f"e.g. RedisLock(redis, '{{{name}}}'), or pass a fence_key with the same tag"
            )
        self.wait = wait
        self.token: str | None = None
        self.fence: int | None = None
        self.remaining_ms = 0
        self.attempts = 0
        self._commands = commands or LockCommands.of(redis)

    def __repr__(self) -> str:
        state = f"held, fence {self.fence}" if self.token else "not held"
        return f"<RedisLock {self.name!r} ttl={self.ttl:g}s {state}>"

    @property
    def held(self) -> bool:
        """True between a successful acquire and release (as far as this object knows)."""
        return self.token is not None

    def _new_token(self) -> str:
        if self.token is not None:
            raise ConfigurationError(f"lock {self.name!r} is already held by this object")
        self.attempts += 1
        return secrets.token_hex(16)

    def _granted(self, token: str, fence: Any) -> int:
        self.token, self.fence = token, int(fence)
        return self.fence

    async def try_acquire(self) -> int | None:
        """One attempt: the fencing token on success, else None (``remaining_ms`` is then set)."""
        token = self._new_token()
        granted, value = await self._commands.acquire(
            self.name, self.fence_key, token, _ms(self.ttl), FENCE_TTL_MS
        )
        if granted:
            return self._granted(token, value)
        self.remaining_ms = max(int(value), 0)
        return None

    async def claim(self, value_key: str, unreadable: bytes = b"") -> Claimed | None:
        """The lock, unless what it protects is already there, in one round trip:
        ``("found", stored bytes)``, ``("granted", fencing token)``, or None while someone else
        holds it (``remaining_ms`` is then set). Stored bytes equal to ``unreadable`` (which the
        caller could not decode) count as missing."""
        token = self._new_token()
        kind, value = await self._commands.claim(
            value_key, self.name, self.fence_key, token, _ms(self.ttl), unreadable
        )
        if kind == 2:
            return "found", value
        if kind == 1:
            return "granted", self._granted(token, value)
        self.remaining_ms = max(int(value), 0)
        return None

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait until the lock is ours and return the fencing token.

        Raises :class:`LockTimeoutError` after ``timeout`` seconds (None: wait as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.wait == "poll":
            while (fence := await self.try_acquire()) is None:  # noqa: ASYNC110 - polling on purpose
                await asyncio.sleep(self.until(deadline, self.poll_interval))
            return fence
        async with Subscriber.of(self.redis).listen(self.channel) as inbox:
            while (fence := await self.try_acquire()) is None:
                await inbox.get(timeout=self.until(deadline, self.remaining_ms / 1000 + 0.001))
            return fence

    def until(self, deadline: float | None, wanted: float) -> float:
        """How long to wait now: ``wanted``, cut to what is left before ``deadline``; raises
        :class:`LockTimeoutError` once it has passed."""
        if deadline is None:
            return wanted
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeoutError(
                f"gave up waiting for lock {self.name!r}: still held after the timeout; raise "
                f"the timeout, or check whether the holder is stuck (its ttl is {self.ttl:g} s)"
            )
        return min(wanted, left)

    async def release(self, message: str = "released") -> bool:
        """Release if still ours and wake the waiters with ``message``; False if it was lost."""
        if self.token is None:
            return False
        token, self.token = self.token, None
        return await self._commands.release(self.name, token, self.channel, message)

    def released(self) -> None:
        """Forget the lock: a script released it on our behalf (e.g. with the cache's fill)."""
        self.token = None

    async def extend(self, ttl: float | None = None) -> None:
        """Give the lock ``ttl`` (default: its ttl) more seconds from now.

        Raises :class:`LockLostError` if the lock expired and may now be someone else's.
        """
        if self.token is None or not await self._commands.extend(
            self.name, self.token, _ms(ttl or self.ttl)
        ):
            self.token = None
            raise LockLostError(
                f"lock {self.name!r} was lost (it expired after {self.ttl:g} s or was taken over); "
                "stop the work it protected, or use a longer ttl and extend it sooner"
            )

    @contextlib.asynccontextmanager
    async def keep_alive(self, *, max_hold: float | None = None) -> AsyncIterator[None]:
        """Extend the lock every ``ttl / 3`` seconds while the block runs, for at most
        ``max_hold`` seconds in all (then the lock runs out, so a hung holder cannot keep it for
        ever). A lost lock stops the extending; the fence then guards what the block writes.
        On exit the extending stops for good, even if the caller is being cancelled."""
        task = asyncio.create_task(self._extend_until(max_hold), name="cachelab-lock-keepalive")
        try:
            yield
        finally:
            await cancel_all([task])

    async def _extend_until(self, max_hold: float | None) -> None:
        stop = None if max_hold is None else time.monotonic() + max_hold
        while self.token is not None:
            await asyncio.sleep(self.ttl / 3)
            if stop is not None and time.monotonic() >= stop:
                return
            try:
                await self.extend()
            except LockLostError:
                return
            except (CachelabError, RedisError, OSError):
                continue  # Redis unreachable for now: try again; if it expires, the fence guards

    async def __aenter__(self) -> RedisLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
