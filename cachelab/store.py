"""The store: the one place where the cache talks to Redis.

Every command the cache sends and every Lua script it runs is here, so that what Redis sees can be
read in one file, and so that the circuit breaker is applied to each command (a half-open probe is
one command, never a whole load or lock wait).

**The fence.** Every key ``K`` has a counter beside it (``K:fence``, same hash slot) that
versions it: each write or delete through a cache, and each grant of ``K``'s lock or lease, moves
it to ``max(fence + 1, the server's clock in microseconds)``. A *fill* (a loader's value being
stored) carries the fence its filler read on its miss, or was granted with its lock or lease, and
is stored only if the fence still holds exactly that number: any write, delete or grant since then
refuses it. So a filler overtaken by a write (its load read the database before the write), or by
a newer lock holder (it paused past its lock's TTL), cannot store its outdated value: Kleppmann's
fencing token and memcache's lease, as one mechanism, for every herd policy.

Equality is stricter than Kleppmann's "refuse any token older than the highest seen", and the
clock floor keeps the fence rising when its key is gone: after an eviction, a FLUSHALL or a
restart without persistence, the next write or grant starts from the server's clock, which is
above every earlier value (unless the server's clock steps backwards). A fill whose fence key has
vanished is refused unless the key had none when the filler read it.

**Writes announce themselves in the same script**: the invalidation (PUBLISH, or XADD to the
namespace's stream) is sent *before* the write inside one atomic script, so a writer that dies,
or whose user may not publish, leaves no write behind that nobody heard of. (On a Redis Cluster
the stream is a key of another slot: there the XADD follows as a second command.)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

from redis import exceptions as redis_errors

from .breaker import CircuitBreaker, Permit
from .cluster import NoFreeConnection, RedisClient, is_cluster
from .codec import Codec, Entry, Packed
from .connection import clone_client, permission_problem, server_label
from .errors import AuthenticationError, CachelabError, CacheUnavailableError
from .keys import KeySpace
from .metrics import Stats
from .wire import Channel

__all__ = [
    "FENCE_TTL_MS",
    "Announce",
    "Guard",
    "LockCommands",
    "Read",
    "ReadBatcher",
    "RedisStore",
    "ScriptBatcher",
    "is_pool_busy",
]

T = TypeVar("T")

FENCE_TTL_MS = 24 * 3600 * 1000
"""A fence lives a day past its last move: far longer than any fill. Its expiry is safe: the
next move starts from the server's clock, above every value it had."""

_BUMP = """
local function bump(fence, ttl)
  local now = redis.call('time')
  local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local nxt = (tonumber(redis.call('get', fence)) or 0) + 1
  if floor > nxt then nxt = floor end
  local text = string.format('%.0f', nxt)
  redis.call('set', fence, text, 'PX', ttl)
  return text
end
"""

FILL = """
-- KEYS: value, fence, lease   ARGV: data, px, token ('' = unfenced, for teaching)
if ARGV[3] ~= '' and (redis.call('get', KEYS[2]) or '0') ~= ARGV[3] then
  return 0
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('del', KEYS[3])
return 1
"""

WRITE = (
    _BUMP
    + """
-- KEYS: value, fence, lease, stale[, stream]
-- ARGV: data ('' deletes), px, fence ttl, stale ms, channel, message, maxlen, key, sender
-- Announce first: if the script stops half-way (an ACL that forbids PUBLISH), nothing is written.
if ARGV[5] ~= '' then
  redis.call('publish', ARGV[5], ARGV[6])
end
if KEYS[5] then
  redis.call('xadd', KEYS[5], 'MAXLEN', '~', ARGV[7], '*', 'k', ARGV[8], 's', ARGV[9])
end
local fence = bump(KEYS[2], ARGV[3])
redis.call('del', KEYS[3])
if ARGV[1] == '' then
  local old = redis.call('get', KEYS[1])
  if old and tonumber(ARGV[4]) > 0 then
    redis.call('set', KEYS[4], old, 'PX', ARGV[4])
  end
  return {redis.call('del', KEYS[1]), fence}
end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('del', KEYS[4])
return {1, fence}
"""
)

