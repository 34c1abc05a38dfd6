"""One pub/sub connection per Redis client, shared by everything in the process that listens.

A subscribed Redis connection can do nothing but (un)subscribe and receive, so opening one per
waiter would cost a connection per waiting coroutine. :class:`Subscriber` multiplexes: any number
of ``listen(channel)`` blocks share one connection and one reader task. The reader runs only while
someone listens; when the last listener leaves, it is cancelled and the connection closed, so an
idle process holds no task and no extra connection.

Pub/sub is at-most-once: while the connection is down, messages are lost. The connection never
retries silently (see :func:`~cachelab.connection.listener_client`): when the reader loses it, it
puts :data:`LOST` into every inbox, so listeners can re-check whatever state the lost messages
were about, then reconnects (redis-py re-subscribes) and announces :data:`RESUMED` per channel
once the server confirms it. The reader never ends on an error: whatever goes wrong reads as a
lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import listener_client, permission_problem
from .errors import AuthenticationError
from .tasks import cancel_all

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

    from .cluster import RedisClient

__all__ = ["LOST", "RESUMED", "Inbox", "Subscriber"]

LOST = object()
"""Put into every inbox when the connection dropped: messages may have been missed."""

RESUMED = object()
"""Put into a channel's inboxes when, after a drop, the server confirmed its subscription again:
from here on nothing is missed (what happened in between must be re-checked)."""

_SUBSCRIBE_TIMEOUT = 5.0


class Inbox:
    """Messages for one ``listen`` block, in arrival order."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    async def get(self, timeout: float | None = None) -> object | None:
        """The next message payload (bytes), :data:`LOST`, or None when ``timeout`` expires."""
        try:
            async with asyncio.timeout(timeout):
                return await self._queue.get()
        except TimeoutError:
            return None

    def get_nowait(self) -> object | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def _put(self, item: object) -> None:
        self._queue.put_nowait(item)


def _refused(exc: ResponseError, client: RedisClient | None) -> Exception:
    """An ACL refusal of our SUBSCRIBE as one line naming the grant (it wakes lock waiters and
    carries invalidations); any other error reply as it is."""
    problem = permission_problem(exc, client) if client is not None else None
    return AuthenticationError(problem) if problem is not None else exc


