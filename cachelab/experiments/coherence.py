"""How true do near caches stay? Reads and writes across instances, every stale read counted.

``run_invalidation`` runs ``instances`` caches, each with its own L1 (:class:`~cachelab.NearCache`)
and invalidator, over a set of keys. Writers update a key's row in the backend, then write the
cache; the moment that write returns, the new version is *committed*. Every read records the
version it got and the newest version committed before it started: a read is **stale** when it got
an older one, and its *staleness* is how long ago the first newer version was committed.

With ``kill_at`` the invalidators' connections are killed mid-run (``CLIENT KILL ID`` on exactly
those connections, so the shared server's other users are untouched). Then pub/sub without a
flush keeps serving what it missed until the L1 entries age out; with the flush, and with Streams
(which replay), stale reads stop once the connection is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client, connect
from ..errors import ConfigurationError
from ..l1 import (
    Invalidator,
    NearCache,
    PubSubInvalidator,
    StreamInvalidator,
    TrackingInvalidator,
    kill_connections,
)
from ..tasks import cancel_all
from ..testing import SlowBackend
from .traffic import drive_poisson

__all__ = ["MODES", "InvalidationResult", "run_invalidation"]

MODES = ("none", "pubsub", "pubsub-noflush", "streams", "tracking")
READ_COLUMNS = ["t_s", "instance", "key", "version", "committed", "stale", "staleness_ms",
                "latency_ms"]  # fmt: skip


def _invalidator(mode: str) -> Invalidator | None:
    made: dict[str, Callable[[], Invalidator | None]] = {
        "none": lambda: None,
        "pubsub": PubSubInvalidator,
        "pubsub-noflush": lambda: PubSubInvalidator(flush_on_reconnect=False),
        "streams": StreamInvalidator,
        "tracking": TrackingInvalidator,
    }
    return made[mode]()


@dataclass
class InvalidationResult:
    """``reads`` (one row per read, ``READ_COLUMNS``), ``writes`` (one per committed write) and
    ``summary`` (counts, the reconnect instant if connections were killed, invalidator stats)."""

    reads: pd.DataFrame
    writes: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<InvalidationResult mode={s['mode']} reads={s['reads']} "
            f"stale={s['stale_reads']} stale_after_reconnect={s['stale_after_reconnect']}>"
        )


async def run_invalidation(
    instances: int = 3,
    readers_rate: float = 300.0,
    writes_rate: float = 20.0,
    duration: float = 4.0,
    mode: str = "pubsub",
    *,
    keys: int = 20,
    near_max_age: float = 30.0,
    kill_at: float | None = None,
    outage_s: float = 0.5,
    loader_ms: float = 2.0,
    delivery_window_ms: float = 100.0,
    redis: RedisClient | None = None,
    seed: int | None = None,
) -> InvalidationResult:
    """Reads at ``readers_rate``/s and writes at ``writes_rate``/s over ``keys`` keys for
    ``duration`` s, through ``instances`` caches with L1s kept true by ``mode`` (one of
    ``MODES``; ``"none"`` relies on the L1's ``near_max_age`` alone).

    With ``kill_at``, the invalidators' connections are killed at that second and cannot
    connect again for ``outage_s`` seconds (a partition; on a cluster or fakeredis they are
    killed again every 20 ms instead), so writes during the outage send invalidations nobody
    receives. ``summary["reconnected_s"]`` is when every invalidator was back (their backoff
    between attempts adds to the outage); stale reads after it are counted in
    ``stale_after_reconnect``. Of those, ``late`` ones were waiting for an invalidation that
    was on its way and reached their instance just after the read (a busy machine delays
    deliveries); ``left_behind`` ones were not: the write that superseded the value was
    announced while their instance was cut off, so the message was lost (even if a later
    write's invalidation repairs the entry afterwards), or it never arrived at all. Sorting by
    the order of what each instance was told, not by how stale a read was, makes the split the
    same on a quiet and on a starved machine; at the end a last write is announced and waited
    for, so whatever is still in flight arrives before the run is judged. ``delivery_window_ms``
    only classifies how stale the reads were (``reads["staleness_ms"]``), for charts.
    """
    if mode not in MODES:
        raise ConfigurationError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if kill_at is not None and not 0 < kill_at < duration:
        raise ConfigurationError(f"kill_at must lie inside the run (0..{duration:g} s)")
    if not isinstance(instances, int) or instances < 1 or keys < 1:
        raise ConfigurationError("instances and keys must be positive whole numbers")
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    run = uuid.uuid4().hex[:12]
    namespace = f"cachelab:coherence:{run}"
    clients = [clone_client(base, max_connections=16, client_name=f"cachelab-coherence-{run}-{i}")
               for i in range(instances)]  # fmt: skip
    partition = _Partition()
    partitioned = all([partition.wrap(c) for c in clients])  # else: cut again every 20 ms
    nears = [NearCache(max_age_s=near_max_age) for _ in clients]
    caches = [
        Cache(c, namespace=namespace, ttl=60, near=near, invalidation=_invalidator(mode))
        for c, near in zip(clients, nears, strict=True)
    ]
    backend = SlowBackend(loader_ms)
    rng = random.Random(seed)
    names = [f"item:{i}" for i in range(keys)]
    applied = [_watch(near) for near in nears]  # when each L1 was told what changed
    committed = {k: 0 for k in names}
    writing = {k: asyncio.Lock() for k in names}
    commits: list[dict] = []
    reads: list[dict] = []
    marks: dict[str, float] = {}

    def commit_time(key: str, version: int) -> float:
        return next(c["t_s"] for c in commits if c["key"] == key and c["version"] == version)

    async def read(_arrival: float) -> None:
        instance, key = rng.randrange(instances), rng.choice(names)
        floor, began = committed[key], time.perf_counter()
        value = await caches[instance].get_or_set(key, lambda: backend.fetch(key))
        t = began - start
        version = value["version"]
        stale = version < floor
        staleness = (t - commit_time(key, version + 1)) * 1000 if stale else 0.0
        reads.append({"t_s": t, "instance": instance, "key": key, "version": version,
                      "committed": floor, "stale": stale, "staleness_ms": staleness,
                      "latency_ms": (time.perf_counter() - began) * 1000})  # fmt: skip

    async def write(_arrival: float) -> None:
        key, writer = rng.choice(names), caches[rng.randrange(instances)]
        # One writer per key at a time, as a row lock would make it: two overlapping writes of a
        # key could reach Redis in the other order and leave the older version cached, a race
        # between writers that has nothing to do with how invalidations travel.
        async with writing[key]:
            version = committed[key] + 1
            row = {"key": key, "version": version}
            backend.rows[key] = row  # the system of record first ...
            sent = time.perf_counter() - start
            await writer.set(key, row)  # ... then the cache
            committed[key] = version
            commits.append({"t_s": time.perf_counter() - start, "sent_s": sent, "key": key,
                            "version": version})  # fmt: skip

    async def fault(kill_at: float) -> None:
        # a timeout inside the task, not asyncio.wait_for around it: cancelling a wait_for twice
        # abandons the task it waits for, and this one would then poll forever
        async with asyncio.timeout(duration + outage_s + 10):
            await asyncio.sleep(kill_at)
            marks["killed_s"] = time.perf_counter() - start
            marks["killed"] = 0
            invalidators = [c.invalidator for c in caches if c.invalidator is not None]  # all
            # when each invalidator's connection was last cut: each must resume after that
            cut_at: dict[int, float] = {}
            if partitioned:  # cut once; no listener connects again until the outage ends
                names = [n for invalidator in invalidators for n in invalidator.connection_names()]
                partition.names = frozenset(names)
                cut = time.perf_counter()
                marks["killed"] = await kill_connections(base, names)
                cut_at = dict.fromkeys(range(len(invalidators)), cut)
                end = start + marks["killed_s"] + outage_s
                await asyncio.sleep(max(0.0, end - time.perf_counter()))
                partition.names = frozenset()
            else:  # a cluster or fakeredis: kill what reconnected, every 20 ms
                while True:  # at least one round, however late a busy event loop gets here
                    for i, invalidator in enumerate(invalidators):
                        killed = await kill_connections(base, invalidator.connection_names())
                        if killed:
                            marks["killed"] += killed
                            cut_at[i] = time.perf_counter()  # later resumptions are real
                    if time.perf_counter() - start >= marks["killed_s"] + outage_s:
                        break
                    await asyncio.sleep(0.02)
            while not all((invalidators[i].resumed_at or 0) > t for i, t in cut_at.items()):  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # a local attribute, polled: no Redis traffic
            marks["reconnected_s"] = time.perf_counter() - start

    jobs: list[asyncio.Task] = []
    try:
        for name in names:  # every key starts cached at version 0
            backend.rows[name] = {"key": name, "version": 0}
            await caches[0].set(name, backend.rows[name])
        commits.extend({"t_s": -1.0, "sent_s": -1.0, "key": n, "version": 0} for n in names)
        start = time.perf_counter()
        jobs += [
            asyncio.create_task(drive_poisson(readers_rate, duration, rng, read, start=start)),
            asyncio.create_task(drive_poisson(writes_rate, duration, rng, write, start=start)),
        ]
        if kill_at is not None and mode != "none":
            jobs.append(asyncio.create_task(fault(kill_at)))
        await asyncio.gather(*jobs)
        if mode != "none":
            await _drain(caches, applied)
        stats = [c.invalidator.stats.as_dict() for c in caches if c.invalidator is not None]
        near = [c.near.stats.as_dict() for c in caches if c.near is not None]  # all
    finally:
        await cancel_all(jobs)  # gather gives up at the first failure, leaving the others running
        for cache in caches:
            await cache.aclose()
        # a failed or cancelled run still removes its keys, the invalidator's own included (a
        # Streams log has no TTL: left behind, it would stay forever)
        with contextlib.suppress(RedisError, OSError):
            await caches[0].clear()
        await asyncio.gather(*(c.aclose() for c in clients))
        if owned:
            await base.aclose()
    frame = pd.DataFrame(reads, columns=READ_COLUMNS).sort_values("t_s", ignore_index=True)
    # When each instance was back for good: its last resume, since no cut comes after the
    # outage. The fault task's mark can be early: a listener that resumed just before its last
    # cut landed looks back until it notices the cut. What was announced before then was lost.
    back = [c.invalidator.resumed_at if c.invalidator is not None else None for c in caches]
    reconnected = marks.get("reconnected_s")
    if reconnected is not None:
        reconnected = max([reconnected, *(b - start for b in back if b is not None)])
        marks["reconnected_s"] = reconnected
    after = frame["stale"] & (frame["t_s"] > reconnected) if reconnected else frame["stale"] & False
    covered = _late(frame, commits, applied, back, start, replays=mode == "streams")
    left_behind = after & ~covered
    totals = {k: sum(s[k] for s in stats) for k in stats[0]} if stats else {}
    summary = {
        "mode": mode,
        "instances": instances,
        "reads": len(frame),
        "writes": len(commits) - len(names),
        "stale_reads": int(frame["stale"].sum()),
        "stale_after_reconnect": int(after.sum()),
        "left_behind": int(left_behind.sum()),
        "late": int((after & covered).sum()),
        "delivery_window_ms": float(delivery_window_ms),
        "max_staleness_ms": float(frame["staleness_ms"].max()) if len(frame) else 0.0,
        "l1_hit_ratio": _hit_ratio(near),
        "killed_s": marks.get("killed_s"),
        "reconnected_s": reconnected,
        "connections_killed": marks.get("killed", 0),
        "invalidations_received": totals.get("received", 0),
        "flushes": totals.get("flushes", 0),
        "reconnects": totals.get("reconnects", 0),
        "replayed": totals.get("replayed", 0),
        "restarts": totals.get("restarts", 0),  # listeners that died and were started again
        "flushed_entries": sum(n["flushed"] for n in near),
        "expected_left_behind": _exposure(
            commits, marks, instances, readers_rate, writes_rate, keys, duration
        ),
    }
    writes = pd.DataFrame(commits[len(names) :], columns=["t_s", "sent_s", "key", "version"])
    return InvalidationResult(frame, writes, summary)


def _watch(near: NearCache) -> list[tuple[float, str | None]]:
    """Record when ``near`` is told to drop a key (``(time, key)``) or everything
    (``(time, None)``), on ``time.perf_counter``."""
    told: list[tuple[float, str | None]] = []
    invalidate, clear = near.invalidate, near.clear

    def invalidated(key: Any) -> bool:
        told.append((time.perf_counter(), key))
        return invalidate(key)

    def cleared() -> int:
        told.append((time.perf_counter(), None))
        return clear()

    near.invalidate, near.clear = invalidated, cleared  # type: ignore[method-assign]
    return told


async def _drain(caches: list[Cache], applied: list[list[tuple[float, str | None]]]) -> None:
    """Announce one last write and wait (up to 10 s) until every other instance was told: the
    channel and the stream deliver in order, so all that was in flight has arrived by then."""
    sent = time.perf_counter()
    await caches[0].set(_DRAIN_KEY, sent)

    def everyone_told() -> bool:
        return all(
            any(t >= sent and key in (_DRAIN_KEY, None) for t, key in told) for told in applied[1:]
        )

    async with asyncio.timeout(10):
        while not everyone_told():  # noqa: ASYNC110 - polling our own logs: no event to await
            await asyncio.sleep(0.01)


class _Partition:
    """The run's outage, as a network partition between the listeners and the server: while
    ``names`` holds a connection's name, that connection cannot be made again, so nothing
    published meanwhile reaches it. (Killing connections alone makes no outage: redis-py
    connects again and subscribes again at once, inside the read that failed.)"""

    def __init__(self) -> None:
        self.names: frozenset[str] = frozenset()

    def wrap(self, client: RedisClient) -> bool:
        """Make ``client``'s new connections (its listeners' too: they copy its connection
        class) respect the partition; False for a client without one pool (a cluster)."""
        pool = getattr(client, "connection_pool", None)
        if pool is None or "server" in pool.connection_kwargs:  # a cluster, or fakeredis
            return False
        partition, base = self, pool.connection_class

        class Partitioned(base):  # type: ignore[misc, valid-type]
            async def connect(self) -> None:
                if self.client_name in partition.names:
                    raise RedisConnectionError("cut off from the server (the run's outage)")
                await super().connect()

        pool.connection_class = Partitioned
        return True


def _exposure(commits, marks, instances, read_rate, write_rate, keys, duration) -> float:
    """How many stale reads lost invalidations should leave behind *without* a flush: the
    premise of "no flush leaves stale entries", estimated from the outage this run had.

    A key written during the outage (announced to nobody who was cut off) is wrong in the L1 of
    each other instance that had read it before the cut, until the key's next write repairs it;
    it shows up if that instance reads the key in between, after the reconnect. With Poisson
    reads of one key by one instance at ``r = read_rate / (instances * keys)`` and writes of
    one key at ``w = write_rate / keys``, that read comes first with probability r / (r + w).
    """
    killed, back = marks.get("killed_s"), marks.get("reconnected_s")
    if killed is None or back is None or instances < 2:
        return 0.0
    hit = {c["key"] for c in commits if killed <= c["sent_s"] <= back}
    r, w = read_rate / (instances * keys), write_rate / keys
    held = 1 - math.exp(-r * killed)  # read (and so cached) before the cut
    first = r / (r + w) * (1 - math.exp(-(r + w) * max(0.0, duration - back)))
    return len(hit) * (instances - 1) * held * first


def _late(frame, commits, applied, back, start: float, *, replays: bool = False):
    """Per read: was it stale only because the invalidation of the write that superseded its
    value was still on its way (late), rather than lost (left behind)?

    Decided by the order of recorded events, not by how long anything took. A write announced
    before its reader's instance was back for good (``back``, on perf_counter(); None if never
    cut off) reached that instance before the reconnect or never: pub/sub and tracking keep
    nothing for a connection that is down, so a stale read after the reconnect is left behind
    even if a later write's invalidation repairs the entry afterwards. A log that ``replays``
    (Streams) delivers it after the reconnect. Otherwise the read is late if its instance heard
    of the key (or flushed everything) after the read. (Hearing of it between the write and the
    read proves nothing: with frequent writes that can be an earlier write's late message.)
    """
    superseded = {(c["key"], c["version"]): c["t_s"] for c in commits}
    late = []
    for row in frame.itertuples():
        write = superseded.get((row.key, row.version + 1))
        if not row.stale or write is None:
            late.append(False)
            continue
        resumed = back[row.instance]
        if resumed is not None and write < resumed - start and not replays:
            late.append(False)  # announced while the instance was cut off, or handled before
            continue
        told = [t - start for t, key in applied[row.instance] if key in (row.key, None)]
        late.append(any(t >= row.t_s for t in told))
    return pd.Series(late, index=frame.index, dtype=bool)


_DRAIN_KEY = "drain"


def _hit_ratio(near_stats: list[dict]) -> float:
    hits = sum(n["hits"] for n in near_stats)
    return hits / max(1, hits + sum(n["misses"] for n in near_stats))
