"""The cache: cache-aside primitives, read-through and write-through on Redis.

``Cache`` is deliberately small. Two pluggable pieces decide what happens around a lookup:

- the *herd policy* (:mod:`cachelab.policies`): who loads on a miss, and how the others wait;
- the *refresh policy* (:mod:`cachelab.refresh`): whether a cached value should be reloaded
  before it expires (XFetch) or served stale while it is reloaded (stale-while-revalidate).

So one cache can be run with no protection, a lock table, single-flight, a Redis lock or leases,
with or without early refresh, and an experiment compares them by changing one argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from . import envelope, fencing
from .errors import ConfigurationError, SerializationError
from .invalidation import Invalidator, invalidator
from .metrics import Outcome, Stats
from .near_cache import NearCache
from .policies import NOT_REFRESHED, HerdPolicy, herd_policy
from .redis_lock import RedisLock
from .refresh import RefreshPolicy, Verdict, refresh_policy
from .serializers import Serializer, get_serializer

__all__ = ["Cache", "Entry", "Lookup"]

Loader = Callable[[], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded cached value with the timings refresh policies look at."""

    value: Any
    load_ms: float
    expires_at: float
    soft_expires_at: float | None


@dataclass(frozen=True, slots=True)
class Lookup:
    """A value and how the cache obtained it (see :class:`~cachelab.Outcome`)."""

    value: Any
    outcome: Outcome


def _positive_ttl(ttl: object, what: str = "ttl") -> float:
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, int | float)
        or not (ttl > 0 and math.isfinite(ttl))
    ):
        raise ConfigurationError(
            f"{what} must be a positive, finite number of seconds, got {ttl!r}; "
            "to remove a key use delete(), to keep it forever use a long TTL"
        )
    return float(ttl)


