"""The cache: cache-aside primitives, read-through and write-through on Redis.

``Cache`` is deliberately small. What happens on a miss is delegated to a herd policy
(:mod:`cachelab.policies`), so the same cache can be run with no protection, a lock table or
single-flight, and an experiment can compare them by changing one argument.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from . import envelope
from .errors import ConfigurationError, SerializationError
from .metrics import Outcome, Stats
from .policies import HerdPolicy, herd_policy
from .serializers import Serializer, get_serializer

__all__ = ["Cache", "Lookup"]

Loader = Callable[[], Awaitable[Any]]


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

    Every key is stored as ``"{namespace}:{key}"``, so several caches (or several students) can
    share one Redis without touching each other's data, and :meth:`clear` can remove exactly
    this cache's keys.

    ``ttl`` is the default lifetime in seconds; ``ttl_jitter`` (0 <= j < 1) spreads each write's TTL
    uniformly over ``ttl * (1 ± j)`` so that keys written together do not all expire together.
    ``policy`` is a herd policy name (``"none"``, ``"lock_table"``, ``"local"``) or instance.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        namespace: str,
        ttl: float,
        policy: str | HerdPolicy = "local",
        serializer: str | Serializer = "json",
        ttl_jitter: float = 0.0,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or namespace != namespace.strip():
            raise ConfigurationError(
                f"namespace must be a non-empty string without surrounding spaces, "
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
        self.serializer = get_serializer(serializer)
        self.stats = Stats()
        self._prefix = f"{namespace}:"

    def __repr__(self) -> str:
        return (
            f"Cache(namespace={self.namespace!r}, ttl={self.ttl:g}, policy={self.policy.name!r}, "
            f"serializer={self.serializer.name!r})"
        )

    # --- keys and entries ---------------------------------------------------------------------

    def redis_key(self, key: str) -> str:
        """The Redis key that stores ``key``: the namespace, a colon, then the key."""
        if type(key) is not str or not key:
            raise ConfigurationError(
                f"cache keys must be non-empty strings, got {key!r}; "
                "build one with e.g. f'user:{user_id}'"
            )
        return self._prefix + key

    def _ttl_for_write(self, ttl: float | None) -> float:
        seconds = self.ttl if ttl is None else _positive_ttl(ttl)
        if self.ttl_jitter:
            seconds *= 1 + random.uniform(-self.ttl_jitter, self.ttl_jitter)
        return seconds

    def _decode(self, raw: bytes | None) -> tuple[bool, Any]:
        """(found, value); an undecodable entry counts as corrupt and reads as a miss."""
        if raw is None:
            return False, None
        entry = envelope.unpack(raw)
        if entry is not None:
            try:
                return True, self.serializer.loads(entry.payload)
            except SerializationError:
                pass
        self.stats.corrupt += 1
        return False, None

    async def _store(self, rkey: str, payload: bytes, ttl: float | None, load_ms: float) -> None:
        seconds = self._ttl_for_write(ttl)
        data = envelope.pack(payload, load_ms=load_ms, expires_at=time.time() + seconds)
        await self.redis.set(rkey, data, px=max(1, round(seconds * 1000)))

    # --- cache-aside primitives ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value, or ``default`` when the key is missing (counts a hit or a miss)."""
        found, value = self._decode(await self.redis.get(self.redis_key(key)))
        if found:
            self.stats.hits += 1
            return value
        self.stats.misses += 1
        return default

    async def read(self, key: str) -> tuple[bool, Any]:
        """``(found, value)`` from Redis, without touching the counters (policies use it)."""
        return self._decode(await self.redis.get(self.redis_key(key)))

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; it is encoded first, so an unencodable value writes nothing."""
        rkey = self.redis_key(key)
        payload = self.serializer.dumps(value)
        try:
            await self._store(rkey, payload, ttl, load_ms=0.0)
        finally:
            self.policy.written(key)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there."""
        rkey = self.redis_key(key)
        try:
            return bool(await self.redis.delete(rkey))
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
            value, outcome = await self.policy.lookup(self, key, loader, ttl)
        except Exception:
            self.stats.errors += 1
            raise
        if outcome is Outcome.HIT:
            self.stats.hits += 1
        else:
            self.stats.misses += 1
            if outcome is Outcome.SHARED:
                self.stats.coalesced += 1
        return Lookup(value, outcome)

    async def read_or_load(
        self, key: str, loader: Loader, ttl: float | None = None
    ) -> tuple[Any, Outcome]:
        """Plain cache-aside for one caller: read Redis; on a miss, load and store.

        Herd policies build on this; it is public so that a custom policy can too.
        """
        found, value = await self.read(key)
        if found:
            return value, Outcome.HIT
        return await self.load_and_store(key, loader, ttl), Outcome.LOAD

    async def load_and_store(self, key: str, loader: Loader, ttl: float | None = None) -> Any:
        """Call the loader once, store its value with how long it took, and return the value."""
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
        await self._store(self.redis_key(key), self.serializer.dumps(value), ttl, load_ms)
        return value

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
        rkey = self.redis_key(key)
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
        try:
            await self._store(rkey, payload, ttl, load_ms=0.0)
        finally:
            self.policy.written(key)

    # --- housekeeping -------------------------------------------------------------------------

    async def keys(self) -> AsyncIterator[str]:
        """This cache's keys (without the namespace), found with SCAN, never KEYS."""
        async for rkey in self.redis.scan_iter(match=_glob_escape(self._prefix) + "*", count=500):
            yield rkey.decode()[len(self._prefix) :]

    async def clear(self) -> int:
        """Delete every key of this namespace (SCAN + UNLINK); return how many were removed."""
        removed = 0
        batch: list[str] = []
        async for key in self.keys():
            batch.append(self._prefix + key)
            if len(batch) >= 500:
                removed += await self.redis.unlink(*batch)
                batch.clear()
        if batch:
            removed += await self.redis.unlink(*batch)
        return removed


def _glob_escape(text: str) -> str:
    """Escape Redis glob characters so a namespace matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
