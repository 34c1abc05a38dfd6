"""Keeping near caches (L1) true: telling every process which keys changed.

Three invalidators, one interface (:class:`Invalidator`). A cache starts one with two callbacks,
``on_invalidate(key)`` and ``on_flush()``, and asks it for the :class:`~cachelab.store.Announce`
that its writes carry (sent in the write's own script):

- :class:`PubSubInvalidator`: a write PUBLISHes the key on the namespace's channel; every process
  listens through its one shared subscriber connection. Pub/sub is at-most-once: messages sent
  while a subscriber is disconnected are gone, so when its connection drops the L1 is flushed
  (and again once it is back: fills made meanwhile may have missed a message too).
- :class:`StreamInvalidator`: a write XADDs the key to the namespace's stream (``MAXLEN ~ N``);
  every process reads it with XREAD and remembers the last id it applied, so after a disconnect
  it *replays* what it missed instead of flushing. If the stream was trimmed past that id, it
  cannot know what it missed, and flushes.
- :class:`TrackingInvalidator`: Redis itself says which keys changed (``CLIENT TRACKING ... BCAST
  PREFIX``, redirected to the listening connection), so writers announce nothing, and writes by
  programs that know nothing of cachelab invalidate too.

Each listens on a connection that never retries silently and has no read timeout (see
:func:`~cachelab.connection.listener_client`), so a drop is always noticed. A listener never
dies of a malformed message (it is counted and skipped); if its task ends anyway, ``running``
turns False and the cache flushes its L1 and starts it again on its next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError

from ..cluster import RedisClient, each_node, is_cluster
from ..connection import listener_client, user_of
from ..errors import AuthenticationError, ConfigurationError
from ..keys import KeySpace
from ..store import Announce
from ..subscriber import LOST, RESUMED, Inbox, Subscriber
from ..tasks import cancel_all

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub
    from redis.asyncio.connection import AbstractConnection

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

OnInvalidate = Callable[[str], None]
OnFlush = Callable[[], None]

_LISTEN_TIMEOUT = 5.0
"""Seconds the server gets to confirm a tracking listener's subscription."""


@dataclass(slots=True)
class InvalidationStats:
    """What an invalidator saw: ``received`` messages, keys ``applied`` to the L1, whole-L1
    ``flushes`` (after lost messages), ``reconnects``, entries ``replayed`` after a reconnect
    (streams), ``trimmed`` (streams: the stream no longer reached back to the last id),
    ``malformed`` messages skipped and ``restarts`` after the listener had died."""

    sent: int = 0
    received: int = 0
    applied: int = 0
    flushes: int = 0
    reconnects: int = 0
    replayed: int = 0
    trimmed: int = 0
    malformed: int = 0
    restarts: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Invalidator:
    """Base class: listen for a namespace's changes, and say how writes announce themselves."""

    name: ClassVar[str] = "none"

    def __init__(self) -> None:
        self.stats = InvalidationStats()
        self.sender = secrets.token_hex(6)  # lets a process ignore its own announcements
        self.resumed_at: float | None = None  # perf_counter() when it last got back after a drop
        self._task: asyncio.Task[None] | None = None
        self._on_invalidate: OnInvalidate = _nothing
        self._on_flush: Callable[[], Any] = _nothing

    @property
    def running(self) -> bool:
        """True while the listening task is alive."""
        return self._task is not None and not self._task.done()

    async def start(
        self,
        redis: RedisClient,
        keys: KeySpace,
        on_invalidate: OnInvalidate,
        on_flush: OnFlush,
    ) -> None:
        """Begin listening; returns once no later write can be missed (raises if it cannot)."""
        self._on_invalidate, self._on_flush = on_invalidate, on_flush

    def announcement(self, keys: KeySpace, key: str) -> Announce | None:
        """How a write of ``key`` tells the other processes (None: it need not)."""
        return None

    def connection_names(self) -> list[str]:
        """CLIENT LIST names of the connections that receive this invalidator's messages."""
        return []

    def redis_keys(self, keys: KeySpace) -> list[str]:
        """Redis keys this invalidator keeps for a namespace (removed by ``cache.clear()``)."""
        return []

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_all([task])  # a reader cancelled only once could read on forever

    def _apply(self, key: str) -> None:
        self.stats.applied += 1
        self._on_invalidate(key)

    def _flush(self) -> None:
        self.stats.flushes += 1
        self._on_flush()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.stats.as_dict()}>"