class Cache:
    """A namespaced cache on Redis with pluggable stampede protection.

    Every key is stored as ``"{namespace}:{{key}}"``. The namespace lets several caches (or several
    students) share one Redis, and :meth:`clear` remove exactly this cache's keys; the braces are
    a Redis Cluster hash tag, so the value and its helper keys (``...:lock``, ``...:fence``,
    ``...:lease``) always live on the same node.

    ``ttl`` is the default lifetime in seconds; ``ttl_jitter`` (0 <= j < 1) spreads each write's TTL
    uniformly over ``ttl * (1 ± j)`` so that keys written together do not all expire together.
    ``policy`` is a herd policy name (``"none"``, ``"lock_table"``, ``"local"``,
    ``"distributed"``, ``"lease"``) or instance; ``refresh`` a refresh policy (``None``,
    ``"xfetch"``, ``XFetch(beta)``, ``StaleWhileRevalidate(soft_ttl_s)``).

    A cache that refreshes in the background owns tasks: close it with ``await cache.aclose()``
    (or use ``async with``), which waits for them.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str,
        ttl: float,
        policy: str | HerdPolicy = "local",
        refresh: str | RefreshPolicy | None = None,
        serializer: str | Serializer = "json",
        ttl_jitter: float = 0.0,
        near: NearCache | None = None,
        invalidation: str | Invalidator | None = None,
    ) -> None:
        if (
            not isinstance(namespace, str)
            or not namespace
            or namespace != namespace.strip()
            or "{" in namespace
            or "}" in namespace
        ):
            raise ConfigurationError(
                f"namespace must be a non-empty string without surrounding spaces or braces, "
                f"got {namespace!r}; e.g. namespace='users'"
            )
        if not isinstance(ttl_jitter, int | float) or not 0 <= ttl_jitter < 1:
            raise ConfigurationError(
                f"ttl_jitter must be a fraction in [0, 1), got {ttl_jitter!r}; "
                "0.1 spreads TTLs by ±10%"
            )
        self.redis = redis
        self.namespace = namespace
        self.ttl = _positive_ttl(ttl)
        self.ttl_jitter = float(ttl_jitter)
        self.policy = herd_policy(policy)
        self.refresh = refresh_policy(refresh)
        self.refresh.soft_ttl(self.ttl)  # validates soft TTL < TTL up front
        self.serializer = get_serializer(serializer)
        self.stats = Stats()
        self._prefix = f"{namespace}:{{"
        self._checks_refresh = type(self.refresh) is not RefreshPolicy
        self._background: dict[str, asyncio.Task[None]] = {}
        self._fill = redis.register_script(fencing.FILL)
        self._write = redis.register_script(fencing.WRITE)
        if near is not None and not isinstance(near, NearCache):
            raise ConfigurationError(f"near must be a NearCache, got {near!r}")
        self.near = near
        self.invalidator = invalidator(invalidation)
        if self.invalidator is not None and near is None:
            raise ConfigurationError(
                f"invalidation={invalidation!r} keeps a near cache true, but this cache has none; "
                "pass near=NearCache(...) too"
            )
        self._invalidator_started: asyncio.Future | None = None

    def __repr__(self) -> str:
        return (
            f"Cache(namespace={self.namespace!r}, ttl={self.ttl:g}, policy={self.policy.name!r}, "
            f"refresh={self.refresh!r}, serializer={self.serializer.name!r})"
        )

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for background refreshes and stop the invalidator (the client stays open)."""
        while self._background:
            await asyncio.gather(*self._background.values(), return_exceptions=True)
        if self.invalidator is not None:
            await self.invalidator.aclose()
            self._invalidator_started = None

    async def _listening(self) -> None:
        """Start the invalidator before the first L1 fill: no later write can then be missed."""
        started = self._invalidator_started
        ready = started is not None and started.done() and not started.cancelled()
        if ready and started.exception() is None:
            return  # the common case, on every L1 hit: already listening
        if started is None:
            started = self._invalidator_started = asyncio.ensure_future(
                self.invalidator.start(self)
            )
        try:
            await asyncio.shield(started)
        except Exception:
            self._invalidator_started = None  # let the next call try again
            raise

    # --- keys and entries ---------------------------------------------------------------------

    def redis_key(self, key: str) -> str:
        """The Redis key that stores ``key``: ``namespace:{key}``."""
        if type(key) is not str or not key:
            raise ConfigurationError(
                f"cache keys must be non-empty strings, got {key!r}; "
                "build one with e.g. f'user:{user_id}'"
            )
        return self._prefix + key + "}"

    def key_of(self, redis_key: str) -> str | None:
        """The cache key stored at ``redis_key``; None if it is not one of this cache's values."""
        if redis_key.startswith(self._prefix) and redis_key.endswith("}"):
            return redis_key[len(self._prefix) : -1]
        return None

    def helper_key(self, key: str, role: str) -> str:
        """The key of ``key``'s lock, fence, lease, ...: same hash slot as the value."""
        return f"{self.redis_key(key)}:{role}"

    def lock_for(self, key: str, *, ttl: float = 10.0, wait: str = "notify") -> RedisLock:
        """The Redis lock of ``key``; its fencing token is the key's fence counter."""
        return RedisLock(
            self.redis,
            self.helper_key(key, "lock"),
            ttl=ttl,
            fence_key=self.helper_key(key, "fence"),
            channel=self.helper_key(key, "filled"),
            wait=wait,
        )

    def _ttl_for_write(self, ttl: float | None) -> float:
        seconds = self.ttl if ttl is None else _positive_ttl(ttl)
        if self.ttl_jitter:
            seconds *= 1 + random.uniform(-self.ttl_jitter, self.ttl_jitter)
        return seconds

    def decode(self, raw: bytes | None) -> Entry | None:
        """The entry stored as ``raw``; an undecodable one counts as corrupt and reads missing."""
        if raw is None:
            return None
        wrapped = envelope.unpack(raw)
        if wrapped is not None:
            try:
                value = self.serializer.loads(wrapped.payload)
            except SerializationError:
                pass
            else:
                return Entry(value, wrapped.load_ms, wrapped.expires_at, wrapped.soft_expires_at)
        self.stats.corrupt += 1
        return None

    def encode(self, payload: bytes, ttl: float | None, load_ms: float) -> tuple[bytes, int]:
        """The stored bytes for a serialized value, and its TTL in ms (jitter applied)."""
        seconds = self._ttl_for_write(ttl)
        now = time.time()
        soft = self.refresh.soft_ttl(seconds)
        data = envelope.pack(
            payload,
            load_ms=load_ms,
            expires_at=now + seconds,
            soft_expires_at=None if soft is None else now + soft,
        )
        return data, max(1, round(seconds * 1000))

    async def read_entry(self, key: str) -> Entry | None:
        """The cached entry, or None; touches no counters (policies use it)."""
        return self.decode(await self.redis.get(self.redis_key(key)))

    async def read(self, key: str) -> tuple[bool, Any]:
        """``(found, value)``; touches no counters."""
        entry = await self.read_entry(key)
        return (False, None) if entry is None else (True, entry.value)

    # --- cache-aside primitives ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value, or ``default`` when the key is missing (counts a hit or a miss)."""
        self.redis_key(key)
        if self.near is not None:
            value, outcome = await self._near_lookup(key, None, None)
        else:
            entry = await self.read_entry(key)
            value, outcome = (default, None) if entry is None else (entry.value, Outcome.HIT)
        if outcome is None:
            self.stats.misses += 1
            return default
        self.stats.hits += 1
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; it is encoded first, so an unencodable value writes nothing."""
        self.redis_key(key)
        await self._write_value(key, self.serializer.dumps(value), ttl, value)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        return bool(await self._write_value(key, None, None, None))

    async def _write_value(
        self, key: str, payload: bytes | None, ttl: float | None, value: Any
    ) -> int:
        """A write or (``payload`` None) delete; fenced policies also bump the key's fence.

        With a near cache, this process's L1 takes the new value (or drops the key) at once, and
        the invalidator tells the other processes afterwards. If another write's invalidation
        arrives while this one is on its way, that write came later: the L1 keeps nothing.
        """
        if self.near is None:
            return await self._write_redis(key, payload, ttl)
        if self.invalidator is not None:
            await self._listening()  # before L1 takes the value: no later write can be missed
        ticket = self.near.begin(key)
        try:
            written = await self._write_redis(key, payload, ttl)
            if payload is None:
                self.near.invalidate(key)
            else:
                self.near.set(key, value, ticket)
        finally:
            self.near.end(ticket)
        if self.invalidator is not None:
            await self.invalidator.announce(key)
        return written

    async def _write_redis(self, key: str, payload: bytes | None, ttl: float | None) -> int:
        rkey = self.redis_key(key)
        data, px = self.encode(payload, ttl, 0.0) if payload is not None else (b"", 0)
        try:
            if self.policy.fenced:
                keys = [rkey] + [self.helper_key(key, r) for r in ("fence", "lease", "stale")]
                args = [data, px, fencing.FENCE_TTL_MS, self.policy.keep_stale_ms]
                return int(await self._write(keys=keys, args=args))
            if payload is None:
                return int(await self.redis.delete(rkey))
            return int(bool(await self.redis.set(rkey, data, px=px)))
        finally:
            self.policy.written(key)

    async def ttl_of(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or None when it is not cached."""
        ms = await self.redis.pttl(self.redis_key(key))
        return ms / 1000 if ms >= 0 else None

    # --- read-through and write-through -------------------------------------------------------

    async def get_or_set(self, key: str, loader: Loader, ttl: float | None = None) -> Any:
        """Read-through: the cached value, or ``await loader()`` stored under ``key``.

        On a miss, the herd policy decides who calls the loader. A loader's exception reaches
        the caller unchanged and nothing is stored.
        """
        return (await self.lookup(key, loader, ttl)).value

    async def lookup(self, key: str, loader: Loader, ttl: float | None = None) -> Lookup:
        """Like :meth:`get_or_set`, but also says how the value was obtained (an Outcome)."""
        self.redis_key(key)
        if not callable(loader):
            raise ConfigurationError(
                f"loader must be an async callable taking no arguments, got {loader!r}; "
                "e.g. `async def loader(): return await db.fetch(key)`"
            )
        if ttl is not None:
            _positive_ttl(ttl)
        try:
            if self.near is not None:
                value, outcome = await self._near_lookup(key, loader, ttl)
            else:
                value, outcome = await self._lookup(key, loader, ttl)
        except Exception:
            self.stats.errors += 1
            raise
        self.stats.count(outcome)
        return Lookup(value, outcome)

    async def _near_lookup(self, key: str, loader: Loader | None, ttl: float | None):
        """L1 first; else Redis (and the loader, if any), remembering the answer in L1 unless an
        invalidation of the key arrived meanwhile. ``(value, None)`` when ``loader`` is None and
        Redis has nothing."""
        if self.invalidator is not None:
            await self._listening()
        found, value = self.near.get(key)
        if found:
            return value, Outcome.HIT
        ticket = self.near.begin(key)
        try:
            if loader is None:
                entry = await self.read_entry(key)
                if entry is None:
                    return None, None
                value, outcome = entry.value, Outcome.HIT
            else:
                value, outcome = await self._lookup(key, loader, ttl)
            if outcome is not Outcome.STALE:
                self.near.put(ticket, value)
            return value, outcome
        finally:
            self.near.end(ticket)

    async def _lookup(self, key: str, loader: Loader, ttl: float | None) -> tuple[Any, Outcome]:
        entry = await self.policy.read(self, key)
        if entry is None:
            return await self.policy.fill(self, key, loader, ttl)
        if not self._checks_refresh:
            return entry.value, Outcome.HIT
        verdict = self.refresh.verdict(entry, time.time())
        if verdict is Verdict.FRESH:
            return entry.value, Outcome.HIT
        if verdict is Verdict.EARLY:
            value = await self.policy.refresh(self, key, loader, ttl)
            if value is NOT_REFRESHED:  # someone else is already recomputing it
                return entry.value, Outcome.HIT
            return value, Outcome.REFRESH
        self._refresh_in_background(key, loader, ttl)
        return entry.value, Outcome.STALE

    def _refresh_in_background(self, key: str, loader: Loader, ttl: float | None) -> None:
        """One background refresh per key per process; the Redis lock makes it one per cluster."""
        if key in self._background:
            return
        task = asyncio.create_task(self._revalidate(key, loader, ttl))
        self._background[key] = task
        task.add_done_callback(lambda _t: self._background.pop(key, None))

    async def _revalidate(self, key: str, loader: Loader, ttl: float | None) -> None:
        lock = self.lock_for(key)
        fence = await lock.try_acquire()
        if fence is None:
            return  # another process is revalidating this key
        try:
            await self.load_and_store(key, loader, ttl, fence=fence)
            self.stats.background_refreshes += 1
        except Exception:
            self.stats.background_errors += 1
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(lock.release("filled"))

    async def load_and_store(
        self, key: str, loader: Loader, ttl: float | None = None, *, fence: int | None = None
    ) -> Any:
        """Call the loader once, store its value with how long it took, and return the value.

        With a ``fence`` (a token from the key's lock or lease), the value is stored only if no
        newer grant, write or delete happened meanwhile; otherwise it is returned but not stored,
        and ``stats.rejected`` counts it.
        """
        value, data, px = await self.load_value(loader, ttl)
        if fence is None:
            await self.redis.set(self.redis_key(key), data, px=px)
        else:
            keys = [
                self.redis_key(key),
                self.helper_key(key, "fence"),
                self.helper_key(key, "lease"),
            ]
            if not await self._fill(keys=keys, args=[data, px, fence]):
                self.stats.rejected += 1
        return value

    async def load_value(self, loader: Loader, ttl: float | None = None) -> tuple[Any, bytes, int]:
        """Call the loader once; return its value, the bytes to store and their TTL in ms.

        The load time goes into the stored header (XFetch weighs by it); ``stats.loads`` counts
        the call. Policies that store in their own way (one Lua call with a release) use this.
        """
        started = time.perf_counter()
        pending = loader()
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"loader must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def` or wrap a sync function "
                "with `lambda: asyncio.to_thread(fn)`"
            )
        self.stats.loads += 1
        value = await pending
        load_ms = (time.perf_counter() - started) * 1000
        data, px = self.encode(self.serializer.dumps(value), ttl, load_ms)
        return value, data, px

    async def write_through(
        self,
        key: str,
        value: Any,
        writer: Callable[[Any], Awaitable[Any]],
        ttl: float | None = None,
    ) -> None:
        """Persist ``value`` with ``await writer(value)``, then cache it.

        The value is encoded before the writer runs (an unencodable value writes nothing
        anywhere). If the writer raises, the cache is left untouched and the error propagates, so
        the cache never holds a value the system of record refused.
        """
        self.redis_key(key)
        if not callable(writer):
            raise ConfigurationError(
                f"writer must be an async callable taking the value, got {writer!r}; "
                "e.g. `async def writer(value): await db.save(key, value)`"
            )
        payload = self.serializer.dumps(value)
        if ttl is not None:
            _positive_ttl(ttl)
        pending = writer(value)
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"writer must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def`"
            )
        await pending
        await self._write_value(key, payload, ttl, value)

    # --- housekeeping -------------------------------------------------------------------------

    async def _scan(self) -> AsyncIterator[bytes]:
        pattern = _glob_escape(self._prefix) + "*"
        async for rkey in self.redis.scan_iter(match=pattern, count=500):
            yield rkey

    async def keys(self) -> AsyncIterator[str]:
        """This cache's keys (without the namespace), found with SCAN, never KEYS."""
        async for rkey in self._scan():
            if rkey.endswith(b"}"):  # value keys; helper keys end in :lock, :fence, ...
                yield rkey.decode()[len(self._prefix) : -1]

    async def clear(self) -> int:
        """Delete every key of this namespace: values, helper keys, and the invalidator's own
        keys (a Streams log). SCAN + UNLINK, never KEYS. Returns how many values were removed.
        """
        removed = 0
        batch: list[bytes | str] = list(self.invalidator.keys(self)) if self.invalidator else []
        async for rkey in self._scan():
            batch.append(rkey)
            removed += rkey.endswith(b"}")
            if len(batch) >= 500:
                await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            await self.redis.unlink(*batch)
        return removed


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters so a namespace matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