LEASE = (
    _BUMP
    + """
-- KEYS: value, fence, lease, stale   ARGV: lease ms, fence ttl, unreadable, refresh ('1' or '')
-- {1, value} | {2, stale value or '', lease pttl} | {3, token}. A value equal to ARGV[3] (bytes
-- the caller could not decode) counts as missing; a refresh asks for a lease although a value
-- is cached (one refresher at a time, across every process).
local value = redis.call('get', KEYS[1])
if ARGV[4] == '' and value and value ~= ARGV[3] then
  return {1, value}
end
if redis.call('exists', KEYS[3]) == 1 then
  return {2, redis.call('get', KEYS[4]) or '', redis.call('pttl', KEYS[3])}
end
local token = bump(KEYS[2], ARGV[2])
redis.call('set', KEYS[3], token, 'PX', ARGV[1])
return {3, token}
"""
)

GIVE_BACK = """
-- KEYS: lease   ARGV: token   (a failed filler returns its lease, if it still holds it)
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""

CLAIM = (
    _BUMP
    + """
-- KEYS: value, lock, fence   ARGV: token, lock ms, fence ttl, unreadable
-- The value if someone stored it ({2, value}), else the lock and its fencing token
-- ({1, fence}), else how long the current holder's lock still runs ({0, pttl}).
local value = redis.call('get', KEYS[1])
if value and value ~= ARGV[4] then
  return {2, value}
end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, bump(KEYS[3], ARGV[3])}
end
return {0, redis.call('pttl', KEYS[2])}
"""
)

ACQUIRE = (
    _BUMP
    + """
-- KEYS: lock, fence   ARGV: token, lock ms, fence ttl
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, bump(KEYS[2], ARGV[3])}
end
return {0, redis.call('pttl', KEYS[1])}
"""
)

RELEASE = """
-- KEYS: lock   ARGV: token, channel, message   (only our own lock; a plain DEL could delete
-- a lock someone else holds now)
if redis.call('get', KEYS[1]) == ARGV[1] then
  redis.call('del', KEYS[1])
  redis.call('publish', ARGV[2], ARGV[3])
  return 1
end
return 0
"""

EXTEND = """
-- KEYS: lock   ARGV: token, lock ms
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""

FILL_AND_RELEASE = """
-- KEYS: value, fence, lease, lock   ARGV: data, px, token ('' = unfenced), lock token, channel
-- The lock holder's last step: store if the fence still holds its token, release its lock, and
-- tell the waiters, with the stored entry in the message so that they need not read it again.
local stored = 0
if ARGV[3] == '' or (redis.call('get', KEYS[2]) or '0') == ARGV[3] then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('del', KEYS[3])
  stored = 1
end
if redis.call('get', KEYS[4]) == ARGV[4] then
  redis.call('del', KEYS[4])
end
if stored == 1 then
  redis.call('publish', ARGV[5], 'filled\\n' .. ARGV[1])
else
  redis.call('publish', ARGV[5], 'refused')
end
return stored
"""


# --- which failures are Redis's ---------------------------------------------------------------


def is_pool_busy(exc: BaseException) -> bool:
    """True when every connection of the client's pool stayed busy (Redis itself may be fine)."""
    if isinstance(exc, redis_errors.MaxConnectionsError | NoFreeConnection):
        return True
    return isinstance(exc, redis_errors.ConnectionError) and str(exc).startswith(
        "No connection available"
    )


_OUTAGES = (redis_errors.ConnectionError, redis_errors.TimeoutError, TimeoutError, OSError)
_REFUSED = (
    redis_errors.NoPermissionError,
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
)


