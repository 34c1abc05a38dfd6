"""A Redis lock whose waiters are woken by a message, and whose grants carry a fencing token.

The protocol (redis.io, "Distributed Locks with Redis"), in three small Lua scripts:

- **acquire**: ``SET lock <random token> NX PX <ttl>``; on success ``INCR`` the fence counter and
  return it. The fencing token only ever increases, so a store that remembers the highest token
  it has seen can refuse a write from a holder whose lock was taken over (Kleppmann, 2016).
  On failure the script returns the lock's remaining TTL, which bounds how long to wait.
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
import secrets
import time
from typing import Literal

import redis.asyncio as aioredis

from .cluster import is_cluster, same_slot
from .errors import ConfigurationError, LockLostError, LockTimeoutError
from .fencing import FENCE_TTL_MS
from .subscriber import Subscriber

__all__ = ["RedisLock"]

_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('incr', KEYS[2])
  redis.call('pexpire', KEYS[2], ARGV[3])
  return {1, fence}
end
return {0, redis.call('pttl', KEYS[1])}
"""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


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
        redis: aioredis.Redis,
        name: str,
        *,
        ttl: float = 10.0,
        fence_key: str | None = None,
        channel: str | None = None,
        wait: Literal["notify", "poll"] = "notify",
        poll_interval: float = 0.1,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a lock needs a non-empty string name, got {name!r}")
        if not isinstance(ttl, int | float) or isinstance(ttl, bool) or ttl <= 0:
            raise ConfigurationError(
                f"lock ttl must be a positive number of seconds, got {ttl!r}; it bounds how long "
                "a crashed holder blocks the others"
            )
        if wait not in ("notify", "poll"):
            raise ConfigurationError(f'wait must be "notify" or "poll", got {wait!r}')
        self.redis = redis
        self.name = name
        self.ttl = float(ttl)
        self.fence_key = fence_key or f"{name}:fence"
        self.channel = channel or f"{name}:released"
        if is_cluster(redis) and not same_slot(name, self.fence_key):
            raise ConfigurationError(
                f"on a Redis Cluster the lock {name!r} and its fence counter {self.fence_key!r} "
                "must share a hash slot (one script updates both); put a hash tag in the name, "
                f"e.g. RedisLock(redis, '{{{name}}}'), or pass a fence_key with the same tag"
            )
        self.wait = wait
        self.poll_interval = poll_interval
        self.token: str | None = None
        self.fence: int | None = None
        self.remaining_ms = 0
        self.attempts = 0
        self._acquire = redis.register_script(_ACQUIRE)
        self._release = redis.register_script(_RELEASE)
        self._extend = redis.register_script(_EXTEND)

    def __repr__(self) -> str:
        state = f"held, fence {self.fence}" if self.token else "not held"
        return f"<RedisLock {self.name!r} ttl={self.ttl:g}s {state}>"

    @property
    def held(self) -> bool:
        """True between a successful acquire and release (as far as this object knows)."""
        return self.token is not None

    async def try_acquire(self) -> int | None:
        """One attempt: the fencing token on success, else None (``remaining_ms`` is then set)."""
        if self.token is not None:
            raise ConfigurationError(f"lock {self.name!r} is already held by this object")
        token = secrets.token_hex(16)
        self.attempts += 1
        granted, value = await self._acquire(
            keys=[self.name, self.fence_key], args=[token, _ms(self.ttl), FENCE_TTL_MS]
        )
        if granted:
            self.token, self.fence = token, int(value)
            return self.fence
        self.remaining_ms = max(int(value), 0)
        return None

    async def acquire(self, timeout: float | None = None) -> int:
        """Wait until the lock is ours and return the fencing token.

        Raises :class:`LockTimeoutError` after ``timeout`` seconds (None: wait as long as it takes).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.wait == "poll":
            while (fence := await self.try_acquire()) is None:  # noqa: ASYNC110 - polling on purpose
                await asyncio.sleep(self._until(deadline, self.poll_interval))
            return fence
        async with Subscriber.of(self.redis).listen(self.channel) as inbox:
            while (fence := await self.try_acquire()) is None:
                await inbox.get(timeout=self._until(deadline, self.remaining_ms / 1000 + 0.001))
            return fence

    def _until(self, deadline: float | None, wanted: float) -> float:
        if deadline is None:
            return wanted
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeoutError(
                f"gave up waiting for lock {self.name!r}: still held after the timeout; raise "
                "the timeout, or check whether the holder is stuck (its ttl is "
                f"{self.ttl:g} s)"
            )
        return min(wanted, left)

    async def release(self, message: str = "released") -> bool:
        """Release if still ours and wake the waiters with ``message``; False if it was lost."""
        if self.token is None:
            return False
        token, self.token = self.token, None
        return bool(await self._release(keys=[self.name], args=[token, self.channel, message]))

    async def extend(self, ttl: float | None = None) -> None:
        """Give the lock ``ttl`` (default: its ttl) more seconds from now.

        Raises :class:`LockLostError` if the lock expired and may now be someone else's.
        """
        if self.token is None or not await self._extend(
            keys=[self.name], args=[self.token, _ms(ttl or self.ttl)]
        ):
            self.token = None
            raise LockLostError(
                f"lock {self.name!r} was lost (it expired after {self.ttl:g} s or was taken over); "
                "stop the work it protected, or use a longer ttl and extend it sooner"
            )

    async def __aenter__(self) -> RedisLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()
