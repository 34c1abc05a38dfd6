"""A pipelined connection for the cache's reads: the client library's cost taken off the hit path.

redis-py spends about twice as much CPU per command as the round trip itself needs (pool locks,
retries, observability hooks, a pure-Python packer). The store's reads are one command shape
(MGET), so each client gets one :class:`Channel`, shared by every cache on it, that sends them
the way ioredis auto-pipelines: each request is written as it comes, one reader task matches
replies to requests in order, and hiredis parses them. A caller that gives up (cancelled, or out
of time) leaves the order intact: its reply is read and dropped. A timeout or a lost connection
ends the connection and fails what was in flight; the next request connects again.

The channel borrows one connection from the client's own pool, so redis-py does the handshake
(password, database, TLS, RESP version, client name) and the pool's limit counts it; closing the
client closes it, and the reader task ends with it. Clusters and fakeredis, whose connections are
not plain sockets, keep using redis-py (:meth:`Channel.of` returns None).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

if TYPE_CHECKING:
    from .cluster import RedisClient

__all__ = ["Channel"]

try:
    import hiredis
except ImportError:  # no wheel for this interpreter (hiredis is a CPython-only dependency)
    hiredis = None  # type: ignore[assignment]  # Channel.of() checks it before any use

_KINDS: dict[str, type[redis_errors.RedisError]] = {
    "NOPERM": redis_errors.NoPermissionError,
    "NOAUTH": redis_errors.AuthenticationError,
    "WRONGPASS": redis_errors.AuthenticationError,
    "LOADING": redis_errors.BusyLoadingError,
    "NOSCRIPT": redis_errors.NoScriptError,
}


def _error(reply: hiredis.ReplyError) -> redis_errors.RedisError:
    """redis-py's exception for an error reply, so callers classify it as they would its own."""
    text = str(reply)
    return _KINDS.get(text.split(" ", 1)[0], redis_errors.ResponseError)(text)


class _Link:
    """One connection's life: its writer, and the requests waiting for its replies, in order."""

    __slots__ = ("connection", "pending", "writer")

    def __init__(self, connection: Any, writer: asyncio.StreamWriter) -> None:
        self.connection, self.writer = connection, writer
        self.pending: collections.deque[asyncio.Future[Any]] = collections.deque()


class Channel:
    """One pipelined connection per client, opened on first use (see the module docstring)."""

    _by_client: ClassVar[weakref.WeakKeyDictionary[RedisClient, Channel]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        self._pool = pool
        self._timeout: float | None = pool.connection_kwargs.get("socket_timeout")
        self._link: _Link | None = None
        self._connecting: asyncio.Future[None] | None = None

    SMALLEST_POOL = 8
    """The channel keeps one of the pool's connections: a smaller pool would starve the rest."""

    @classmethod
    def of(cls, redis: RedisClient) -> Channel | None:
        """The channel of ``redis`` (made on first use), or None where only redis-py can talk:
        a cluster client, fakeredis, a pool of fewer than :attr:`SMALLEST_POOL` connections, or
        an interpreter without hiredis."""
        found = cls._by_client.get(redis)
        if found is None:
            pool = getattr(redis, "connection_pool", None)
            if hiredis is None or pool is None or "server" in pool.connection_kwargs:
                return None
            size = getattr(pool, "max_connections", None)
            if size is not None and size < cls.SMALLEST_POOL:
                return None
            found = cls._by_client[redis] = cls(pool)
        return found

    async def call(self, *args: str | bytes) -> Any:
        """Send one command and return its reply (an error reply raises redis-py's error)."""
        link = self._link
        if link is None or link.writer.is_closing():
            link = await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        link.pending.append(future)
        # hiredis's stub says a 1-tuple (Tuple[str | ...]); it packs a command of any length
        link.writer.write(hiredis.pack_command(args))  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(self._timeout):
                return await future
        except TimeoutError:
            lost = redis_errors.TimeoutError("Timeout reading from socket")
            await self._end(link, lost)
            raise lost from None

    async def _connect(self) -> _Link:
        while self._connecting is not None:  # someone is connecting already: wait for them
            await asyncio.shield(self._connecting)
            link = self._link
            if link is not None and not link.writer.is_closing():
                return link
        self._connecting = asyncio.get_running_loop().create_future()
        try:
            connection = await self._pool.get_connection()  # connected, authenticated, counted
            reader, writer = getattr(connection, "_reader", None), connection._writer
            if reader is None or writer is None:
                await self._pool.release(connection)
                raise redis_errors.ConnectionError("the pool gave a connection without a socket")
            link = self._link = _Link(connection, writer)
            listening = asyncio.create_task(self._listen(link, reader), name="cachelab-reads")
            listening.add_done_callback(_retrieved)
            return link
        finally:
            self._connecting.set_result(None)
            self._connecting = None

    async def _listen(self, link: _Link, reader: asyncio.StreamReader) -> None:
        """Read replies for as long as the connection lives, each to the oldest request."""
        parser, pending = hiredis.Reader(), link.pending
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise redis_errors.ConnectionError("Connection closed by server.")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = pending.popleft()
                    if future.done():
                        continue  # its caller gave up: the order is kept all the same
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(_error(reply))
                    else:
                        future.set_result(reply)
        except Exception as exc:
            lost = (
                exc
                if isinstance(exc, redis_errors.RedisError)
                else redis_errors.ConnectionError(f"Error reading from Redis: {exc}")
            )
            await self._end(link, lost)

    async def _end(self, link: _Link, error: BaseException) -> None:
        """Give ``link``'s connection back to the pool, closed, and fail what waits on it."""
        if self._link is link:
            self._link = None
        while link.pending:
            future = link.pending.popleft()
            if not future.done():
                future.set_exception(error)
        connection, link.connection = link.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.disconnect()
            with contextlib.suppress(Exception):
                await self._pool.release(connection)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # it ends by itself when its connection does: nothing to report
