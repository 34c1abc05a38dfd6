"""Redis Streams, the worker way: append, trim, read and resume, consumer groups.

Pub/sub forgets; a stream remembers. These helpers are what the CLI's ``cachelab stream``
commands and notebook 05 use, and what a service would use to process entries at least once:

- :func:`add`, :func:`trim` (``MAXLEN ~ N`` trims whole radix-tree nodes, cheaply) and
  :func:`read_from_last` (an XRANGE that remembers, in Redis, where the previous call stopped);
- :class:`StreamConsumer`: one consumer of a consumer group. ``read()`` gets new entries
  (``XREADGROUP ... >``), ``pending()`` re-reads this consumer's delivered-but-unacknowledged
  entries (``XREADGROUP ... 0``), ``ack()`` acknowledges, and ``claim_idle()`` takes over entries
  another consumer received but never acknowledged (``XAUTOCLAIM``): the cure for a worker that
  died mid-job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, cast

from redis.exceptions import ResponseError

from .cluster import RedisClient
from .errors import ConfigurationError, StreamError

__all__ = ["StreamConsumer", "StreamEntry", "add", "read_from_last", "trim"]


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: its id and its fields (decoded as UTF-8 text)."""

    id: str
    fields: dict[str, str]


def _entries(raw: Iterable[tuple[Any, Any]]) -> list[StreamEntry]:
    return [
        StreamEntry(
            entry_id.decode(),
            {k.decode(): v.decode(errors="replace") for k, v in (fields or {}).items()},
        )
        for entry_id, fields in raw
    ]


def _check_name(stream: str) -> None:
    if not isinstance(stream, str) or not stream:
        raise ConfigurationError(f"a stream needs a non-empty name, got {stream!r}")


async def _require_stream(redis: RedisClient, stream: str) -> None:
    kind = cast(bytes, await redis.type(stream))  # cachelab's clients do not decode replies
    if kind == b"none":
        raise StreamError(
            f"stream {stream!r} does not exist; add an entry first (cachelab stream add "
            f"{stream} field=value)"
        )
    if kind != b"stream":
        raise StreamError(f"key {stream!r} holds a {kind.decode()}, not a stream")


async def add(
    redis: RedisClient, stream: str, fields: dict[str, str], *, maxlen: int | None = None
) -> str:
    """XADD ``fields``; with ``maxlen``, trim to about that many entries. Returns the new id."""
    _check_name(stream)
    if not fields:
        raise ConfigurationError("an entry needs at least one field, e.g. event=created")
    # the ignore: redis-py wants dict[EncodableT, EncodableT], and dict is invariant
    entry_id = await redis.xadd(stream, fields, maxlen=maxlen, approximate=maxlen is not None)  # type: ignore[arg-type]
    return cast(bytes, entry_id).decode()  # cachelab's clients do not decode replies


async def trim(redis: RedisClient, stream: str, maxlen: int, *, approximate: bool = False) -> int:
    """Keep only the newest ``maxlen`` entries (about, if ``approximate``); return how many went."""
    _check_name(stream)
    if not isinstance(maxlen, int) or maxlen < 0:
        raise ConfigurationError(f"maxlen must be a whole number >= 0, got {maxlen!r}")
    await _require_stream(redis, stream)
    return int(await redis.xtrim(stream, maxlen=maxlen, approximate=approximate))


def _cursor_key(stream: str, reader: str) -> str:
    return f"{stream}:cachelab:last-read:{reader}"


async def read_from_last(
    redis: RedisClient,
    stream: str,
    *,
    count: int = 100,
    reader: str = "cli",
    resume: bool = True,
) -> list[StreamEntry]:
    """Up to ``count`` entries after the last one this ``reader`` saw (from the start if none).

    The position is kept in Redis (``<stream>:cachelab:last-read:<reader>``), so the next call,
    from any process, continues where this one stopped. ``resume=False`` reads from the start
    and does not move the position.
    """
    _check_name(stream)
    await _require_stream(redis, stream)
    last = cast(bytes | None, await redis.get(_cursor_key(stream, reader)) if resume else None)
    start = f"({last.decode()}" if last else "-"
    entries = _entries(await redis.xrange(stream, min=start, max="+", count=count) or [])
    if resume and entries:
        await redis.set(_cursor_key(stream, reader), entries[-1].id)
    return entries


class StreamConsumer:
    """Consumer ``consumer`` of group ``group`` on ``stream``."""

    def __init__(self, redis: RedisClient, stream: str, group: str, consumer: str) -> None:
        for what, name in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"the {what} name must be a non-empty string")
        self.redis, self.stream, self.group, self.consumer = redis, stream, group, consumer

    async def create_group(self, *, start: str = "0", make_stream: bool = True) -> bool:
        """Create the group (reading from ``start``; "$" = only new entries). False if it exists."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=start, mkstream=make_stream)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def _call(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise StreamError(
                    f"group {self.group!r} does not exist on stream {self.stream!r} (or the "
                    f"stream does not exist); create it with --create-group"
                ) from None
            raise

    async def read(self, count: int = 10, block_ms: int | None = None) -> list[StreamEntry]:
        """New entries for this consumer (XREADGROUP ... >); they stay pending until acked."""
        reply = await self._call(
            self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            )
        )
        return _entries(reply[0][1]) if reply else []

    async def pending(self, count: int = 10) -> list[StreamEntry]:
        """Entries delivered to this consumer and not acknowledged (XREADGROUP ... 0)."""
        reply = await self._call(
            self.redis.xreadgroup(self.group, self.consumer, {self.stream: "0"}, count=count)
        )
        return _entries(reply[0][1]) if reply else []

    async def pending_summary(self) -> list[dict[str, Any]]:
        """Per pending entry: id, consumer, idle ms and delivery count (XPENDING)."""
        rows = await self._call(
            self.redis.xpending_range(self.stream, self.group, min="-", max="+", count=1000)
        )
        return [
            {
                "id": r["message_id"].decode(),
                "consumer": r["consumer"].decode(),
                "idle_ms": int(r["time_since_delivered"]),
                "deliveries": int(r["times_delivered"]),
            }
            for r in rows
        ]

    async def ack(self, ids: list[str]) -> int:
        """Acknowledge ``ids``; returns how many were pending."""
        if not ids:
            return 0
        return int(await self._call(self.redis.xack(self.stream, self.group, *ids)))

    async def claim_idle(self, min_idle_ms: int, count: int = 10) -> list[StreamEntry]:
        """Take over entries pending longer than ``min_idle_ms`` with any consumer (XAUTOCLAIM)."""
        reply = await self._call(
            self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=min_idle_ms, count=count
            )
        )
        return _entries(reply[1])
