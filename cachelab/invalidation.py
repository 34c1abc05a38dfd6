"""Keeping near caches (L1) true: telling every process which keys changed.

Three invalidators, one interface (:class:`Invalidator`):

- :class:`PubSubInvalidator`: writers PUBLISH the key on the namespace's channel; every process
  listens through its one shared subscriber connection. Pub/sub is at-most-once: messages sent
  while a subscriber is disconnected are gone, so when its connection drops the L1 is flushed.
- :class:`StreamInvalidator`: writers XADD the key to the namespace's stream (trimmed with
  ``MAXLEN ~ N``); every process reads it with XREAD and remembers the last id it applied, so after
  a disconnect it *replays* what it missed instead of flushing. If the stream was trimmed past
  that id, it cannot know what it missed, and flushes (and says so in its metrics).
- :class:`TrackingInvalidator`: Redis itself says which keys changed (``CLIENT TRACKING ... BCAST
  PREFIX``, redirected to a subscriber connection), so writers need not publish at all, and
  writes made by programs that know nothing of cachelab invalidate too.

A :class:`~cachelab.Cache` with ``near=NearCache(...)`` and ``invalidation="pubsub"`` (or
``"streams"``, ``"tracking"``, or an instance) starts its invalidator on first use and stops it in
``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .cluster import each_node, is_cluster
from .connection import clone_client, portable_spec
from .errors import ConfigurationError
from .subscriber import LOST, RESUMED, Subscriber
from .tasks import cancel_all

if TYPE_CHECKING:
    from .cache import Cache

__all__ = [
    "INVALIDATORS",
    "InvalidationStats",
    "Invalidator",
    "PubSubInvalidator",
    "StreamInvalidator",
    "TrackingInvalidator",
    "invalidator",
    "kill_connections",
]

_DROPPED = (RedisConnectionError, RedisTimeoutError, OSError)


@dataclass(slots=True)
class InvalidationStats:
    """What an invalidator saw: ``received`` messages, keys ``applied`` to the L1, whole-L1
    ``flushes`` (after lost messages), ``reconnects``, entries ``replayed`` after a reconnect
    (streams), and ``trimmed`` (streams: the stream no longer reached back to the last id)."""

    sent: int = 0
    received: int = 0
    applied: int = 0
    flushes: int = 0
    reconnects: int = 0
    replayed: int = 0
    trimmed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Invalidator:
    """Base class: start listening for a cache, announce its writes, stop."""

    name = "none"

    def __init__(self) -> None:
        self.stats = InvalidationStats()
        self.sender = secrets.token_hex(6)  # lets a process ignore its own announcements
        self.cache: Cache | None = None
        self.resumed_at: float | None = None  # perf_counter() when it last got back after a drop
        self._task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, cache: Cache) -> None:
        """Begin listening; returns once no later write can be missed."""
        self.cache = cache

    async def announce(self, key: str) -> None:
        """Tell the other processes that ``key`` changed (called after the write)."""

    def connection_names(self) -> list[str]:
        """CLIENT LIST names of the connections that receive this invalidator's messages."""
        return []

    def keys(self, cache: Cache) -> list[str]:
        """Redis keys this invalidator keeps for ``cache`` (removed by ``cache.clear()``)."""
        return []

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_all([task])  # a reader cancelled only once could read on forever

    def _apply(self, key: str) -> None:
        """Another process changed ``key``: drop it from L1, and detach the reads and loads of it
        still in flight here (as a local write does), so that a lookup starting now does not join
        one that began before the write and receive, and keep in L1, the superseded value."""
        self.stats.applied += 1
        self.cache.near.invalidate(key)
        self.cache.policy.written(key)

    def _flush(self) -> None:
        self.stats.flushes += 1
        self.cache.near.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stats.as_dict()}>"


class PubSubInvalidator(Invalidator):
    """PUBLISH ``"<sender> <key>"`` on ``<namespace>:invalidations``; flush the L1 on reconnect.

    ``flush_on_reconnect=False`` skips the flush, for teaching only: it shows the stale reads
    that lost messages leave behind.
    """

    name = "pubsub"

    def __init__(self, *, flush_on_reconnect: bool = True) -> None:
        super().__init__()
        self.flush_on_reconnect = flush_on_reconnect
        self._ready: asyncio.Future | None = None

    def connection_names(self) -> list[str]:
        return [Subscriber.of(self.cache.redis).client_name] if self.cache else []

    def channel(self, cache: Cache) -> str:
        return f"{cache.namespace}:invalidations"

    async def start(self, cache: Cache) -> None:
        await super().start(cache)
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(), name="cachelab-pubsub-invalidator")
        await asyncio.shield(self._ready)

    async def _listen(self) -> None:
        try:
            async with Subscriber.of(self.cache.redis).listen(self.channel(self.cache)) as inbox:
                self._ready.set_result(None)
                while True:
                    message = await inbox.get()
                    if message is LOST or message is RESUMED:
                        # Lost: what is published from now until we are back is gone for good,
                        # and L1 fills made meanwhile may miss it too, so flush on both edges.
                        if message is LOST:
                            self.stats.reconnects += 1
                        else:
                            self.resumed_at = time.perf_counter()
                        if self.flush_on_reconnect:
                            self._flush()
                        continue
                    self.stats.received += 1
                    sender, _, key = message.decode().partition(" ")
                    if sender != self.sender:
                        self._apply(key)
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    async def announce(self, key: str) -> None:
        self.stats.sent += 1
        await self.cache.redis.publish(self.channel(self.cache), f"{self.sender} {key}")