def _nothing(*_args: object) -> None:
    return None


class PubSubInvalidator(Invalidator):
    """PUBLISH ``"<sender> <key>"`` on ``<namespace>:invalidations``; flush the L1 on reconnect.

    ``flush_on_reconnect=False`` skips the flush, for teaching only: it shows the stale reads
    that lost messages leave behind.
    """

    name = "pubsub"

    def __init__(self, *, flush_on_reconnect: bool = True) -> None:
        super().__init__()
        self.flush_on_reconnect = flush_on_reconnect
        self._subscriber: Subscriber | None = None

    def connection_names(self) -> list[str]:
        return [self._subscriber.client_name] if self._subscriber is not None else []

    def announcement(self, keys: KeySpace, key: str) -> Announce:
        self.stats.sent += 1
        return Announce(channel=keys.channel, message=f"{self.sender} {key}")

    async def start(
        self,
        redis: RedisClient,
        keys: KeySpace,
        on_invalidate: OnInvalidate,
        on_flush: OnFlush,
    ) -> None:
        await super().start(redis, keys, on_invalidate, on_flush)
        self._subscriber = Subscriber.of(redis)
        inbox = await self._subscriber.subscribe(keys.channel)
        self._task = asyncio.create_task(self._listen(inbox), name="cachelab-pubsub-invalidator")

    async def _listen(self, inbox: Inbox) -> None:
        try:
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
                sender, key = _parse(message)
                if key is None:
                    self.stats.malformed += 1
                elif sender != self.sender:
                    self._apply(key)
        finally:
            if self._subscriber is not None:
                await asyncio.shield(self._subscriber.unsubscribe(inbox))

    async def aclose(self) -> None:
        await super().aclose()
        if self._subscriber is not None:
            await self._subscriber.settle()  # no connection left open once the cache is closed


def _parse(message: object) -> tuple[str, str | None]:
    """``(sender, key)`` of a pub/sub invalidation; key None if the message is not one."""
    if not isinstance(message, bytes):
        return "", None
    try:
        sender, _, key = message.decode().partition(" ")
    except UnicodeDecodeError:
        return "", None
    return sender, key or None


