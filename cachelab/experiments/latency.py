"""How long does another process keep serving the old value? Invalidation latency, measured.

``measure_invalidation_latency`` builds two caches on the same namespace, each with its own
client (its own connections, as two application instances would have), its own L1 and its own
invalidator: a *writer* and a *reader*. For each sample the reader holds a key in its L1, the
writer writes it, and two clocks run until the reader's L1 drops the key: one from the moment the
writer's ``set`` began (the whole path: the write, the announcement, the delivery), one from the
moment it returned (the window in which the reader still serves a value the writer considers
replaced). The reader's L1 reports the drop itself (no polling), so the measurement adds almost
nothing of its own.

Both caches run in this one event loop: the numbers include Redis, the loopback network and the
wake-up of the reader's listener task, as between two processes on one machine, but they share
one CPU core's worth of Python.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Hashable

import pandas as pd

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client
from ..errors import ConfigurationError, ExperimentError
from ..l1 import INVALIDATORS, NearCache, StreamInvalidator

__all__ = ["LATENCY_COLUMNS", "measure_invalidation_latency"]

LATENCY_COLUMNS = ["mode", "sample", "write_ms", "latency_ms", "after_return_ms", "before_return"]


class _WatchedNearCache(NearCache):
    """A NearCache that notes when a watched key is dropped by an invalidation or a flush."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.watched: Hashable | None = None
        self.dropped_at: float | None = None
        self.dropped = asyncio.Event()

    def watch(self, key: Hashable) -> None:
        self.watched, self.dropped_at = key, None
        self.dropped.clear()

    def _note(self) -> None:
        if self.dropped_at is None:
            self.dropped_at = time.perf_counter()
            self.dropped.set()

    def invalidate(self, key: Hashable) -> bool:
        if key == self.watched:
            self._note()
        return super().invalidate(key)

    def clear(self) -> int:
        if self.watched is not None:
            self._note()
        return super().clear()


async def measure_invalidation_latency(
    redis: RedisClient,
    mode: str = "pubsub",
    samples: int = 200,
    *,
    timeout_s: float = 2.0,
    namespace: str | None = None,
) -> pd.DataFrame:
    """Time ``samples`` invalidations from a writer cache to a reader cache's L1.

    ``mode`` is ``"pubsub"``, ``"streams"`` or ``"tracking"`` (the last needs a real Redis
    server). Returns one row per sample (``LATENCY_COLUMNS``): ``write_ms``, how long the
    writer's ``set`` took; ``latency_ms``, from the start of that ``set`` until the reader's L1
    dropped the key; ``after_return_ms``, from the ``set`` returning until the drop (0 when the
    drop came first, and ``before_return`` is then True). Raises
    :class:`~cachelab.ExperimentError` if an invalidation does not arrive within ``timeout_s``.
    The caches use ``namespace`` (default: a fresh one); every key in it (and the Streams
    invalidator's stream) is deleted afterwards.
    """
    if mode not in INVALIDATORS:
        raise ConfigurationError(
            f"unknown mode {mode!r}; choose one of {', '.join(INVALIDATORS)} (an L1 without "
            "an invalidator is never told anything, so there is no latency to measure)"
        )
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ConfigurationError(f"samples must be a positive whole number, got {samples!r}")
    namespace = namespace or f"cachelab:latency:{uuid.uuid4().hex[:12]}"
    clients = [clone_client(redis, max_connections=4) for _ in range(2)]
    watched = _WatchedNearCache(max_age_s=60)
    writer = Cache(clients[0], namespace=namespace, ttl=60, near=NearCache(max_age_s=60),
                   invalidation=mode)  # fmt: skip
    reader = Cache(clients[1], namespace=namespace, ttl=60, near=watched, invalidation=mode)
    rows = []
    try:
        await writer.set("probe", 0)
        for i in range(samples):
            await reader.get("probe")  # into the reader's L1 (starts its invalidator first)
            if "probe" not in watched:
                raise ExperimentError("the reader's L1 did not take the probe key")
            watched.watch("probe")
            began = time.perf_counter()
            await writer.set("probe", i + 1)
            returned = time.perf_counter()
            try:
                await asyncio.wait_for(watched.dropped.wait(), timeout_s)
            except TimeoutError:
                raise ExperimentError(
                    f"{mode}: no invalidation reached the reader within {timeout_s:g} s"
                ) from None
            dropped = watched.dropped_at
            if dropped is None:  # never: it is noted before the event is set
                raise ExperimentError(f"{mode}: the reader's L1 did not note the drop")
            rows.append((mode, i, (returned - began) * 1000, (dropped - began) * 1000,
                         max(0.0, dropped - returned) * 1000, dropped < returned))  # fmt: skip
    finally:
        for cache in (writer, reader):
            await cache.aclose()
        await writer.clear()
        if isinstance(writer.invalidator, StreamInvalidator):
            await clients[0].delete(writer.keyspace.stream)
        await asyncio.gather(*(c.aclose() for c in clients))
    return pd.DataFrame(rows, columns=LATENCY_COLUMNS)