class StreamInvalidator(Invalidator):
    """XADD to ``<namespace>:invalidation-log`` (``MAXLEN ~ maxlen``); replay after reconnects."""

    name = "streams"

    def __init__(self, *, maxlen: int = 10_000, block_ms: int = 1000) -> None:
        super().__init__()
        if not isinstance(maxlen, int) or maxlen < 1:
            raise ConfigurationError(f"maxlen must be a positive int, got {maxlen!r}")
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.last_id = "0-0"
        self._reader: aioredis.Redis | None = None

    def stream(self, cache: Cache) -> str:
        return f"{cache.namespace}:invalidation-log"

    def connection_names(self) -> list[str]:
        return [f"cachelab-stream-reader-{self.sender}"]

    def keys(self, cache: Cache) -> list[str]:
        return [self.stream(cache)]

    async def start(self, cache: Cache) -> None:
        await super().start(cache)
        newest = await cache.redis.xrevrange(self.stream(cache), count=1)
        self.last_id = newest[0][0].decode() if newest else "0-0"  # start after what exists
        self._reader = clone_client(  # XREAD BLOCK holds its connection
            cache.redis, max_connections=1, client_name=f"cachelab-stream-reader-{self.sender}"
        )
        self._task = asyncio.create_task(self._follow(), name="cachelab-stream-invalidator")

    async def aclose(self) -> None:
        await super().aclose()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def _follow(self) -> None:
        stream, backoff, reconnecting = self.stream(self.cache), 0.05, False
        while True:
            try:
                if reconnecting:
                    await self._check_trimmed(stream)
                replies = await self._reader.xread({stream: self.last_id}, block=self.block_ms)
                if reconnecting:
                    self.resumed_at = time.perf_counter()
            except _DROPPED:
                self.stats.reconnects += 1
                reconnecting = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _name, entries in replies or ():
                for entry_id, fields in entries:
                    self.last_id = entry_id.decode()
                    self.stats.received += 1
                    if reconnecting:
                        self.stats.replayed += 1
                    if fields.get(b"s", b"").decode() != self.sender:
                        self._apply(fields[b"k"].decode())
            backoff, reconnecting = 0.05, False

    async def _check_trimmed(self, stream: str) -> None:
        """After a disconnect: did trimming remove entries we had not applied yet? Then flush.

        Trimming removes the oldest entries first, so if the last entry we applied is still in
        the stream, nothing after it was removed, and replaying from it is complete. If it is
        gone, entries after it may be gone too: flush. (Redis 7's ``max-deleted-entry-id`` would
        be exact, but XTRIM and XADD MAXLEN do not update it on 7.0, only XDEL does.) Before any
        entry was applied, a stream that ever held more entries than it holds now was trimmed.
        """
        if self.last_id != "0-0":
            still_there = await self._reader.xrange(stream, min=self.last_id, max=self.last_id)
            lost = not still_there
        else:
            try:
                info = await self._reader.xinfo_stream(stream)
            except ResponseError:  # no such stream (yet): nothing was written, nothing missed
                return
            added = info.get("entries-added")  # Redis 7 counts every entry ever added;
            lost = added is None or int(added) > int(info["length"])  # 6.2 cannot tell: flush
        if lost:
            self.stats.trimmed += 1
            self._flush()

    async def announce(self, key: str) -> None:
        self.stats.sent += 1
        await self.cache.redis.xadd(
            self.stream(self.cache),
            {"k": key, "s": self.sender},
            maxlen=self.maxlen,
            approximate=True,
        )


