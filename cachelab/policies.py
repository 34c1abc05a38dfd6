"""Herd policies: when many callers want a key that is missing, who calls the loader?

A herd policy is the piece of a :class:`~cachelab.Cache` that turns a read-through lookup into Redis
reads and loader calls. Each is a small class, so the policies read side by side:

- ``"none"``: plain cache-aside; every caller that misses loads. This *is* the stampede, kept as
  the baseline.
- ``"lock_table"``: a per-key asyncio lock; the holder loads, the others queue on the lock and
  re-read Redis one at a time (the earlier demo's approach). It coordinates one process only, and
  when the loader fails, every waiter tries again in turn.
- ``"local"``: single-flight per process: concurrent lookups of a key share one Redis read and, on
  a miss, one load, and all get its value or its error.
- ``"distributed"``: ``local`` first, then a :class:`~cachelab.RedisLock` per key, so one load
  happens across every process. Only one coroutine per process waits on Redis, woken by a message
  when the holder has stored the value; the holder's store is fenced.
- ``"lease"``: memcache's leases (Nishtala et al., NSDI 2013): a miss is granted a lease token;
  the fill must present it, and a write or delete of the key revokes it, so a slow filler cannot
  store a value that an invalidation already superseded. Callers without the lease get the
  previous value marked stale when one exists, else wait briefly and retry.

A policy has three entry points, all called by the cache: :meth:`~HerdPolicy.read` (the Redis read
of a lookup), :meth:`~HerdPolicy.fill` (the key is missing: return a value and how it was
obtained) and :meth:`~HerdPolicy.refresh` (a refresh policy asks for an early reload: do it, or
return ``NOT_REFRESHED`` if someone else already is, so the caller serves the current value).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from redis.exceptions import RedisError

from . import fencing
from .errors import ConfigurationError, LockLostError, LockTimeoutError, RemoteLoadError
from .metrics import Outcome
from .singleflight import InlineFlight, LockTable, SingleFlight
from .subscriber import Subscriber
from .tasks import cancel_all

if TYPE_CHECKING:
    from .cache import Cache, Entry

__all__ = [
    "HERD_POLICIES",
    "NOT_REFRESHED",
    "Distributed",
    "HerdPolicy",
    "Lease",
    "LocalSingleFlight",
    "LockTablePolicy",
    "NoProtection",
    "herd_policy",
]

Loader = Callable[[], Awaitable[Any]]

NOT_REFRESHED: Any = object()
"""Returned by :meth:`HerdPolicy.refresh` when another caller is already reloading the key."""


class HerdPolicy(ABC):
    """Decides who loads a missing key. One instance belongs to one cache (one process)."""

    name: ClassVar[str]
    fenced: ClassVar[bool] = False
    """True if writes through the cache must bump the key's fence (see :mod:`cachelab.fencing`)."""
    keep_stale_ms: int = 0
    """How long a deleted value stays readable as stale (only leases serve stale values)."""

    async def read(self, cache: Cache, key: str) -> Entry | None:
        """The Redis read of a lookup."""
        return await cache.read_entry(key)

    @abstractmethod
    async def fill(
        self, cache: Cache, key: str, loader: Loader, ttl: float | None
    ) -> tuple[Any, Outcome]:
        """``key`` was not cached: return its value and how it was obtained."""

    async def refresh(self, cache: Cache, key: str, loader: Loader, ttl: float | None) -> Any:
        """Reload ``key`` early; ``NOT_REFRESHED`` if another caller is already at it."""
        return await cache.load_and_store(key, loader, ttl)

    def written(self, key: str) -> None:  # noqa: B027 - a hook; most policies need nothing
        """Called after this cache wrote or deleted ``key``: later lookups must see the write."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoProtection(HerdPolicy):
    """Every caller that misses runs the loader: N concurrent misses make N backend calls."""

    name = "none"

    async def fill(self, cache, key, loader, ttl):
        return await cache.load_and_store(key, loader, ttl), Outcome.LOAD


class LockTablePolicy(HerdPolicy):
    """Hold a per-key lock, re-read Redis, load only if still missing (double-checked locking)."""

    name = "lock_table"

    def __init__(self) -> None:
        self.locks = LockTable()

    async def fill(self, cache, key, loader, ttl):
        async with self.locks.lock(key):
            found, value = await cache.read(key)
            if found:
                return value, Outcome.SHARED
            return await cache.load_and_store(key, loader, ttl), Outcome.LOAD

    async def refresh(self, cache, key, loader, ttl):
        if key in self.locks:
            return NOT_REFRESHED
        async with self.locks.lock(key):
            return await cache.load_and_store(key, loader, ttl)


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

    async def read(self, cache, key):
        entry, _leader = await self.reads.do(key, lambda: cache.read_entry(key))
        return entry

    async def fill(self, cache, key, loader, ttl):
        leader = key not in self.flight
        (value, outcome), _ = await self.flight.do(key, lambda: self.load(cache, key, loader, ttl))
        if not leader and outcome is Outcome.LOAD:
            outcome = Outcome.SHARED  # the leader loaded; this caller shared its result
        return value, outcome

    async def load(self, cache, key, loader, ttl) -> tuple[Any, Outcome]:
        """The one load this process makes for a missing key, and how it went."""
        return await cache.load_and_store(key, loader, ttl), Outcome.LOAD

    async def refresh(self, cache, key, loader, ttl):
        if key in self.flight:
            return NOT_REFRESHED
        value, _shared = await self.flight.do(key, lambda: self.reload(cache, key, loader, ttl))
        return value

    async def reload(self, cache, key, loader, ttl) -> Any:
        """The one early reload this process makes."""
        return await cache.load_and_store(key, loader, ttl)

    def written(self, key: str) -> None:
        self.reads.forget(key)
        self.flight.forget(key)


class Distributed(LocalSingleFlight):
    """One load per key across every process: local single-flight, then a Redis lock.

    The protocol keeps the round trips on the critical path to three plus the load:

    1. the lookup's shared GET misses;
    2. CLAIM (one Lua call) returns the value if someone stored it meanwhile, else grants the
       key's lock with a fencing token, else says how long the current holder has left;
    3. the holder loads, then FILL_AND_RELEASE (one Lua call) stores the value if the fence still
       holds its token, releases the lock and publishes the stored entry to the key's channel.

    The process's one waiter subscribes only after a refused CLAIM, claims once more (the fill may
    have landed in between), then sleeps until the message arrives, which carries the value, or
    until the holder's lock runs out, so a crashed holder delays the others by at most
    ``lock_ttl``. While loading, the holder extends its lock every ``lock_ttl / 3`` seconds, so a
    slow but healthy load keeps it; a paused holder cannot extend, loses the lock, and its late
    store is refused by the fence. ``fence=False`` turns that check off (for teaching only: then
    the late store lands). ``wait="poll"`` makes waiters retry every ``poll_interval`` seconds
    instead of listening, like redis-py's ``Lock``, so the difference can be measured.
    """

    name = "distributed"
    fenced = True

    def __init__(
        self,
        *,
        lock_ttl: float = 10.0,
        wait_timeout: float | None = 30.0,
        wait: str = "notify",
        poll_interval: float = 0.1,
        fence: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(lock_ttl, int | float) or isinstance(lock_ttl, bool) or lock_ttl <= 0:
            raise ConfigurationError(
                f"lock_ttl must be a positive number of seconds, got {lock_ttl!r}"
            )
        if wait not in ("notify", "poll"):
            raise ConfigurationError(
                f'wait must be "notify" (woken by a message) or "poll" (retry every '
                f"poll_interval seconds, like redis-py's Lock), got {wait!r}"
            )
        self.lock_ttl = float(lock_ttl)
        self.wait_timeout = wait_timeout
        self.wait = wait
        self.poll_interval = float(poll_interval)
        self.fence = fence
        self._claim_script = self._fill_script = None

    def __repr__(self) -> str:
        return f"Distributed(lock_ttl={self.lock_ttl:g}, wait={self.wait!r}, fence={self.fence})"

    async def load(self, cache, key, loader, ttl):
        lock = cache.lock_for(key, ttl=self.lock_ttl, wait=self.wait)
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        claimed = await self._claim(cache, key, lock)
        if self.wait == "poll":
            while claimed is None:
                await asyncio.sleep(self._wait_for(lock, deadline, key))
                claimed = await self._claim(cache, key, lock)
        if claimed is not None:
            return await self._settle(cache, key, loader, ttl, lock, claimed)
        async with Subscriber.of(cache.redis).listen(lock.channel) as inbox:
            while (claimed := await self._claim(cache, key, lock)) is None:
                message = await inbox.get(timeout=self._wait_for(lock, deadline, key))
                if isinstance(message, bytes) and message.startswith(b"filled\n"):
                    entry = cache.decode(message[7:])
                    if entry is not None:
                        return entry.value, Outcome.SHARED
                elif isinstance(message, bytes) and message.startswith(b"error "):
                    raise RemoteLoadError(
                        f"the load of {key!r} failed in another process: "
                        f"{message[6:].decode(errors='replace')}"
                    )
                # refused, released, LOST or the lock ran out: claim again
        return await self._settle(cache, key, loader, ttl, lock, claimed)

    async def _claim(self, cache, key, lock):
        """One CLAIM: ("found", entry) or ("granted", fence), or None if someone holds it.

        A stored value that does not decode (corrupt) counts as missing: CLAIM is asked again to
        look past exactly those bytes, so the lock is granted and the fill overwrites them.
        """
        if self._claim_script is None:
            self._claim_script = cache.redis.register_script(fencing.CLAIM)
        token = secrets.token_hex(16)
        keys = [cache.redis_key(key), lock.name, lock.fence_key]
        unreadable = b""
        while True:
            args = [token, round(lock.ttl * 1000), fencing.FENCE_TTL_MS, unreadable]
            kind, value = await self._claim_script(keys=keys, args=args)
            if kind != 2:
                break
            entry = cache.decode(value)
            if entry is not None:
                return "found", entry
            unreadable = value
        if kind == 1:
            lock.token, lock.fence = token, int(value)
            return "granted", lock.fence
        lock.remaining_ms = max(int(value), 0)
        return None

    async def _settle(self, cache, key, loader, ttl, lock, claimed) -> tuple[Any, Outcome]:
        kind, found = claimed
        if kind == "found":
            return found.value, Outcome.SHARED
        return await self._load_holding(cache, key, loader, ttl, lock, found), Outcome.LOAD

    def _wait_for(self, lock, deadline: float | None, key: str) -> float:
        wanted = self.poll_interval if self.wait == "poll" else lock.remaining_ms / 1000 + 0.001
        if deadline is None:
            return wanted
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockTimeoutError(
                f"waited {self.wait_timeout:g} s for another process to load {key!r}; it holds "
                "the lock but has not stored a value. Raise wait_timeout if loads are that slow."
            )
        return min(wanted, left)

    async def reload(self, cache, key, loader, ttl):
        lock = cache.lock_for(key, ttl=self.lock_ttl, wait=self.wait)
        fence = await lock.try_acquire()
        if fence is None:
            return NOT_REFRESHED
        return await self._load_holding(cache, key, loader, ttl, lock, fence)

    async def _load_holding(self, cache, key, loader, ttl, lock, fence: int) -> Any:
        """Load while holding the lock (kept alive), then store, release and notify in one call."""
        token = lock.token  # the keep-alive forgets it if the lock is lost while we load
        keep_alive = asyncio.create_task(self._keep_alive(lock))
        try:
            value, data, px = await cache.load_value(loader, ttl)
        except Exception as exc:
            await _release(lock, keep_alive, f"error {type(exc).__name__}: {exc}")
            raise
        except BaseException:
            await _release(lock, keep_alive, "released")
            raise
        await _stop(keep_alive)
        if self._fill_script is None:
            self._fill_script = cache.redis.register_script(fencing.FILL_AND_RELEASE)
        keys = [cache.redis_key(key)] + [cache.helper_key(key, r) for r in ("fence", "lease")]
        lock.token = None
        stored = await asyncio.shield(
            self._fill_script(
                keys=[*keys, lock.name],
                args=[data, px, fence if self.fence else "", token, lock.channel],
            )
        )
        if not stored:
            cache.stats.rejected += 1
        return value

    @staticmethod
    async def _keep_alive(lock) -> None:
        with contextlib.suppress(LockLostError):
            while True:
                await asyncio.sleep(lock.ttl / 3)
                try:
                    await lock.extend()
                except (RedisError, OSError):
                    continue  # a network blip: try again; if the lock expires, the fence guards


@contextlib.asynccontextmanager
async def _no_inbox():
    yield None


async def _stop(task: asyncio.Task) -> None:
    """Stop the keep-alive for good (see :func:`~cachelab.tasks.cancel_all`), then surface an
    unexpected error of its own.

    A keep-alive that swallowed its one cancellation (redis-py on Python 3.11 can) would go on
    extending the lock, which is still ours, for ever: the lock would never be released.
    """
    await cancel_all([task])
    if not task.cancelled():
        task.result()


async def _release(lock, keep_alive: asyncio.Task, message: str) -> None:
    """Stop extending and release, even if the caller is being cancelled (again)."""
    try:
        await _stop(keep_alive)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(lock.release(message))


class Lease(LocalSingleFlight):
    """Memcache-style leases: a fill must present the token its miss was granted.

    A write or delete through the cache revokes outstanding leases (it moves the fence), so a filler
    that was slower than an invalidation cannot put the old value back. A deleted value stays
    readable as *stale* for ``keep_stale_s`` seconds: callers that find the lease taken get it at
    once (``Outcome.STALE``) instead of waiting. Without a stale value they sleep ``retry_s`` and
    ask again (memcache's "wait a short time and retry"), for at most ``wait_timeout`` seconds.
    """

    name = "lease"
    fenced = True

    def __init__(
        self,
        *,
        lease_ttl: float = 10.0,
        retry_s: float = 0.01,
        keep_stale_s: float = 10.0,
        wait_timeout: float | None = 30.0,
    ) -> None:
        super().__init__()
        for name, value in (("lease_ttl", lease_ttl), ("retry_s", retry_s)):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )
        if keep_stale_s < 0:
            raise ConfigurationError(f"keep_stale_s must be >= 0, got {keep_stale_s!r}")
        self.lease_ttl = float(lease_ttl)
        self.retry_s = float(retry_s)
        self.keep_stale_ms = round(keep_stale_s * 1000)
        self.wait_timeout = wait_timeout
        self._script = None
        self._give_back = None

    def __repr__(self) -> str:
        return f"Lease(lease_ttl={self.lease_ttl:g}, keep_stale_s={self.keep_stale_ms / 1000:g})"

    async def _ask(self, cache, key, unreadable: bytes = b"") -> tuple[int, Any, Any]:
        """One LEASE call: (1, value) | (2, stale value or b"", lease pttl) | (3, token).

        A stored value equal to ``unreadable`` (bytes that did not decode) counts as missing.
        """
        if self._script is None:
            self._script = cache.redis.register_script(fencing.LEASE)
        keys = [cache.redis_key(key)] + [
            cache.helper_key(key, r) for r in ("fence", "lease", "stale")
        ]
        reply = await self._script(
            keys=keys, args=[round(self.lease_ttl * 1000), fencing.FENCE_TTL_MS, unreadable]
        )
        return int(reply[0]), reply[1], reply[2] if len(reply) > 2 else None

    async def fill(self, cache, key, loader, ttl):
        leader = key not in self.flight
        (value, outcome), _ = await self.flight.do(
            key, lambda: self._lease(cache, key, loader, ttl)
        )
        if outcome is Outcome.STALE:
            return value, outcome
        return value, outcome if leader else Outcome.SHARED

    async def _lease(self, cache, key, loader, ttl) -> tuple[Any, Outcome]:
        deadline = None if self.wait_timeout is None else time.monotonic() + self.wait_timeout
        unreadable = b""
        while True:
            kind, first, _pttl = await self._ask(cache, key, unreadable)
            if kind == 3:
                return await self._fill_with_lease(cache, key, loader, ttl, int(first))
            if kind == 1 or first:
                entry = cache.decode(first)
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

    async def _fill_with_lease(self, cache, key, loader, ttl, token: int) -> tuple[Any, Outcome]:
        """Load with the lease; if the load fails, give the lease back so others need not wait
        out its TTL (the fill script deletes it on success)."""
        try:
            return await cache.load_and_store(key, loader, ttl, fence=token), Outcome.LOAD
        except BaseException:
            if self._give_back is None:
                self._give_back = cache.redis.register_script(fencing.GIVE_BACK)
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self._give_back(keys=[cache.helper_key(key, "lease")], args=[token])
                )
            raise

    async def reload(self, cache, key, loader, ttl):
        """An early reload takes no lease (the value is still there) but is fenced by the current
        version, so a write or delete during the reload wins."""
        version = int(await cache.redis.get(cache.helper_key(key, "fence")) or 0)
        return await cache.load_and_store(key, loader, ttl, fence=version)


HERD_POLICIES: dict[str, type[HerdPolicy]] = {
    p.name: p for p in (NoProtection, LockTablePolicy, LocalSingleFlight, Distributed, Lease)
}


def herd_policy(spec: str | HerdPolicy, **options: Any) -> HerdPolicy:
    """A fresh policy for a name (with its ``options``), or the given instance."""
    if isinstance(spec, HerdPolicy):
        return spec
    try:
        cls = HERD_POLICIES[spec]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown herd policy {spec!r}; choose one of {', '.join(HERD_POLICIES)} "
            "or pass a HerdPolicy instance"
        ) from None
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigurationError(
            f"herd policy {spec!r} does not take these options: {exc}"
        ) from None
