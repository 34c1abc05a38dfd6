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
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from . import envelope, fencing
from ._checks import positive_seconds
from .breaker import CircuitBreaker, Permit
from .connection import server_label
from .errors import (
    CachelabError,
    CacheUnavailableError,
    ConfigurationError,
    SerializationError,
    ValueTooLargeError,
)
from .invalidation import Invalidator, invalidator
from .metrics import Outcome, Stats
from .near_cache import NearCache
from .policies import NOT_REFRESHED, HerdPolicy, herd_policy
from .redis_lock import RedisLock
from .refresh import RefreshPolicy, Verdict, refresh_policy
from .serializers import Serializer, get_serializer
from .singleflight import SingleFlight

__all__ = ["ON_REDIS_ERROR", "Cache", "Entry", "Lookup"]

Loader = Callable[[], Awaitable[Any]]

ON_REDIS_ERROR = ("closed", "open")
"""What a cache does when Redis cannot be reached: raise, or answer without it."""

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
"""A serialized value above 1 MiB is refused: a cache entry that large blocks Redis's single thread
while it travels and evicts many small entries. Pass ``max_value_bytes=None`` to lift the limit."""


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
    return positive_seconds(
        ttl, what, "to remove a key use delete(), to keep it forever use a long TTL"
    )


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
    ``max_value_bytes`` (default 1 MiB, ``None`` for no limit) bounds the serialized size of a
    value: a larger one raises :class:`~cachelab.ValueTooLargeError` and nothing is stored.

    When Redis cannot be reached (refused, reset, timed out), ``on_redis_error`` decides:

    - ``"closed"`` (the default): raise :class:`~cachelab.CacheUnavailableError`, naming the
      server. The default, because a cache that quietly answers without Redis hides an outage
      (cachelab never falls back silently), and because it sends every read to the system of
      record, the very load the cache exists to keep away; whether that database can take it is
      the application's decision, so it is opt-in.
    - ``"open"``: keep serving. ``get_or_set``/``lookup`` answer from the loader
      (``Outcome.BYPASS``; concurrent callers of a key still share one load unless the policy is
      ``"none"``), ``get`` returns the default, and ``set``/``delete``/``write_through`` give up
      the cache write (counted in ``stats.unwritten``, not raised: the system of record is what
      matters). Beware that a value cached before the outage may then outlive a failed delete
      until its TTL ends, if Redis comes back with its data.

    ``breaker`` (by default a fresh :class:`~cachelab.CircuitBreaker` per cache; pass one to
    share it between caches on the same server, or None for none) stops trying Redis after
    repeated failures, so an outage costs no timeout per request, and probes by itself until
    Redis is back. A loader's own errors are never taken for an outage, and reach you unchanged.
    Housekeeping (``ttl_of``, ``keys``, ``clear``) talks to Redis directly and raises its errors.

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
        max_value_bytes: int | None = DEFAULT_MAX_VALUE_BYTES,
        near: NearCache | None = None,
        invalidation: str | Invalidator | None = None,
        on_redis_error: str = "closed",
        breaker: CircuitBreaker | str | None = "default",
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
        if max_value_bytes is not None and (
            type(max_value_bytes) is not int or max_value_bytes < 1
        ):
            raise ConfigurationError(
                f"max_value_bytes must be a positive int (bytes) or None for no limit, "
                f"got {max_value_bytes!r}; e.g. max_value_bytes=4 * 1024 * 1024 for 4 MiB"
            )
        self.max_value_bytes = max_value_bytes
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
        if on_redis_error not in ON_REDIS_ERROR:
            raise ConfigurationError(
                f"on_redis_error must be 'closed' (raise CacheUnavailableError when Redis cannot "
                f"be reached) or 'open' (answer from the loader without caching), "
                f"got {on_redis_error!r}"
            )
        self.on_redis_error = on_redis_error
        if isinstance(breaker, str) and breaker == "default":
            breaker = CircuitBreaker()
        elif breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(
                f"breaker must be a CircuitBreaker, 'default' (one for this cache) or None (no "
                f"breaker), got {breaker!r}; e.g. breaker=CircuitBreaker(failures=5, "
                "reset_after=1.0)"
            )
        self.breaker = breaker
        self._bypassing = SingleFlight()

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
        if type(key) is not str or not key or key[0] == "}":
            raise ConfigurationError(
                f"cache keys must be non-empty strings not starting with '}}', got {key!r} "
                "(a leading '}' would empty the Redis Cluster hash tag in 'namespace:{key}' and "
                "split the key from its lock); build one with e.g. f'user:{user_id}'"
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

    def serialize(self, value: Any) -> bytes:
        """The payload for ``value``, checked before any write: SerializationError if the
        serializer cannot encode it, ValueTooLargeError if it exceeds ``max_value_bytes``."""
        payload = self.serializer.dumps(value)
        limit = self.max_value_bytes
        if limit is not None and len(payload) > limit:
            raise ValueTooLargeError(
                f"a {type(value).__name__} value serializes to {len(payload):,} bytes as "
                f"{self.serializer.name}, above this cache's max_value_bytes={limit:,}; "
                "cache a smaller projection of it (only the fields readers need), or raise the "
                "limit with Cache(..., max_value_bytes=...) (None for no limit)"
            )
        return payload

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

    async def entry(self, key: str) -> Entry | None:
        """What is cached for ``key`` with its timings (load time, expiry, soft expiry), or None.

        Counts nothing and loads nothing: for looking inside the cache (notebooks, the CLI).
        """
        self.redis_key(key)
        return await self.read_entry(key)

    async def read(self, key: str) -> tuple[bool, Any]:
        """``(found, value)``; touches no counters."""
        entry = await self.read_entry(key)
        return (False, None) if entry is None else (True, entry.value)

    # --- cache-aside primitives ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value, or ``default`` when the key is missing (counts a hit or a miss).

        With ``on_redis_error="open"``, a Redis that cannot be reached reads as a miss.
        """
        self.redis_key(key)

        async def fetch() -> tuple[Any, Outcome | None]:
            if self.near is not None:
                return await self._near_lookup(key, None, None)
            entry = await self.read_entry(key)
            return (default, None) if entry is None else (entry.value, Outcome.HIT)

        async def missing() -> tuple[Any, Outcome | None]:
            return default, None

        value, outcome = await self._via_redis("get", fetch, missing)
        if outcome is None:
            self.stats.misses += 1
            return default
        self.stats.hits += 1
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; it is encoded first, so an unencodable value writes nothing."""
        self.redis_key(key)
        payload = self.serialize(value)
        await self._via_redis(
            "set",
            lambda: self._write_value(key, payload, ttl, value),
            lambda: self._unwritten(key),
        )

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there (False if Redis was unavailable, when open)."""
        self.redis_key(key)
        written = await self._via_redis(
            "delete",
            lambda: self._write_value(key, None, None, None),
            lambda: self._unwritten(key),
        )
        return bool(written)

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
        if not callable(loader) or inspect.isasyncgenfunction(loader):
            called = inspect.isawaitable(loader)
            raise ConfigurationError(
                f"loader must be an async callable taking no arguments, got {loader!r}; "
                + ("pass the function, not its call: loader=fetch, not fetch(); " if called else "")
                + "e.g. `async def loader(): return await db.fetch(key)`"
            )
        if ttl is not None:
            _positive_ttl(ttl)
        attempt = _Attempt(loader)

        async def through_cache() -> tuple[Any, Outcome]:
            if self.near is not None:
                return await self._near_lookup(key, attempt, ttl)
            return await self._lookup(key, attempt, ttl)

        try:
            value, outcome = await self._via_redis(
                "lookup", through_cache, lambda: self._bypass(key, loader, attempt)
            )
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
        value = await self._start_load(loader)
        load_ms = (time.perf_counter() - started) * 1000
        data, px = self.encode(self.serialize(value), ttl, load_ms)
        return value, data, px

    def _start_load(self, loader: Loader) -> Awaitable[Any]:
        """Call the loader (counted in ``stats.loads``); refuse one that is not async."""
        pending = loader()
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"loader must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def` or wrap a sync function "
                "with `lambda: asyncio.to_thread(fn)`"
            )
        self.stats.loads += 1
        return pending

    async def write_through(
        self,
        key: str,
        value: Any,
        writer: Callable[[Any], Awaitable[Any]],
        ttl: float | None = None,
    ) -> None:
        """Persist ``value`` with ``await writer(value)``, then cache it.

        The value is encoded and its size checked before the writer runs (an unencodable or
        too large value writes nothing anywhere). If the writer raises, the cache is left
        untouched and the error propagates, so the cache never holds a value the system of record
        refused. A closed cache whose breaker is open refuses before the writer runs; if Redis
        fails after the writer succeeded, the error says that the value was written there.
        """
        self.redis_key(key)
        if not callable(writer):
            raise ConfigurationError(
                f"writer must be an async callable taking the value, got {writer!r}; "
                "e.g. `async def writer(value): await db.save(key, value)`"
            )
        payload = self.serialize(value)
        if ttl is not None:
            _positive_ttl(ttl)
        if self.on_redis_error == "closed" and not self._would_reach_redis():
            self.stats.breaker_rejected += 1
            raise CacheUnavailableError(
                self._unavailable_message("write_through", None)
                + " Nothing was written: the writer was not called."
            )
        pending = writer(value)
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"writer must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def`"
            )
        await pending
        await self._via_redis(
            "write_through (the writer has stored the value; only the cache was not updated)",
            lambda: self._write_value(key, payload, ttl, value),
            lambda: self._unwritten(key),
        )

    # --- when Redis is unavailable ------------------------------------------------------------

    def _would_reach_redis(self) -> bool:
        return self.breaker is None or self.breaker.would_allow()

    async def _via_redis(
        self,
        what: str,
        call: Callable[[], Awaitable[Any]],
        degraded: Callable[[], Awaitable[Any]],
    ) -> Any:
        """``await call()`` (which uses Redis) under the breaker.

        If Redis cannot be reached, or the open breaker does not let the call try, a closed cache
        raises :class:`CacheUnavailableError` and an open one returns ``await degraded()``. Every
        other exception (a loader's, a bad value, a Redis error reply) passes through unchanged and
        tells the breaker that Redis answered.
        """
        permit = self._admit()
        if permit is None:
            return await self._unavailable(what, None, degraded)
        try:
            result = await call()
        except Exception as exc:
            if not _is_outage(exc):
                self._settle(permit, ok=True)
                raise
            self.stats.redis_errors += 1
            self._settle(permit, ok=False)
            failure = exc
        except BaseException:  # cancelled: no verdict on Redis
            self._settle(permit, ok=None)
            raise
        else:
            self._settle(permit, ok=True)
            return result
        return await self._unavailable(what, failure, degraded)

    def _admit(self) -> Permit | None:
        """The breaker's leave to use Redis (always, without a breaker); None while it is open."""
        if self.breaker is None:
            return _UNGUARDED
        permit = self.breaker.allow()
        if permit is None:
            self.stats.breaker_rejected += 1
        return permit

    def _settle(self, permit: Permit, *, ok: bool | None) -> None:
        if self.breaker is None:
            return
        if ok is None:
            self.breaker.release(permit)
        elif ok:
            self.breaker.success(permit)
        else:
            self.breaker.failure(permit)

    async def _unavailable(
        self, what: str, failure: BaseException | None, degraded: Callable[[], Awaitable[Any]]
    ) -> Any:
        if self.on_redis_error == "open":
            return await degraded()
        raise CacheUnavailableError(self._unavailable_message(what, failure)) from failure

    def _unavailable_message(self, what: str, failure: BaseException | None) -> str:
        if failure is not None:
            detail = str(failure).rstrip(". ") or "no details"
            why = f"Redis did not answer ({type(failure).__name__}: {detail})"
        elif self.breaker is not None and self.breaker.retry_in() > 0:
            why = (
                f"the circuit breaker is open after {self.breaker.failures} consecutive "
                f"failures, so Redis was not tried; it tries again in "
                f"{self.breaker.retry_in():.2f} s"
            )
        else:
            why = "the circuit breaker is testing with one call whether Redis is back"
        return (
            f"{what} on cache {self.namespace!r} could not use Redis at "
            f"{server_label(self.redis)}: {why}. Check that the server runs and is reachable, "
            "or create the cache with on_redis_error='open' to answer from the loader while "
            "Redis is away."
        )

    async def _bypass(self, key: str, loader: Loader, attempt: _Attempt) -> tuple[Any, Outcome]:
        """Answer a lookup without Redis: with the value this caller already loaded (the outage
        struck while storing it), else from the loader. Concurrent callers of a key share one
        load unless the policy is ``"none"``, so an outage does not turn into a stampede."""
        if attempt.loaded:
            return attempt.value, Outcome.BYPASS
        if self.policy.name == "none":
            return await self._start_load(loader), Outcome.BYPASS
        value, _shared = await self._bypassing.do(key, lambda: self._start_load(loader))
        return value, Outcome.BYPASS

    async def _unwritten(self, key: str) -> int:
        """An open cache gives up a write it cannot make; this process's L1 forgets the key."""
        self.stats.unwritten += 1
        if self.near is not None:
            self.near.invalidate(key)
        return 0

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


_UNGUARDED = Permit(generation=-1)
_OUTAGES = (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError)
_ANSWERED = (redis_errors.AuthenticationError, redis_errors.AuthorizationError, CachelabError)
_FROM_LOADER = "_cachelab_from_loader"


def _is_outage(exc: BaseException) -> bool:
    """Did Redis fail to answer (refused, reset, timed out, still loading its data)?

    A refused password is an answer (and a misconfiguration, not an outage), cachelab's own errors
    (a lock wait that timed out) are not about reaching Redis, and an error raised by a loader is
    the loader's, even when it is a Redis error of some other server.
    """
    return (
        isinstance(exc, _OUTAGES)
        and not isinstance(exc, _ANSWERED)
        and not getattr(exc, _FROM_LOADER, False)
    )


class _Attempt:
    """One lookup's loader, watched: its value is kept (if Redis fails while storing it, the
    caller gets it without a second load) and its errors are marked as the loader's."""

    __slots__ = ("loaded", "loader", "value")

    def __init__(self, loader: Loader) -> None:
        self.loader, self.loaded, self.value = loader, False, None

    def __call__(self) -> Any:
        pending = self.loader()
        return self._watch(pending) if inspect.isawaitable(pending) else pending

    async def _watch(self, pending: Awaitable[Any]) -> Any:
        try:
            self.value = await pending
        except BaseException as exc:
            with contextlib.suppress(AttributeError):
                setattr(exc, _FROM_LOADER, True)
            raise
        self.loaded = True
        return self.value

    def __repr__(self) -> str:
        return repr(self.loader)


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters so a namespace matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