def _id(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id as a comparable (milliseconds, sequence) pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class TrackingInvalidator(Invalidator):
    """Redis tells us: ``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <namespace>:``.

    One dedicated RESP2 connection registers tracking for the namespace's prefix, redirected to
    itself, and then subscribes to ``__redis__:invalidate``. Redis then sends the name of every
    key under the prefix that is written, deleted or expires, by anyone. A null message means
    "flush everything"; a lost connection flushes the L1 too. (Registering on a second connection
    would work until that idle connection is dropped: Redis then stops tracking for it and the
    listener never hears of it.)
    """

    name = "tracking"

    def __init__(self) -> None:
        super().__init__()
        self._clients: list[aioredis.Redis] = []
        self._ready: asyncio.Future | None = None

    async def start(self, cache: Cache) -> None:
        await super().start(cache)
        self._ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._listen(), name="cachelab-tracking-invalidator")
        await asyncio.shield(self._ready)

    def connection_names(self) -> list[str]:
        return [f"cachelab-tracking-{self.sender}"]

    def _resp2_client(self, client_name: str | None = None) -> aioredis.Redis:
        """A one-connection RESP2 client (the redirect pattern needs RESP2 pub/sub)."""
        if is_cluster(self.cache.redis):
            raise ConfigurationError(
                "CLIENT TRACKING does not span a Redis Cluster: each master reports only the keys "
                "it holds, to connections made to it, so one tracking connection would miss the "
                "other masters' writes. Use invalidation='pubsub' or 'streams' on a cluster"
            )
        if "server" in self.cache.redis.connection_pool.connection_kwargs:
            raise ConfigurationError(
                "CLIENT TRACKING needs a real Redis server (6.0 or newer); fakeredis does not "
                "implement it: use invalidation='pubsub' or 'streams' instead"
            )
        spec = portable_spec(self.cache.redis)
        kwargs = {**spec.kwargs, "protocol": 2}
        if client_name is not None:
            kwargs["client_name"] = client_name
        pool = aioredis.ConnectionPool(
            connection_class=spec.connection_class, max_connections=1, **kwargs
        )
        client = aioredis.Redis(connection_pool=pool)
        self._clients.append(client)
        return client

    async def _listen(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._subscribe_and_track()
            except ResponseError as exc:
                gone = "redirect" in str(exc).lower()  # our listener was cut while registering
                if self._ready.done() or gone:
                    await self._dropped(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                self._ready.set_exception(
                    ConfigurationError(
                        f"CLIENT TRACKING is not available on this server ({exc}); it needs a "
                        "real Redis 6.0 or newer (fakeredis does not implement it): use "
                        "invalidation='pubsub' or 'streams' instead"
                    )
                )
                return
            except ConfigurationError as exc:
                if not self._ready.done():
                    self._ready.set_exception(exc)
                return
            except _DROPPED:
                if not self._ready.done():
                    raise
                await self._dropped(backoff)
                backoff = min(backoff * 2, 2.0)
            except BaseException as exc:
                if self._ready is not None and not self._ready.done():
                    self._ready.set_exception(exc)
                raise

    async def _dropped(self, backoff: float) -> None:
        self.stats.reconnects += 1
        self._flush()  # invalidations sent while we were away are lost
        await self._close_clients()
        await asyncio.sleep(backoff)

    async def _subscribe_and_track(self) -> None:
        listener = self._resp2_client(self.connection_names()[0]).pubsub()
        try:
            await listener.connect()
            await listener.connection.send_command("CLIENT", "ID")
            client_id = int(await listener.connection.read_response())
            prefix = f"{self.cache.namespace}:"
            await listener.connection.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", prefix
            )
            await listener.connection.read_response()  # an error reply raises ResponseError
            await listener.subscribe("__redis__:invalidate")
            while True:
                message = await listener.get_message(timeout=None)
                if message is None or message["type"] == "subscribe":
                    if message is None:
                        continue
                    if not self._ready.done():
                        self._ready.set_result(None)
                    else:  # back after a drop: fills made while we were away may be stale
                        self._flush()
                        self.resumed_at = time.perf_counter()
                    continue
                self.stats.received += 1
                keys = message["data"]
                if keys is None:  # the server flushed its tracking table: flush ours
                    self._flush()
                    continue
                for raw in keys if isinstance(keys, list) else [keys]:
                    key = self.cache.key_of(raw.decode() if isinstance(raw, bytes) else raw)
                    if key is not None:
                        self._apply(key)
        finally:
            with contextlib.suppress(Exception):
                await listener.aclose()

    async def _close_clients(self) -> None:
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def aclose(self) -> None:
        await super().aclose()
        await self._close_clients()


INVALIDATORS: dict[str, type[Invalidator]] = {
    cls.name: cls for cls in (PubSubInvalidator, StreamInvalidator, TrackingInvalidator)
}


async def kill_connections(redis: aioredis.Redis, names: list[str]) -> int:
    """CLIENT KILL every connection whose name is in ``names``; returns how many were killed.

    Only the named connections: on a shared server, ``CLIENT KILL TYPE pubsub`` would also cut
    everybody else's subscribers. On a Redis Cluster every node is searched.
    """
    wanted, killed = set(names), 0
    for node in await each_node(redis) if is_cluster(redis) else [None]:
        on = {} if node is None else {"target_nodes": node}
        for client in await redis.client_list(**on):
            if client.get("name") in wanted:
                with contextlib.suppress(ResponseError):  # already gone
                    killed += int(await redis.client_kill_filter(_id=client["id"], **on))
    return killed


def invalidator(spec: str | Invalidator | None) -> Invalidator | None:
    """An invalidator for a name (``"pubsub"``, ``"streams"``, ``"tracking"``), or the instance."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Invalidator):
        return spec
    try:
        return INVALIDATORS[spec]()
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown invalidation {spec!r}; choose one of none, {', '.join(INVALIDATORS)} "
            "or pass an Invalidator"
        ) from None