class StreamInvalidator(Invalidator):
    """XADD to ``<namespace>:invalidation-log`` (``MAXLEN ~ maxlen``); replay after reconnects."""

    name = "streams"

    def __init__(self, *, maxlen: int = 10_000, block_ms: int = 1000) -> None:
        super().__init__()
        for what, value in (("maxlen", maxlen), ("block_ms", block_ms)):
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"{what} must be a positive int, got {value!r}")
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.last_id = "0-0"
        self._reader: aioredis.Redis | None = None

    def announcement(self, keys: KeySpace, key: str) -> Announce:
        self.stats.sent += 1
        return Announce(stream=keys.stream, maxlen=self.maxlen, sender=self.sender)

    def connection_names(self) -> list[str]:
        return [f"cachelab-stream-reader-{self.sender}"]

    def redis_keys(self, keys: KeySpace) -> list[str]:
        return [keys.stream]

    async def start(
        self,
        redis: RedisClient,
        keys: KeySpace,
        on_invalidate: OnInvalidate,
        on_flush: OnFlush,
    ) -> None:
        await super().start(redis, keys, on_invalidate, on_flush)
        newest = await redis.xrevrange(keys.stream, count=1)
        # start after what exists (an id is bytes: cachelab's clients do not decode replies)
        self.last_id = cast(bytes, newest[0][0]).decode() if newest else "0-0"
        # RESP2 whatever the client speaks: XREAD's reply is read in that shape (RESP3 nests it
        # in a map)
        self._reader = listener_client(
            redis, self.connection_names()[0], key=keys.stream, protocol=2
        )
        await self._reader.ping()  # connected now: a first XREAD cannot fail unseen
        self._task = asyncio.create_task(
            self._follow(self._reader, keys.stream), name="cachelab-stream-invalidator"
        )

    async def aclose(self) -> None:
        await super().aclose()
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.aclose()

    async def _follow(self, reader: aioredis.Redis, stream: str) -> None:
        """Apply the stream's entries as they come, with ``reader`` (start()'s listener)."""
        backoff, reconnecting = 0.05, False
        while True:
            try:
                if reconnecting:
                    await self._check_trimmed(stream)
                # the RESP2 shape, [[stream, [(id, fields), ...]]], which the loop below reads
                replies = cast(
                    "list[list[Any]] | None",
                    await reader.xread({stream: self.last_id}, block=self.block_ms),
                )
                if reconnecting:
                    self.resumed_at = time.perf_counter()
            except Exception:  # a dropped connection (or anything else): reconnect and replay
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
                    self._entry(fields)
            backoff, reconnecting = 0.05, False

    def _entry(self, fields: dict[bytes, bytes]) -> None:
        try:
            key, sender = fields[b"k"].decode(), fields.get(b"s", b"").decode()
        except (KeyError, UnicodeDecodeError):
            self.stats.malformed += 1
            return
        if sender != self.sender:
            self._apply(key)

    async def _check_trimmed(self, stream: str) -> None:
        """After a disconnect: did trimming remove entries we had not applied yet? Then flush.

        Trimming removes the oldest entries first, so if the last entry we applied is still in
        the stream, nothing after it was removed, and replaying from it is complete. If it is
        gone, entries after it may be gone too: flush. (Redis 7's ``max-deleted-entry-id`` would
        be exact, but XTRIM and XADD MAXLEN do not update it on 7.0, only XDEL does.) Before any
        entry was applied, a stream that ever held more entries than it holds now was trimmed.
        """
        reader = self._reader
        if reader is None:  # closed: aclose() cancels the follower before it drops the reader
            return
        if self.last_id != "0-0":
            still_there = await reader.xrange(stream, min=self.last_id, max=self.last_id)
            lost = not still_there
        else:
            try:
                info = await reader.xinfo_stream(stream)
            except ResponseError:  # no such stream (yet): nothing was written, nothing missed
                return
            added = info.get("entries-added")  # Redis 7 counts every entry ever added;
            lost = added is None or int(added) > int(info["length"])  # 6.2 cannot tell: flush
        if lost:
            self.stats.trimmed += 1
            self._flush()


