"""The cache: cache-aside primitives, read-through and write-through on Redis.

``Cache`` is a facade that wires small pieces together, each of which only looks down:

- the :class:`~cachelab.codec.Codec` turns values into stored entries and back;
- the :class:`~cachelab.store.RedisStore` sends every Redis command and script, under the
  circuit breaker (one verdict per command);
- the *herd policy* (:mod:`cachelab.herd`) decides who loads on a miss, and carries out early and
  background refreshes;
- the *refresh policy* (:mod:`cachelab.refresh`) says, per read, whether a cached value should be
  reloaded before it expires (XFetch) or served stale while it is (stale-while-revalidate);
- an optional near cache (:mod:`cachelab.l1`) serves hot keys from memory, and an invalidator
  tells it, through two callbacks, which keys changed elsewhere.

So one cache can run with no protection, a lock table, single-flight, a Redis lock or leases,
with or without early refresh, and an experiment compares them by changing one argument.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from .breaker import CircuitBreaker
from .cluster import RedisClient
from .codec import Codec, Entry, check_ttl
from .errors import CacheUnavailableError, ConfigurationError
from .herd import NOT_REFRESHED, HerdPolicy, Loaded, Produce, herd_policy
from .keys import KeySpace
from .l1 import Invalidator, NearCache, Serialized, invalidator
from .metrics import Outcome, Stats
from .refresh import RefreshPolicy, Verdict, refresh_policy
from .serializers import Serializer, get_serializer
from .singleflight import SingleFlight
from .store import Read, RedisStore

__all__ = ["DEFAULT_MAX_VALUE_BYTES", "ON_REDIS_ERROR", "Cache", "Entry", "Lookup"]

T = TypeVar("T")
Loader = Callable[[], Awaitable[T]]

ON_REDIS_ERROR = ("closed", "open")
"""What a cache does when Redis cannot be reached: raise, or answer without it."""

DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
"""A serialized value above 1 MiB is refused: a cache entry that large blocks Redis's single thread
while it travels and evicts many small entries. Pass ``max_value_bytes=None`` to lift the limit."""

_IMMUTABLE = (str, int, float, bool, type(None))
"""Values the near cache may hand out as they are; anything else it decodes afresh per hit."""


class Lookup(NamedTuple, Generic[T]):
    """A value and how the cache obtained it (see :class:`~cachelab.Outcome`)."""

    value: T
    outcome: Outcome


class Cache:
    """A namespaced cache on Redis with pluggable stampede protection.

    Every key is stored as ``"{namespace}:{{key}}"``. The namespace lets several caches (or several
    students) share one Redis, and :meth:`clear` remove exactly this cache's keys; the braces are
    a Redis Cluster hash tag, so the value and its helper keys (``...:lock``, ``...:fence``,
    ``...:lease``) always live on the same node.

    ``ttl`` is the default lifetime in seconds; ``ttl_jitter`` (0 <= j < 1) spreads each write's TTL
    uniformly over ``ttl * (1 ± j)`` so that keys written together do not all expire together.
    ``policy`` is a herd policy name (``"none"``, ``"lock_table"``, ``"local"``,
    ``"distributed"``, ``"lease"``) or object; ``refresh`` a refresh policy (``None``,
    ``"xfetch"``, ``XFetch(beta)``, ``StaleWhileRevalidate(soft_ttl_s)``).
    ``max_value_bytes`` (default 1 MiB, ``None`` for no limit) bounds the serialized size of a
    value: a larger one raises :class:`~cachelab.ValueTooLargeError` and nothing is stored.
    ``near`` (a :class:`~cachelab.NearCache`) serves hot keys from process memory;
    ``invalidation`` (``"pubsub"``, ``"streams"``, ``"tracking"``) keeps it true across processes.
    A cache with ``invalidation`` but no ``near`` only announces its writes (a writer service).

    When Redis cannot be reached (refused, reset, timed out, or the pool stayed busy),
    ``on_redis_error`` decides:

    - ``"closed"`` (the default): raise :class:`~cachelab.CacheUnavailableError`, naming the
      server. A cache that quietly answers without Redis hides an outage, and sends every read to
      the system of record, the very load the cache exists to keep away: that is opt-in.
    - ``"open"``: keep serving. ``get_or_set``/``lookup`` answer from the loader
      (``Outcome.BYPASS``; concurrent callers of a key still share one load unless the policy is
      ``"none"``), ``get`` returns the default, and ``set``/``delete``/``write_through`` give up
      the cache write (counted in ``stats.unwritten``, not raised).

    ``breaker`` (by default a fresh :class:`~cachelab.CircuitBreaker` per cache; pass one to
    share it between caches on the same server, or None for none) stops trying Redis after
    repeated failures, so an outage costs no timeout per request, and probes with one command at
    a time until Redis is back. A loader's own errors never count as an outage.

    ``batching`` (on by default) sends the reads that concurrent lookups issue in one event-loop
    tick as one MGET: the Python client, not Redis, limits how many reads a process can make,
    and a batch costs it about what one read does. ``batching=False`` sends one MGET per read
    (to measure the difference).

    A cache that refreshes in the background owns tasks: close it with ``await cache.aclose()``
    (or use ``async with``), which waits for them.
    """

    def __init__(
        self,
        redis: RedisClient,
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
        batching: bool = True,
    ) -> None:
        self.keyspace = KeySpace(namespace)
        ttl = check_ttl(ttl)
        if (
            isinstance(ttl_jitter, bool)
            or not isinstance(ttl_jitter, int | float)
            or not (0 <= ttl_jitter < 1)
        ):
            raise ConfigurationError(
                f"ttl_jitter must be a fraction in [0, 1), got {ttl_jitter!r}; "
                "0.1 spreads TTLs by ±10%"
            )
        if max_value_bytes is not None and (
            type(max_value_bytes) is not int or max_value_bytes < 1
        ):
            raise ConfigurationError(
                f"max_value_bytes must be a positive int (bytes) or None for no limit, "
                f"got {max_value_bytes!r}; e.g. max_value_bytes=4 * 1024 * 1024 for 4 MiB"
            )
        if on_redis_error not in ON_REDIS_ERROR:
            raise ConfigurationError(
                f"on_redis_error must be 'closed' (raise CacheUnavailableError when Redis cannot "
                f"be reached) or 'open' (answer from the loader without caching), "
                f"got {on_redis_error!r}"
            )
        if isinstance(breaker, str) and breaker == "default":
            breaker = CircuitBreaker()
        elif breaker is not None and not isinstance(breaker, CircuitBreaker):
            raise ConfigurationError(
                f"breaker must be a CircuitBreaker, 'default' (one for this cache) or None (no "
                f"breaker), got {breaker!r}; e.g. breaker=CircuitBreaker(failures=5, "
                "reset_after=1.0)"
            )
        if near is not None and not isinstance(near, NearCache):
            raise ConfigurationError(f"near must be a NearCache, got {near!r}")
        self.refresh_policy = refresh_policy(refresh)
        self.codec = Codec(
            get_serializer(serializer),
            ttl=ttl,
            ttl_jitter=float(ttl_jitter),
            soft_ttl=self.refresh_policy.soft_ttl_s,
            max_value_bytes=max_value_bytes,
        )
        if not isinstance(batching, bool):
            raise ConfigurationError(f"batching must be True or False, got {batching!r}")
        self.store = RedisStore(
            redis,
            self.keyspace,
            self.codec,
            breaker=breaker,
            stats=(stats := Stats()),
            batching=batching,
        )
        self.stats = stats
        self.policy = herd_policy(policy).bind(self.store)
        """The herd policy at work for this cache: the settings it was given, its own state."""
        self.near = near
        self.invalidator = invalidator(invalidation)
        self.on_redis_error = on_redis_error
        self.breaker = breaker
        self._stale_ms = round(self.policy.keep_stale_s * 1000)
        self._checks_refresh = type(self.refresh_policy) is not RefreshPolicy
        self._plain_hits = near is None and not self._checks_refresh
        self._background: dict[str, asyncio.Task[None]] = {}
        self._bypassing = SingleFlight()
        self._starting = asyncio.Lock()
        self._listened = False

    def __repr__(self) -> str:
        return (
            f"Cache(namespace={self.namespace!r}, ttl={self.ttl:g}, policy={self.policy.name!r}, "
            f"refresh={self.refresh_policy!r}, serializer={self.serializer.name!r})"
        )

    @property
    def redis(self) -> RedisClient:
        return self.store.redis

    @property
    def namespace(self) -> str:
        return self.keyspace.namespace

    @property
    def ttl(self) -> float:
        return self.codec.ttl

    @property
    def serializer(self) -> Serializer:
        return self.codec.serializer

    @property
    def max_value_bytes(self) -> int | None:
        return self.codec.max_value_bytes

    def redis_key(self, key: str) -> str:
        """The Redis key that stores ``key``: ``namespace:{key}``."""
        return self.keyspace.value(key)

    async def __aenter__(self) -> Cache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Wait for background refreshes, stop the invalidator, close the keep-alive connection
        (the client itself stays open)."""
        while self._background:
            await asyncio.gather(*self._background.values(), return_exceptions=True)
        if self.invalidator is not None:
            await self.invalidator.aclose()
            self._listened = False
        await self.store.aclose()

    # --- cache-aside primitives ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """The cached value, or ``default`` when the key is missing (counts a hit or a miss).

        With ``on_redis_error="open"``, a Redis that cannot be reached reads as a miss.
        """
        self.keyspace.value(key)
        try:
            if self.near is not None:
                found, value, _outcome = await self._near_lookup(self.near, key, None)
            else:
                entry = (await self.policy.read(key)).entry
                found, value = entry is not None, entry.value if entry is not None else None
        except CacheUnavailableError as exc:
            if self.on_redis_error != "open":
                raise _during("get", exc) from exc.__cause__
            found, value = False, None
        if not found:
            self.stats.misses += 1
            return default
        self.stats.hits += 1
        return value

    async def entry(self, key: str) -> Entry | None:
        """What is cached for ``key``: value, load time, expiry, soft expiry and fence (the key's
        version), or None. Counts nothing and loads nothing: for looking inside the cache."""
        read = await self.store.read(key)
        return None if read.entry is None else read.entry._replace(fence=read.fence)

    async def ttl_of(self, key: str) -> float | None:
        """Seconds until ``key`` expires, or None when it is not cached."""
        return await self.store.ttl_of(key)

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value``; it is encoded first, so an unencodable value writes nothing."""
        self.keyspace.value(key)
        payload = self.codec.payload(value)
        self._call_ttl(ttl)
        await self._write_or_give_up("set", key, payload, ttl)

    async def delete(self, key: str) -> bool:
        """Remove ``key``; True if it was there (False if Redis was unavailable, when open)."""
        self.keyspace.value(key)
        return bool(await self._write_or_give_up("delete", key, None, None))

    async def _write_or_give_up(
        self, what: str, key: str, payload: bytes | None, ttl: float | None
    ) -> int:
        try:
            return await self._write(key, payload, ttl)
        except CacheUnavailableError as exc:
            if self.on_redis_error != "open":
                raise _during(what, exc) from exc.__cause__
            self.stats.unwritten += 1
            if self.near is not None:
                self.near.invalidate(key)
            return 0

    async def _write(self, key: str, payload: bytes | None, ttl: float | None) -> int:
        """A write or (``payload`` None) delete: the key's fence moves, in-flight fills of it are
        refused, its lease is revoked, and the invalidator's announcement goes in the same script.

        With a near cache, this process's L1 takes the new value (or drops the key) at once. If
        another write's invalidation arrives while this one is on its way, that write came later:
        the L1 keeps nothing.
        """
        packed = None if payload is None else self.codec.pack(payload, ttl, 0.0)
        announce = None
        if self.invalidator is not None:
            if self.near is not None:
                await self._listening()  # before L1 takes the value: no later write is missed
            announce = self.invalidator.announcement(self.keyspace, key)
        near = self.near
        ticket = near.begin(key) if near is not None else None
        try:
            changed, _fence = await self.store.write(
                key, packed, stale_ms=self._stale_ms, announce=announce
            )
            if near is not None and ticket is not None:
                if payload is None:
                    near.invalidate(key)
                else:
                    item = self._l1_item(self.codec.loads(payload), payload)
                    near.set(key, item, ticket, ttl_s=self._fresh_for(ttl))
            return changed
        finally:
            self.policy.forget(key)
            if near is not None and ticket is not None:
                near.end(ticket)

    # --- read-through and write-through -------------------------------------------------------

    async def get_or_set(self, key: str, loader: Loader[T], ttl: float | None = None) -> T:
        """Read-through: the cached value, or ``await loader()`` stored under ``key``.

        On a miss, the herd policy decides who calls the loader. A loader's exception reaches
        the caller unchanged and nothing is stored.
        """
        return (await self.lookup(key, loader, ttl)).value

    async def lookup(self, key: str, loader: Loader[T], ttl: float | None = None) -> Lookup[T]:
        """Like :meth:`get_or_set`, but also says how the value was obtained (an Outcome)."""
        self.keyspace.value(key)
        _check_loader(loader)
        if ttl is not None:
            self._call_ttl(ttl)
        load = None
        try:
            try:
                if self._plain_hits:  # the hit path: one read, nothing made unless it misses
                    read = await self.policy.read(key)
                    if read.entry is not None:
                        value, outcome = read.entry.value, Outcome.HIT
                    else:
                        load = _Load(self, loader, ttl)
                        value, outcome, _entry = await self._lookup(key, load, read)
                elif self.near is not None:
                    load = _Load(self, loader, ttl)
                    _found, value, outcome = await self._near_lookup(self.near, key, load)
                else:
                    load = _Load(self, loader, ttl)
                    value, outcome, _entry = await self._lookup(key, load)
            except CacheUnavailableError as exc:
                if self.on_redis_error != "open":
                    raise _during("lookup", exc) from exc.__cause__
                load = load or _Load(self, loader, ttl)
                value, outcome = await self._bypass(key, loader, load)
        except Exception:
            self.stats.errors += 1
            raise
        self.stats.count(outcome)
        return Lookup(value, outcome)

    async def refresh(self, key: str, loader: Loader[T], ttl: float | None = None) -> T:
        """Reload ``key`` now through the herd policy, as an early refresh would, and return the
        value (the cached one if another caller is reloading it already). Warms a cache."""
        self.keyspace.value(key)
        _check_loader(loader)
        self._call_ttl(ttl)
        read = await self.policy.read(key)
        value = await self.policy.refresh(key, read, _Load(self, loader, ttl))
        if value is NOT_REFRESHED:
            return read.entry.value if read.entry is not None else await self.get(key)
        if self.near is not None:
            self.near.invalidate(key)
        return value

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
        self.keyspace.value(key)
        if not callable(writer):
            raise ConfigurationError(
                f"writer must be an async callable taking the value, got {writer!r}; "
                "e.g. `async def writer(value): await db.save(key, value)`"
            )
        payload = self.codec.payload(value)
        self._call_ttl(ttl)
        if self.on_redis_error == "closed" and not (
            self.breaker is None or self.breaker.would_allow()
        ):
            self.stats.breaker_rejected += 1
            raise CacheUnavailableError(
                self.store.guard.unavailable(None) + " Nothing was written: the writer was not "
                "called."
            )
        pending = writer(value)
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"writer must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def`"
            )
        await pending
        try:
            await self._write_or_give_up("write_through", key, payload, ttl)
        except CacheUnavailableError as exc:
            raise CacheUnavailableError(
                f"{exc} (the writer has stored the value; only the cache was not updated)"
            ) from exc.__cause__

    # --- the lookup ---------------------------------------------------------------------------

    async def _lookup(
        self, key: str, produce: Produce, read: Read | None = None
    ) -> tuple[Any, Outcome, Entry | None]:
        """Redis (through the herd policy; ``read`` if it was read already) and, on a miss, the
        loader; with the entry the value came from, when it came from one."""
        if read is None:
            read = await self.policy.read(key)
        entry = read.entry
        if entry is None:
            value, outcome = await self.policy.load(key, read, produce)
            return value, outcome, None
        if not self._checks_refresh:
            return entry.value, Outcome.HIT, entry
        verdict = self.refresh_policy.verdict(entry, time.time())
        if verdict is Verdict.FRESH:
            return entry.value, Outcome.HIT, entry
        if verdict is Verdict.EARLY:
            value = await self.policy.refresh(key, read, produce)
            if value is NOT_REFRESHED:  # someone else is already recomputing it
                return entry.value, Outcome.HIT, entry
            return value, Outcome.REFRESH, None
        if key not in self._background:  # one background refresh per key per process
            task = asyncio.create_task(self._revalidate(key, produce))
            self._background[key] = task
            task.add_done_callback(lambda _t: self._background.pop(key, None))
        return entry.value, Outcome.STALE, entry

    async def _revalidate(self, key: str, produce: Produce) -> None:
        """One background refresh. It reads the key again first: a read that saw the stale
        entry just before another refresh landed must not start a second one."""
        try:
            read = await self.policy.read(key)
            entry = read.entry
            if entry is not None and self.refresh_policy.verdict(entry, time.time()) is (
                Verdict.FRESH
            ):
                return  # refreshed already (gone, it is refilled all the same)
            if await self.policy.revalidate(key, read, produce):
                self.stats.background_refreshes += 1
        except Exception:  # nobody awaits this task: count, never leak "never retrieved"
            self.stats.background_errors += 1

    async def _near_lookup(
        self, near: NearCache, key: str, produce: Produce | None
    ) -> tuple[bool, Any, Outcome]:
        """L1 (``near``, the cache's) first; else Redis (and the loader, if any), remembering the
        answer in L1 unless an invalidation of the key arrived meanwhile. ``found`` is False when
        ``produce`` is None and Redis has nothing."""
        if self.invalidator is not None:
            await self._listening()
        found, value = near.get(key)
        if found:
            return True, value, Outcome.HIT
        ticket = near.begin(key)
        try:
            if produce is None:
                entry = (await self.policy.read(key)).entry
                if entry is None:
                    return False, None, Outcome.HIT
                value, outcome = entry.value, Outcome.HIT
            else:
                value, outcome, entry = await self._lookup(key, produce)
            if outcome is not Outcome.STALE:
                if entry is not None:
                    fresh = (entry.soft_expires_at or entry.expires_at) - time.time()
                else:
                    fresh = self._fresh_for(None)
                item = self._l1_item(value, None)
                near.put(ticket, item, ttl_s=fresh)
            return True, value, outcome
        finally:
            near.end(ticket)

    async def _listening(self) -> None:
        """Start the invalidator before the first L1 fill (no later write can then be missed);
        if its listener died, flush the L1 and start it again."""
        invalidator, near = self.invalidator, self.near
        if invalidator is None or near is None:  # callers check: only an L1 is kept true
            return
        if invalidator.running:
            return
        async with self._starting:
            if invalidator.running:
                return
            if self._listened:  # it was listening and stopped: messages may have been lost
                near.clear()
                invalidator.stats.restarts += 1
            await invalidator.aclose()
            await self.store.guard(
                invalidator.start,
                self.store.redis,
                self.keyspace,
                self._invalidated,
                near.clear,
            )
            self._listened = True

    def _invalidated(self, key: str) -> None:
        """Another process changed ``key``: drop it from L1, and let no lookup starting now join
        a read of it that began before the change."""
        if self.near is not None:  # always: only a cache with an L1 listens
            self.near.invalidate(key)
        self.policy.forget(key)

    def _l1_item(self, value: Any, payload: bytes | None) -> Any:
        """What L1 keeps of a value: itself if immutable, else its bytes (decoded per hit)."""
        if type(value) in _IMMUTABLE:
            return value
        if payload is None:
            payload = self.codec.payload(value)
        return Serialized(payload, self.codec.loads)

    def _fresh_for(self, ttl: float | None) -> float:
        """How long an entry written now with ``ttl`` stays fresh at least, whatever the jitter
        drew: an L1 copy of it must not outlive it."""
        seconds = self.ttl if ttl is None else ttl
        if self.codec.soft_ttl is not None:
            seconds = min(seconds, self.codec.soft_ttl)
        return seconds * (1 - self.codec.ttl_jitter)

    def _call_ttl(self, ttl: float | None) -> None:
        if ttl is not None:
            self.codec.check_call_ttl(check_ttl(ttl))

    async def _bypass(self, key: str, loader: Loader[Any], attempt: _Load) -> tuple[Any, Outcome]:
        """Answer a lookup without Redis: with the value this caller already loaded (the outage
        struck while storing it), else from the loader. Concurrent callers of a key share one
        load unless the policy is ``"none"``, so an outage does not turn into a stampede."""
        if attempt.loaded:
            return attempt.value, Outcome.BYPASS
        if self.policy.name == "none":
            return await _call(loader, self.stats), Outcome.BYPASS
        value, _shared = await self._bypassing.do(key, lambda: _call(loader, self.stats))
        return value, Outcome.BYPASS

    # --- housekeeping -------------------------------------------------------------------------

    async def keys(self) -> AsyncIterator[str]:
        """This cache's keys (without the namespace), found with SCAN, never KEYS."""
        async for rkey in self.store.scan():
            key = self.keyspace.key_of(rkey)
            if key is not None:
                yield key

    async def clear(self) -> int:
        """Delete every key of this namespace: values, helper keys, and the invalidator's own
        keys (a Streams log). SCAN + UNLINK, never KEYS. Returns how many values were removed.
        """
        removed = 0
        batch: list[bytes | str] = []
        if self.invalidator is not None:
            batch.extend(self.invalidator.redis_keys(self.keyspace))
        async for rkey in self.store.scan():
            batch.append(rkey)
            removed += rkey.endswith(b"}")
            if len(batch) >= 500:
                await self.store.unlink(batch)
                batch = []
        await self.store.unlink(batch)
        if self.near is not None:
            self.near.clear()
        return removed