class Guard:
    """Runs one Redis command under the circuit breaker and turns failures into cachelab errors.

    - Redis did not answer (refused, reset, timed out, still loading): the breaker counts a
      failure and :class:`~cachelab.CacheUnavailableError` is raised (the cache may answer
      without Redis if it was made with ``on_redis_error="open"``);
    - every connection of the pool stayed busy: the same error, but the breaker counts nothing
      (Redis is healthy; the client is overloaded) and ``stats.pool_timeouts`` does;
    - Redis refused the command (ACL): :class:`~cachelab.AuthenticationError` naming the command
      and how to grant it; it is an answer, not an outage;
    - any other reply, error replies included, tells the breaker that Redis answered.
    """

    __slots__ = ("breaker", "client", "namespace", "stats")

    def __init__(
        self,
        client: RedisClient,
        namespace: str,
        breaker: CircuitBreaker | None,
        stats: Stats,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.breaker = breaker
        self.stats = stats

    async def __call__(self, command: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        breaker = self.breaker
        if breaker is None:
            try:
                return await command(*args, **kw)
            except Exception as exc:
                raise self.translate(exc) from exc
        permit = breaker.allow()
        if permit is None:
            self.stats.breaker_rejected += 1
            raise CacheUnavailableError(self.unavailable(None))
        try:
            result = await command(*args, **kw)
        except Exception as exc:
            translated = self.translate(exc, permit)
            raise translated from exc
        except BaseException:  # cancelled: no verdict on Redis
            breaker.release(permit)
            raise
        breaker.success(permit)
        return result

    def translate(self, exc: Exception, permit: Permit | None = None) -> Exception:
        """The cachelab error for a failed command (settling ``permit`` with the breaker)."""
        breaker = self.breaker
        if isinstance(exc, CachelabError):  # already ours (a refused SUBSCRIBE, a bad option)
            # an inner command's outage was counted where it happened
            if permit is not None and breaker is not None:
                unavailable = isinstance(exc, CacheUnavailableError)
                (breaker.release if unavailable else breaker.success)(permit)
            return exc
        if isinstance(exc, _REFUSED):
            if permit is not None and breaker is not None:
                breaker.success(permit)  # an answer: Redis is up
            return AuthenticationError(self.refused(exc))
        if is_pool_busy(exc):
            if permit is not None and breaker is not None:
                breaker.release(permit)
            self.stats.pool_timeouts += 1
            return CacheUnavailableError(self.unavailable(exc))
        if isinstance(exc, _OUTAGES):
            if permit is not None and breaker is not None:
                breaker.failure(permit)
            self.stats.redis_errors += 1
            return CacheUnavailableError(self.unavailable(exc))
        if permit is not None and breaker is not None:
            breaker.success(permit)
        return exc

    def unavailable(self, failure: BaseException | None) -> str:
        """Why Redis could not be used, and what to do about it (password never shown)."""
        where = f"cache {self.namespace!r} could not use Redis at {server_label(self.client)}"
        fix = (
            "Check that the server runs and is reachable, or create the cache with "
            "on_redis_error='open' to answer from the loader while Redis is away."
        )
        if failure is not None and is_pool_busy(failure):
            pool = self.client.connection_pool if hasattr(self.client, "connection_pool") else None
            size = getattr(pool, "max_connections", "all")
            wait = getattr(pool, "timeout", None)
            waited = f" for {wait:g} s" if isinstance(wait, int | float) else ""
            return (
                f"{where}: all {size} connections of the client's pool stayed busy{waited}; "
                "Redis itself may be fine. Raise max_connections (cachelab.connect("
                "max_connections=...)) or pool_timeout, or send fewer requests at once."
            )
        if failure is not None:
            detail = str(failure).rstrip(". ") or "no details"
            return f"{where}: Redis did not answer ({type(failure).__name__}: {detail}). {fix}"
        breaker = self.breaker
        if breaker is not None and breaker.retry_in() > 0:
            why = (
                f"the circuit breaker is open after {breaker.failures} consecutive failures, so "
                f"Redis was not tried; it tries again in {breaker.retry_in():.2f} s"
            )
        else:
            why = "the circuit breaker is testing with one call whether Redis is back"
        return f"{where}: {why}. {fix}"

    def refused(self, exc: Exception) -> str:
        """One line: what the Redis user may not do, and the ACL rule that grants it."""
        problem = permission_problem(exc, self.client)
        if problem is None:
            problem = (
                f"Redis at {server_label(self.client)} refused the credentials "
                f"({str(exc).rstrip('. ')}); fix the user name and password in the URL"
            )
        return f"cache {self.namespace!r}: {problem}"


async def _unguarded(command: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
    return await command(*args, **kw)


# --- the lock's commands ------------------------------------------------------------------------


class LockCommands:
    """The Lua of a :class:`~cachelab.RedisLock`, registered once per client.

    ``control`` is the client that extends held locks: a cache gives it a connection of its own,
    so that a keep-alive never queues behind the cache's traffic on a busy pool (and the lock
    expires while its holder is healthy).
    """

    _by_client: ClassVar[weakref.WeakKeyDictionary[RedisClient, LockCommands]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        redis: RedisClient,
        guard: Callable[..., Awaitable[Any]] = _unguarded,
        control: RedisClient | None = None,
    ) -> None:
        self.redis = redis
        self.guard = guard
        self._acquire = redis.register_script(ACQUIRE)
        self._claim = redis.register_script(CLAIM)
        self._release = redis.register_script(RELEASE)
        control = control or redis
        self._extend = control.register_script(EXTEND)

    @classmethod
    def of(cls, redis: RedisClient) -> LockCommands:
        """The commands for locks on a client of the user's own (unguarded)."""
        found = cls._by_client.get(redis)
        if found is None:
            found = cls._by_client[redis] = cls(redis)
        return found

    async def acquire(self, lock: str, fence: str, token: str, ms: int, fence_ms: int) -> Any:
        return await self.guard(self._acquire, keys=[lock, fence], args=[token, ms, fence_ms])

    async def claim(
        self, value: str, lock: str, fence: str, token: str, ms: int, unreadable: bytes
    ) -> Any:
        args = [token, ms, FENCE_TTL_MS, unreadable]
        return await self.guard(self._claim, keys=[value, lock, fence], args=args)

    async def release(self, lock: str, token: str, channel: str, message: str) -> bool:
        args = [token, channel, message]
        return bool(await self.guard(self._release, keys=[lock], args=args))

    async def extend(self, lock: str, token: str, ms: int) -> bool:
        return bool(await self.guard(self._extend, keys=[lock], args=[token, ms]))


# --- what coroutines send in one event-loop tick travels together ------------------------------


class _TickBatcher:
    """Collects what coroutines send during one event-loop tick and sends it together.

    A Python client spends far more time per command than Redis does (parsing, the event loop,
    the pool): with fifty coroutines busy, the client, not the server, is the bottleneck. So a
    request that arrives while another one is on its way waits for the end of the current tick
    and goes out with the others (DataLoader's trick, ioredis's auto-pipelining): one round trip,
    one reply to parse. A request that finds nothing else in flight goes out at once, so a lone
    caller pays nothing for batching. Each caller gets its own answer, or its own error (the
    batch's, if the batch as a whole failed); a caller that is cancelled leaves the batch to the
    others. A batch holds at most ``max_batch`` requests; more wait for the next round.
    """

    def __init__(self, guard: Callable[..., Awaitable[Any]], max_batch: int) -> None:
        self._guard = guard
        self._max = max_batch
        self._queue: list[tuple[Any, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._sending = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """How many sends carried more than one request (how much batching helped)."""

    async def submit(self, request: Any) -> Any:
        """Send ``request`` with whatever else this tick brings; its own answer or error."""
        if not self._sending and not self._queue:
            self._sending += 1  # alone: send now; whoever comes meanwhile is batched
            try:
                return await self._send_one(request)
            finally:
                self._sending -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((request, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), self._max):
            task = loop.create_task(self._send_batch(queue[start : start + self._max]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_batch(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        self._sending += 1
        self.batches += len(batch) > 1
        try:
            answers = await self._send_many([request for request, _future in batch])
        except BaseException as exc:  # the batch as a whole failed: every caller hears it
            for _request, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_request, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)
        finally:
            self._sending -= 1

    async def _send_one(self, request: Any) -> Any:
        raise NotImplementedError

    async def _send_many(self, requests: list[Any]) -> list[Any]:
        """One answer (or exception) per request, in order."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Let the batches on their way finish."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class ReadBatcher(_TickBatcher):
    """Reads of value keys (with their fences) in one tick become one MGET (on a Redis Cluster,
    one per hash slot); the same key read twice in a batch is read once. Where it can, it sends
    them on a pipelined connection of its own (:mod:`cachelab.wire`), not through redis-py."""

    def __init__(self, redis: RedisClient, guard: Guard, *, cluster: bool = False) -> None:
        super().__init__(guard, max_batch=256)
        self.channel = None if cluster else Channel.of(redis)
        if self.channel is not None:
            self._mget: Callable[..., Awaitable[Any]] = partial(self.channel.call, "MGET")
        else:
            self._mget = redis.mget_nonatomic if cluster and is_cluster(redis) else redis.mget

    async def _send_one(self, value: str) -> tuple[Any, Any]:
        raw, fence = await self._guard(self._mget, value, value + ":fence")
        return raw, fence

    async def _send_many(self, values: list[str]) -> list[tuple[Any, Any]]:
        keys: list[str] = []
        where: dict[str, int] = {}
        for value in values:
            if value not in where:
                where[value] = len(keys)
                keys += (value, value + ":fence")
        reply = await self._guard(self._mget, *keys)
        return [(reply[where[v]], reply[where[v] + 1]) for v in values]


class ScriptBatcher(_TickBatcher):
    """Script calls (fills, writes, leases) in one tick become one pipeline of EVALSHAs. Order
    is kept: Redis runs them as they were issued. A script the server has forgotten (NOSCRIPT,
    after a restart or SCRIPT FLUSH) is sent again on its own, which loads it."""

    def __init__(self, redis: RedisClient, guard: Guard) -> None:
        super().__init__(guard, max_batch=128)
        self._redis = redis
        self._translate = guard.translate

    async def _send_one(self, request: tuple[Any, list[str], list[Any]]) -> Any:
        script, keys, args = request
        return await self._guard(script, keys=keys, args=args)

    async def _send_many(self, requests: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args in requests:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies = await self._guard(pipe.execute, raise_on_error=False)
        answers: list[Any] = []
        for request, reply in zip(requests, replies, strict=True):
            if isinstance(reply, redis_errors.NoScriptError):
                try:
                    reply = await self._send_one(request)
                except Exception as exc:
                    reply = exc
            elif isinstance(reply, Exception):
                reply = self._translate(reply)
            answers.append(reply)
        return answers


# --- the cache's store --------------------------------------------------------------------------


class Read(NamedTuple):
    """One read of a key: its entry (None when missing or unreadable) and its fence.

    ``unreadable`` holds the stored bytes when they did not decode (corrupt, foreign, forged):
    the lock and lease scripts are told to look past exactly those bytes.
    """

    entry: Entry | None
    fence: int
    unreadable: bytes = b""


@dataclass(frozen=True, slots=True)
class Announce:
    """How a write tells other processes about itself, sent in the write's own script:
    a PUBLISH of ``message`` on ``channel``, or an XADD of the key to ``stream``."""

    channel: str = ""
    message: str = ""
    stream: str | None = None
    maxlen: int = 0
    sender: str = ""


class RedisStore:
    """One cache's commands and scripts on one Redis client (see the module docstring)."""

    def __init__(
        self,
        redis: RedisClient,
        keys: KeySpace,
        codec: Codec,
        *,
        breaker: CircuitBreaker | None,
        stats: Stats,
        batching: bool = True,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.codec = codec
        self.stats = stats
        self.guard = Guard(redis, keys.namespace, breaker, stats)
        self.cluster = is_cluster(redis)
        self.reads = ReadBatcher(redis, self.guard, cluster=self.cluster) if batching else None
        # redis-py's cluster pipeline does not carry EVALSHA across slots: scripts go one by one
        self.scripts = ScriptBatcher(redis, self.guard) if batching and not self.cluster else None
        self._fill = redis.register_script(FILL)
        self._write = redis.register_script(WRITE)
        self._lease = redis.register_script(LEASE)
        self._give_back = redis.register_script(GIVE_BACK)
        self._fill_and_release = redis.register_script(FILL_AND_RELEASE)
        self._control: RedisClient | None = None
        self._locks: LockCommands | None = None

    @property
    def locks(self) -> LockCommands:
        """Lock commands for this cache's keys, extended over a connection of their own."""
        if self._locks is None:
            self._control = clone_client(
                self.redis, max_connections=1, client_name=f"cachelab-keepalive-{id(self):x}"
            )
            self._locks = LockCommands(self.redis, self.guard, self._control)
        return self._locks

    async def aclose(self) -> None:
        """Let batches on their way finish and close the keep-alive connection (the cache's
        client stays open)."""
        for batcher in (self.reads, self.scripts):
            if batcher is not None:
                await batcher.aclose()
        control, self._control, self._locks = self._control, None, None
        if control is not None:
            await control.aclose()

    # --- reads ------------------------------------------------------------------------------

    async def read(self, key: str) -> Read:
        """The key's entry and fence, in one round trip (MGET: both share a hash slot), batched
        with the reads other coroutines issue in the same tick."""
        value = self.keys.value(key)
        if self.reads is not None:
            raw, fence = await self.reads.submit(value)
        else:
            raw, fence = await self.guard(self.redis.mget, value, value + ":fence")
        return self._read(raw, fence)

    def _read(self, raw: bytes | None, fence: bytes | None) -> Read:
        number = _fence(fence)
        if raw is None:
            return Read(None, number)
        entry = self.codec.decode(raw)
        if entry is None:
            self.stats.corrupt += 1
            return Read(None, number, raw)
        return Read(entry, number)

    async def _script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self.scripts is not None:
            return await self.scripts.submit((script, keys, args))
        return await self.guard(script, keys=keys, args=args)

    def decode(self, raw: bytes) -> Entry | None:
        """An entry that arrived some other way (a lock holder's message); None if unreadable."""
        entry = self.codec.decode(raw)
        if entry is None:
            self.stats.corrupt += 1
        return entry

    async def ttl_of(self, key: str) -> float | None:
        ms = await self.guard(self.redis.pttl, self.keys.value(key))
        return ms / 1000 if ms >= 0 else None

    # --- fills ------------------------------------------------------------------------------

    async def fill(self, key: str, packed: Packed, token: int | None) -> bool:
        """Store a loaded value if the key's fence still holds ``token`` (None: unchecked, for
        teaching); count a refusal."""
        value = self.keys.value(key)
        keys = [value, value + ":fence", value + ":lease"]
        args = [packed.data, packed.px, "" if token is None else token]
        stored = await self._script(self._fill, keys, args)
        if not stored:
            self.stats.rejected += 1
        return bool(stored)

    async def fill_and_release(
        self, key: str, packed: Packed, token: int | None, lock: str, lock_token: str
    ) -> bool:
        """The lock holder's fill, release and announcement, in one script. ``token`` None
        stores unfenced (for teaching what the fence prevents)."""
        value = self.keys.value(key)
        keys = [value, value + ":fence", value + ":lease", lock]
        args = [packed.data, packed.px, "" if token is None else token, lock_token]
        args.append(value + ":filled")
        stored = await self._script(self._fill_and_release, keys, args)
        if not stored:
            self.stats.rejected += 1
        return bool(stored)

    async def lease(
        self, key: str, lease_ms: int, *, unreadable: bytes = b"", refresh: bool = False
    ) -> tuple[int, Any, Any]:
        """One LEASE: (1, value) | (2, stale value or b"", lease pttl) | (3, token)."""
        value = self.keys.value(key)
        keys = [value, value + ":fence", value + ":lease", value + ":stale"]
        args = [lease_ms, FENCE_TTL_MS, unreadable, "1" if refresh else ""]
        reply = await self._script(self._lease, keys, args)
        return int(reply[0]), reply[1], reply[2] if len(reply) > 2 else None

    async def give_back(self, key: str, token: int) -> None:
        """A failed lease holder returns its lease, so others need not wait out its TTL."""
        await self._script(self._give_back, [self.keys.helper(key, "lease")], [token])

    # --- writes -----------------------------------------------------------------------------

    async def write(
        self,
        key: str,
        packed: Packed | None,
        *,
        stale_ms: int = 0,
        announce: Announce | None = None,
    ) -> tuple[int, int]:
        """Store (``packed``) or delete (None) ``key``, move its fence, revoke its lease and send
        ``announce`` in the same script. Returns (values changed, the new fence)."""
        value = self.keys.value(key)
        keys = [value, value + ":fence", value + ":lease", value + ":stale"]
        data, px = (packed.data, packed.px) if packed is not None else (b"", 0)
        args: list[Any] = [data, px, FENCE_TTL_MS, stale_ms, "", "", 0, key, ""]
        xadd_after: Announce | None = None  # an XADD that cannot be in the script
        if announce is not None:
            args[4], args[5] = announce.channel, announce.message
            if announce.stream is not None:
                if self.cluster:  # another slot: cannot be in this script
                    xadd_after = announce
                else:
                    keys.append(announce.stream)
                    args[6], args[8] = announce.maxlen, announce.sender
        changed, fence = await self._script(self._write, keys, args)
        if xadd_after is not None:
            await self.guard(
                self.redis.xadd,
                xadd_after.stream,
                {"k": key, "s": xadd_after.sender},
                maxlen=xadd_after.maxlen,
                approximate=True,
            )
        return int(changed), int(fence)

    # --- housekeeping -----------------------------------------------------------------------

    async def scan(self) -> AsyncIterator[bytes]:
        """Every Redis key of this namespace (values and helpers), by SCAN, never KEYS."""
        async for rkey in self.redis.scan_iter(match=self.keys.pattern(), count=500):
            yield cast(bytes, rkey)  # cachelab's clients do not decode replies

    async def unlink(self, keys: list[bytes | str]) -> None:
        if keys:
            await self.redis.unlink(*keys)


def _fence(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        return int(raw)
    except ValueError:  # not written by cachelab: the next write repairs it
        return -1