class TrackingInvalidator(Invalidator):
    """Redis tells us: ``CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <namespace>:{``.

    One dedicated RESP2 connection registers tracking for the namespace's values, redirected to
    itself, and then subscribes to ``__redis__:invalidate``. Redis then sends the name of every
    key under the prefix that is written, deleted or expires, by anyone. A null message means
    "flush everything"; a lost connection flushes the L1 too. (Registering on a second connection
    would work until that idle connection is dropped: Redis then stops tracking for it and the
    listener never hears of it.)
    """

    name = "tracking"

    def __init__(self) -> None:
        super().__init__()
        self._client: aioredis.Redis | None = None

    def connection_names(self) -> list[str]:
        return [f"cachelab-tracking-{self.sender}"]

    async def start(
        self,
        redis: RedisClient,
        keys: KeySpace,
        on_invalidate: OnInvalidate,
        on_flush: OnFlush,
    ) -> None:
        if is_cluster(redis):
            raise ConfigurationError(
                "CLIENT TRACKING does not span a Redis Cluster: each master reports only the "
                "keys it holds, to connections made to it, so one tracking connection would miss "
                "the other masters' writes. Use invalidation='pubsub' or 'streams' on a cluster"
            )
        if "server" in redis.connection_pool.connection_kwargs:
            raise ConfigurationError(
                "CLIENT TRACKING needs a real Redis server (6.0 or newer); fakeredis does not "
                "implement it: use invalidation='pubsub' or 'streams' instead"
            )
        await super().start(redis, keys, on_invalidate, on_flush)
        listener = await self._track(redis, keys)
        self._task = asyncio.create_task(
            self._listen(redis, keys, listener), name="cachelab-tracking-invalidator"
        )

    async def _track(self, redis: aioredis.Redis, keys: KeySpace) -> PubSub:
        """A listening connection with tracking registered and the subscription confirmed."""
        await self._close_client()
        self._client = listener_client(redis, self.connection_names()[0], protocol=2)
        listener = self._client.pubsub()
        try:
            await listener.connect()
            # connected: redis-py types PubSub.connection as None (an unannotated `= None`)
            connection = cast("AbstractConnection", listener.connection)
            await connection.send_command("CLIENT", "ID")
            client_id = int(await connection.read_response())
            await connection.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST", "PREFIX", keys.prefix
            )
            await connection.read_response()  # an error reply raises ResponseError
            await listener.subscribe("__redis__:invalidate")
            async with asyncio.timeout(_LISTEN_TIMEOUT):
                while (message := await listener.get_message(timeout=None)) is None or message[
                    "type"
                ] != "subscribe":
                    pass
        except NoPermissionError as exc:
            await listener.aclose()
            user = user_of(redis)
            raise AuthenticationError(
                f"Redis user {user!r} may not run what invalidation='tracking' needs ({exc}): "
                f"grant it with ACL SETUSER {user} +client|id +client|tracking +subscribe "
                "&__redis__:invalidate, or use invalidation='pubsub'"
            ) from None
        except ResponseError as exc:
            await listener.aclose()
            raise ConfigurationError(
                f"CLIENT TRACKING is not available on this server ({exc}); it needs a real "
                "Redis 6.0 or newer: use invalidation='pubsub' or 'streams' instead"
            ) from None
        except BaseException:
            await listener.aclose()
            raise
        return listener

    async def _listen(self, redis: aioredis.Redis, keys: KeySpace, listener: PubSub) -> None:
        try:
            while True:
                try:
                    while True:
                        message = await listener.get_message(timeout=None)
                        if message is not None and message["type"] == "message":
                            self._message(keys, message["data"])
                except Exception:  # dropped (or anything else): invalidations are being lost
                    self.stats.reconnects += 1
                    self._flush()
                with contextlib.suppress(Exception):
                    await listener.aclose()
                listener = await self._track_again(redis, keys)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(listener.aclose())

    async def _track_again(self, redis: aioredis.Redis, keys: KeySpace) -> PubSub:
        """Register again, backing off while Redis is away; what changed meanwhile is unknown,
        so flush once back."""
        backoff = 0.05
        while True:
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
            try:
                listener = await self._track(redis, keys)
            except Exception:
                continue
            self._flush()
            self.resumed_at = time.perf_counter()
            return listener

    def _message(self, keys: KeySpace, data: Any) -> None:
        self.stats.received += 1
        if data is None:  # the server flushed its tracking table: flush ours
            self._flush()
            return
        for raw in data if isinstance(data, list) else [data]:
            key = keys.key_of(raw)
            if key is not None:
                self._apply(key)

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()

    async def aclose(self) -> None:
        await super().aclose()
        await self._close_client()


INVALIDATORS: dict[str, type[Invalidator]] = {
    cls.name: cls for cls in (PubSubInvalidator, StreamInvalidator, TrackingInvalidator)
}


async def kill_connections(redis: RedisClient, names: list[str]) -> int:
    """CLIENT KILL every connection whose name is in ``names``; returns how many were killed.

    Only the named connections: on a shared server, ``CLIENT KILL TYPE pubsub`` would also cut
    everybody else's subscribers. On a Redis Cluster every node is searched.
    """
    wanted, killed = set(names), 0
    for node in await each_node(redis) if is_cluster(redis) else [None]:
        on: dict[str, Any] = {} if node is None else {"target_nodes": node}
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