def _during(what: str, error: CacheUnavailableError) -> CacheUnavailableError:
    """The same error, saying which call of the cache met it: ``"lookup on cache 'x' ..."``."""
    return CacheUnavailableError(f"{what} on {error}")


class _Load:
    """One lookup's ``produce`` for the herd policy: call the loader once (counted), time it,
    encode its value. It keeps the value it loaded, so that if Redis fails while storing it, the
    caller gets it without a second load. Made on every lookup, used only on a miss."""

    __slots__ = ("cache", "loaded", "loader", "ttl", "value")

    def __init__(self, cache: Cache, loader: Loader[Any], ttl: float | None) -> None:
        self.cache, self.loader, self.ttl = cache, loader, ttl
        self.loaded, self.value = False, None

    async def __call__(self) -> Loaded:
        cache = self.cache
        started = time.perf_counter()
        pending = self.loader()
        if not inspect.isawaitable(pending):
            raise ConfigurationError(
                f"loader must be an async callable, but calling it returned "
                f"{type(pending).__name__}; define it with `async def` or wrap a sync "
                "function with `lambda: asyncio.to_thread(fn)`"
            )
        cache.stats.loads += 1
        value = await pending
        self.loaded, self.value = True, value
        payload = cache.codec.payload(value)
        packed = cache.codec.pack(payload, self.ttl, (time.perf_counter() - started) * 1000)
        return Loaded(value, payload, packed)


def _check_loader(loader: object) -> None:
    code = getattr(loader, "__code__", None)  # inspect.isasyncgenfunction, without its cost
    if not callable(loader) or (code is not None and code.co_flags & inspect.CO_ASYNC_GENERATOR):
        called = inspect.isawaitable(loader)
        raise ConfigurationError(
            f"loader must be an async callable taking no arguments, got {loader!r}; "
            + ("pass the function, not its call: loader=fetch, not fetch(); " if called else "")
            + "e.g. `async def loader(): return await db.fetch(key)`"
        )


async def _call(loader: Loader[Any], stats: Stats) -> Any:
    pending = loader()
    if not inspect.isawaitable(pending):
        raise ConfigurationError(
            f"loader must be an async callable, but calling it returned {type(pending).__name__}"
        )
    stats.loads += 1
    return await pending