class Subscriber:
    """Shared pub/sub for one Redis client; get it with :meth:`of`."""

    IDLE_GRACE_S = 1.0
    """How long a channel stays subscribed (and the connection open) after its last listener
    left: a stampede's waiters come and go together, and the next one comes soon."""

    _by_client: ClassVar[weakref.WeakKeyDictionary[RedisClient, Subscriber]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, redis: RedisClient) -> None:
        # weak: _by_client's values must not keep their keys (the clients) alive
        self._redis = weakref.ref(redis)
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task | None = None
        self._inboxes: dict[bytes, set[Inbox]] = {}
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}
        self._state = asyncio.Lock()
        self.messages = 0
        self.reconnects = 0
        self._resubscribing: set[bytes] = set()
        self.client_name = f"cachelab-subscriber-{secrets.token_hex(4)}"
        self._retiring: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, redis: RedisClient) -> Subscriber:
        """The process-wide subscriber of ``redis`` (created on first use)."""
        found = cls._by_client.get(redis)
        if found is None:
            found = cls._by_client[redis] = cls(redis)
        return found

    @property
    def redis(self) -> RedisClient | None:
        """The client this subscriber belongs to (None once it was garbage-collected)."""
        return self._redis()

    @property
    def channels(self) -> int:
        return len(self._inboxes)

    @contextlib.asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[Inbox]:
        """Subscribe (confirmed by the server on entry) and yield an :class:`Inbox`."""
        inbox = await self.subscribe(channel)
        try:
            yield inbox
        finally:
            await asyncio.shield(self.unsubscribe(inbox))

    async def subscribe(self, channel: str) -> Inbox:
        """An inbox for ``channel``, once the server confirmed the subscription; pair it with
        :meth:`unsubscribe` (or use :meth:`listen`)."""
        inbox = Inbox(channel)
        await self._add(channel.encode(), inbox)
        return inbox

    async def unsubscribe(self, inbox: Inbox) -> None:
        """Stop delivering to ``inbox``; the last listener of a channel unsubscribes it."""
        await self._remove(inbox.channel.encode(), inbox)

    async def _add(self, channel: bytes, inbox: Inbox) -> None:
        async with self._state:
            listeners = self._inboxes.setdefault(channel, set())
            listeners.add(inbox)
            if len(listeners) > 1:
                return
            confirmed = self._confirmed.get(channel)
            if confirmed is not None and confirmed.done() and self._pubsub is not None:
                return  # still subscribed (its last listener left only a moment ago)
            pubsub = self._pubsub
            if pubsub is None:
                redis = self.redis
                if redis is None:  # whoever subscribes holds the client: never
                    raise ReferenceError("the Redis client of this Subscriber was collected")
                pubsub = self._pubsub = listener_client(redis, self.client_name).pubsub()
            confirmed = self._confirmed[channel] = asyncio.get_running_loop().create_future()
            try:
                await pubsub.subscribe(channel)
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(
                        self._read(pubsub), name="cachelab-subscriber"
                    )
                async with asyncio.timeout(_SUBSCRIBE_TIMEOUT):
                    await asyncio.shield(confirmed)
            except BaseException:
                listeners.discard(inbox)
                if not listeners:
                    del self._inboxes[channel]
                self._confirmed.pop(channel, None)
                await self._close_if_idle()
                raise

    async def _remove(self, channel: bytes, inbox: Inbox) -> None:
        """Stop delivering to ``inbox`` at once; the channel is unsubscribed (and the connection
        closed, when nothing listens any more) later, by :meth:`_retire`, off the caller's path:
        a lock waiter answers its callers first, and the next stampede finds the connection open.
        """
        listeners = self._inboxes.get(channel)
        if listeners is None:
            return
        listeners.discard(inbox)
        if listeners:
            return
        del self._inboxes[channel]
        if self._retiring is None or self._retiring.done():
            self._retiring = asyncio.get_running_loop().create_task(
                self._retire(), name="cachelab-subscriber-retire"
            )

    async def _retire(self, grace: float | None = None) -> None:
        """After ``grace`` (default ``IDLE_GRACE_S``), unsubscribe the channels nobody listens
        to, and close the connection if none is left."""
        await asyncio.sleep(self.IDLE_GRACE_S if grace is None else grace)
        async with self._state:
            idle = [channel for channel in self._confirmed if channel not in self._inboxes]
            for channel in idle:
                del self._confirmed[channel]
            if self._inboxes and idle and self._pubsub is not None:
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    await self._pubsub.unsubscribe(*idle)
            await self._close_if_idle()

    async def settle(self) -> None:
        """Unsubscribe now the channels nobody listens to, and close the connection if none is
        left, without waiting out the grace (a cache closing its invalidator, a test)."""
        retiring, self._retiring = self._retiring, None
        if retiring is not None and not retiring.done():
            await cancel_all([retiring])
        await self._retire(0)

    async def _close_if_idle(self) -> None:
        if self._inboxes:
            return
        reader, self._reader = self._reader, None
        if reader is not None:
            await cancel_all([reader])  # a reader left running would hold its connection
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            await pubsub.aclose()
            await pubsub.connection_pool.disconnect()

    async def _read(self, pubsub: PubSub) -> None:
        """Deliver ``pubsub``'s messages (the reader is cancelled before its pubsub is closed)."""
        backoff = 0.05
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._deliver(message)
            except ResponseError as exc:  # an error reply to our SUBSCRIBE (an ACL refused it)
                refused = _refused(exc, self.redis)
                for future in self._confirmed.values():
                    if not future.done():
                        future.set_exception(refused)
            except Exception:  # a dropped connection, or anything else: messages may be lost
                self.reconnects += 1
                self._resubscribing.update(self._inboxes)
                for listeners in self._inboxes.values():
                    for inbox in listeners:
                        inbox._put(LOST)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:
                backoff = 0.05

    def _deliver(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "subscribe":
            future = self._confirmed.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            if channel in self._resubscribing:
                self._resubscribing.discard(channel)
                for inbox in self._inboxes.get(channel, ()):
                    inbox._put(RESUMED)
        elif kind == "message":
            self.messages += 1
            for inbox in self._inboxes.get(channel, ()):
                inbox._put(message["data"])
