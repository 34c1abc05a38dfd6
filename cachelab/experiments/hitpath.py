"""Where a cache hit spends its time: hit throughput on warm keys against concurrency.

``measure_hit_path`` reads warm keys with ``concurrency`` coroutines, through four contenders:

- ``"redis-py GET + json.loads"``: the baseline, one redis-py command per read;
- ``"cachelab, batching off"``: ``Cache.get_or_set`` sending one MGET (value and fence) per read;
- ``"cachelab, batching on"``: the same, with the reads issued in one event-loop tick sent as one
  MGET on the cache's pipelined read connection;
- ``"redis-benchmark GET"``: Redis's own C client with ``concurrency`` connections and one
  request in flight on each (no pipelining), reading the same keys: what the server can serve
  to clients that send one command per read.

The three Python contenders run in this event loop, each on a client of its own with the same
pool size, and each coroutine reads keys of its own (so no two coroutines ever share a read).
Within a round the contenders take turns at each concurrency, in an order that rotates from
round to round (ABCD, BCDA, ...), so a machine that slows down or speeds up affects them alike.
Besides the time, each row counts the Redis commands the reads took (GETs or MGETs), which does
not depend on how busy the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import math
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, cast

import pandas as pd
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from ..cache import Cache
from ..cluster import RedisClient, is_cluster
from ..connection import DEFAULT_MAX_CONNECTIONS, clone_client, connect
from ..errors import ConfigurationError, ExperimentError
from ..tasks import cancel_all
from ..wire import Channel
from .traffic import quiet_gc

__all__ = [
    "BATCHING_OFF",
    "BATCHING_ON",
    "CONTENDERS",
    "HIT_PATH_COLUMNS",
    "RAW",
    "REDIS_BENCHMARK",
    "MgetCount",
    "count_mgets",
    "measure_hit_path",
    "redis_benchmark_skip_reason",
    "redis_usec_per_call",
    "summarize_hit_path",
]

RAW = "redis-py GET + json.loads"
BATCHING_OFF = "cachelab, batching off"
BATCHING_ON = "cachelab, batching on"
REDIS_BENCHMARK = "redis-benchmark GET"
CONTENDERS = (RAW, BATCHING_OFF, BATCHING_ON, REDIS_BENCHMARK)
"""The contenders, in the order of a first round."""

HIT_PATH_COLUMNS = [
    "contender", "concurrency", "round", "position", "reads", "seconds", "reads_per_s",
    "commands", "batches", "cpu_s",
]  # fmt: skip
"""One row per contender x concurrency x round. ``position``: its turn in that round (0 first);
``commands``: Redis commands its reads took (GETs or MGETs); ``batches``: MGETs that carried
more than one read; ``cpu_s``: CPU time this process spent meanwhile (NaN for redis-benchmark,
which runs in a process of its own)."""

MAX_CONCURRENCY = 10_000
VALUE = {"id": 0, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 0.97}
TTL_S = 600.0
REDIS_BENCHMARK_TIMEOUT_S = 120.0
REDIS_BENCHMARK_READS = 10_000
"""The fewest reads per redis-benchmark run: it times a run in whole milliseconds, so a run must
last long enough for that to be precise (10,000 reads take over 100 ms at 80,000 reads/s)."""


def _whole(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be a whole number of at least {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigurationError(f"{name} must be at most {high:,}, got {value!r}")
    return value


def _check(concurrency, reads, rounds, keys, redis_benchmark, namespace, pool_size):
    """The arguments, checked before anything connects; returns (levels, keys)."""
    if isinstance(concurrency, int | str | bytes) or not isinstance(concurrency, Iterable):
        raise ConfigurationError(
            f"concurrency must be a list of coroutine counts such as [1, 10, 50], "
            f"got {concurrency!r}"
        )
    levels = list(concurrency)
    if not levels:
        raise ConfigurationError(
            "concurrency is empty: give at least one count, such as [1, 10, 50]"
        )
    for level in levels:
        _whole("every value of concurrency", level, 1, MAX_CONCURRENCY)
    if len(set(levels)) != len(levels):
        raise ConfigurationError(f"concurrency lists a count twice ({levels}): give each once")
    most = max(levels)
    _whole("rounds", rounds, 1)
    if _whole("reads", reads, 1) < most:
        raise ConfigurationError(
            f"reads ({reads}) must be at least the largest concurrency ({most}): every coroutine "
            "needs a read of its own"
        )
    if keys is None:
        keys = max(200, most)
    elif _whole("keys", keys, 1) < most:
        raise ConfigurationError(
            f"keys ({keys}) must be at least the largest concurrency ({most}), so that every "
            f"coroutine reads keys of its own (the cache would share concurrent reads of one key); "
            f"pass keys={most} or more"
        )
    if not isinstance(redis_benchmark, bool):
        raise ConfigurationError(f"redis_benchmark must be True or False, got {redis_benchmark!r}")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ConfigurationError(f"namespace must be a non-empty string or None, got {namespace!r}")
    if _whole("pool_size", pool_size, 1) < Channel.SMALLEST_POOL:
        raise ConfigurationError(
            f"pool_size must be at least {Channel.SMALLEST_POOL}, got {pool_size}: a smaller pool "
            "has no room for the cache's pipelined read connection, so batching would be measured "
            "on redis-py instead"
        )
    return sorted(levels), keys


def redis_benchmark_skip_reason(client: Any, binary: str | None) -> str | None:
    """Why redis-benchmark cannot be run against ``client``'s server, in one sentence; None if
    it can. ``binary`` is its path (None: not found). A password is never put on a command line,
    where any user of the machine can read it with ``ps``."""
    if binary is None:
        return "redis-benchmark was not found on the PATH (it comes with the redis-tools package)"
    if is_cluster(client):
        return "the client is a Redis Cluster client, and redis-benchmark would measure one node"
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if pool is None or pool.connection_class is not aioredis.Connection or "host" not in kwargs:
        return (
            "the client does not talk to a server on a plain TCP port (a Unix socket, TLS or an "
            "in-process fake), which this experiment does not point redis-benchmark at"
        )
    if kwargs.get("password") or kwargs.get("username") or kwargs.get("credential_provider"):
        return (
            "the server needs a password, and a password on redis-benchmark's command line "
            "could be read by any user of this machine"
        )
    return None


async def measure_hit_path(
    redis: RedisClient | None = None,
    *,
    concurrency: Iterable[int] = (1, 10, 50, 200),
    reads: int = 2000,
    rounds: int = 3,
    keys: int | None = None,
    redis_benchmark: bool = True,
    namespace: str | None = None,
    pool_size: int = DEFAULT_MAX_CONNECTIONS,
) -> pd.DataFrame:
    """Hit throughput on warm keys for each contender at each concurrency, ``rounds`` times.

    Every run makes ``reads`` reads spread over ``concurrency`` coroutines (``concurrency``
    connections for redis-benchmark, which makes at least ``REDIS_BENCHMARK_READS``, as it
    times in whole milliseconds); ``keys`` warm keys (default: 200, or the largest
    concurrency if larger) are split between the coroutines so that each reads its own. Returns
    one row per contender x concurrency x round (``HIT_PATH_COLUMNS``). When redis-benchmark is
    not run (``redis_benchmark=False``, not installed, a server it cannot reach without a
    password on its command line), its rows are missing and ``frame.attrs["skipped"]`` maps
    its name to the reason. The keys live in ``namespace`` (default: a fresh one) and are
    removed at the end. Without ``redis``, a client from :func:`cachelab.connect` is used.
    """
    levels, keys = _check(concurrency, reads, rounds, keys, redis_benchmark, namespace, pool_size)
    binary = shutil.which("redis-benchmark")
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    skipped: dict[str, str] = {}
    if not redis_benchmark:
        skipped[REDIS_BENCHMARK] = "it was not asked for (redis_benchmark=False)"
    elif (reason := redis_benchmark_skip_reason(base, binary)) is not None:
        skipped[REDIS_BENCHMARK] = reason
    namespace = namespace or f"cachelab:hitpath:{uuid.uuid4().hex[:12]}"
    raw_keys = [f"{namespace}:raw:{i:012d}" for i in range(keys)]  # as redis-benchmark's -r names
    cache_keys = [f"k{i}" for i in range(keys)]
    clients = [clone_client(base, max_connections=pool_size) for _ in range(3)]
    off = Cache(clients[1], namespace=namespace, ttl=TTL_S, batching=False)
    on = Cache(clients[2], namespace=namespace, ttl=TTL_S, batching=True)
    counting = contextlib.ExitStack()
    # each run takes a concurrency; the Python ones also a number of reads (the warm-up's)
    contenders: dict[str, Callable[..., Awaitable[dict]]] = {
        RAW: _python_run(_RawReads(clients[0]), raw_keys, reads)
    }
    for name, cache in ((BATCHING_OFF, off), (BATCHING_ON, on)):
        reader = _CacheReads(cache, counting.enter_context(count_mgets(cache)))
        contenders[name] = _python_run(reader, cache_keys, reads)
    # not skipped: found, and a plain client (redis_benchmark_skip_reason)
    if REDIS_BENCHMARK not in skipped and binary is not None and not is_cluster(base):
        pool = base.connection_pool
        where = (binary, pool.connection_kwargs["host"], pool.connection_kwargs["port"])
        many = max(reads, REDIS_BENCHMARK_READS)
        contenders[REDIS_BENCHMARK] = _benchmark_run(*where, f"{namespace}:raw:", keys, many)
    rows = []
    try:
        await _warm(clients[0], off, raw_keys, cache_keys)
        for name in (RAW, BATCHING_OFF, BATCHING_ON):  # connections opened, code paths warm
            await contenders[name](levels[-1], min(reads, max(1000, levels[-1])))
        names = list(contenders)
        for round_ in range(rounds):
            turn = names[round_ % len(names) :] + names[: round_ % len(names)]
            with quiet_gc():  # one collection per round, before it: none inside a run
                for level in levels:
                    for position, name in enumerate(turn):
                        measured = await contenders[name](level)
                        rows.append({"contender": name, "concurrency": level, "round": round_,
                                     "position": position, **measured})  # fmt: skip
    finally:
        counting.close()
        try:
            for cache in (off, on):
                await cache.aclose()
            await off.clear()
            for start in range(0, len(raw_keys), 500):
                await clients[0].unlink(*raw_keys[start : start + 500])
        finally:
            await asyncio.gather(*(client.aclose() for client in clients))
            if owned:
                await base.aclose()
    frame = pd.DataFrame(rows, columns=HIT_PATH_COLUMNS)
    frame.attrs.update(
        skipped=skipped,
        keys=keys,
        pool_size=pool_size,
        parser="hiredis" if HIREDIS_AVAILABLE else "pure Python",
    )
    return frame


def summarize_hit_path(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per contender x concurrency of a :func:`measure_hit_path` frame: reads/s (median,
    slowest and fastest round), reads per Redis command, MGETs that carried a batch, and this
    process's CPU per read (µs, median) and busy share (CPU time / wall time, median); the CPU
    columns are NaN for redis-benchmark, which runs in a process of its own."""
    rows = frame.assign(
        cpu_us_per_read=frame["cpu_s"] / frame["reads"] * 1e6,
        cpu_share=frame["cpu_s"] / frame["seconds"],
    )
    summary = rows.groupby(["contender", "concurrency"], sort=False).agg(
        reads_per_s=("reads_per_s", "median"),
        slowest=("reads_per_s", "min"),
        fastest=("reads_per_s", "max"),
        reads=("reads", "sum"),
        commands=("commands", "sum"),
        batches=("batches", "sum"),
        cpu_us_per_read=("cpu_us_per_read", "median"),
        cpu_share=("cpu_share", "median"),
    )
    summary.insert(3, "reads_per_command", summary.pop("reads") / summary.pop("commands"))
    return summary.reset_index()


async def redis_usec_per_call(redis: RedisClient, command: str = "get") -> float | None:
    """Microseconds Redis spends on one ``command`` on average, from ``INFO commandstats`` (its
    own CPU, without the network or the client; since the server started, for every client of
    it). None where the server does not say (fakeredis, a cluster, a command never run)."""
    if is_cluster(redis):
        return None
    try:
        stats = await redis.info("commandstats")
    except Exception:  # fakeredis has no INFO commandstats; an ACL may forbid INFO
        return None
    entry = stats.get(f"cmdstat_{command.lower()}") if isinstance(stats, dict) else None
    if not isinstance(entry, dict) or "usec_per_call" not in entry:
        return None
    return float(entry["usec_per_call"])


async def _warm(
    client: RedisClient, cache: Cache, raw_keys: list[str], cache_keys: list[str]
) -> None:
    """Write every key: the raw ones as JSON, the cache's through the cache (with its header)."""
    payload = json.dumps(VALUE)
    for start in range(0, len(raw_keys), 500):
        pipe = client.pipeline(transaction=False)
        for key in raw_keys[start : start + 500]:
            pipe.set(key, payload, ex=int(TTL_S))
        await pipe.execute()
    for start in range(0, len(cache_keys), 100):
        await asyncio.gather(*(cache.set(key, VALUE) for key in cache_keys[start : start + 100]))


class _RawReads:
    """The baseline: a redis-py GET and json.loads per read; every GET is one command."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.commands = 0

    async def read(self, key: str) -> None:
        self.commands += 1
        json.loads(cast(bytes, await self.client.get(key)))  # a warm key; replies are bytes

    def batches(self) -> int:
        return 0


class MgetCount:
    """The MGETs a cache sent for its reads while :func:`count_mgets` was counting."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.mgets = 0
        """MGET commands sent, each carrying one read or a batch of them."""
        self._batches = self._batches_now()

    def _batches_now(self) -> int:
        reads = self.cache.store.reads
        return 0 if reads is None else reads.batches

    @property
    def batches(self) -> int:
        """MGETs, among those, that carried more than one read."""
        return self._batches_now() - self._batches

    def counted(self, send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*keys: Any) -> Any:
            self.mgets += 1
            return await send(*keys)

        return counted


@contextlib.contextmanager
def count_mgets(cache: Cache) -> Iterator[MgetCount]:
    """Count the MGETs ``cache`` sends for its reads, alone or batched, inside the block.

    With batching on, every read goes through the cache's read batcher, which sends one MGET
    per read that found nothing else in flight, and one per batch; with batching off, the cache
    calls its client's ``mget`` once per read (while counting, other users of that client's
    ``mget`` are counted too).
    """
    count = MgetCount(cache)
    batcher = cache.store.reads
    if batcher is None:
        client = cache.redis
        previous = vars(client).get("mget")  # another count's, if counts are nested
        vars(client)["mget"] = count.counted(client.mget)  # shadows the method, as it is read
        try:
            yield count
        finally:
            if previous is None:
                del client.mget  # the class's method again
            else:
                vars(client)["mget"] = previous
    else:
        send = batcher._mget
        batcher._mget = count.counted(send)
        try:
            yield count
        finally:
            batcher._mget = send


class _CacheReads:
    """``get_or_set`` on warm keys; its MGETs are counted as its commands."""

    def __init__(self, cache: Cache, count: MgetCount) -> None:
        self.cache, self.count = cache, count

    @property
    def commands(self) -> int:
        return self.count.mgets

    async def read(self, key: str) -> None:
        await self.cache.get_or_set(key, _never)

    def batches(self) -> int:
        return self.count.batches


async def _never() -> None:
    raise ExperimentError(
        "a warm key of the hit-path experiment was missing (evicted or deleted by someone "
        "else?): it measures hits only; run it again"
    )


def _python_run(reader: _RawReads | _CacheReads, keys: list[str], reads: int):
    """A run of ``reads`` reads at a given concurrency: each coroutine reads keys of its own."""

    async def run(concurrency: int, reads: int = reads) -> dict:
        async def worker(w: int) -> None:
            own = keys[w::concurrency]
            for i in range(reads // concurrency + (w < reads % concurrency)):
                await reader.read(own[i % len(own)])

        commands, batches = reader.commands, reader.batches()
        cpu, start = time.process_time(), time.perf_counter()
        workers = [asyncio.ensure_future(worker(w)) for w in range(concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:  # one failed (or we were cancelled): none may read on after the run
            await cancel_all(workers)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        commands, batches = reader.commands - commands, reader.batches() - batches
        return {"reads": reads, "seconds": seconds, "reads_per_s": reads / seconds,
                "commands": commands, "batches": batches, "cpu_s": cpu}  # fmt: skip

    return run


def _benchmark_run(binary: str, host: str, port: int, prefix: str, keys: int, reads: int):
    """A run of redis-benchmark: ``reads`` GETs of random warm keys over ``concurrency``
    connections, one request in flight on each (its default: no pipelining)."""

    async def run(concurrency: int) -> dict:
        args = [binary, "-h", str(host), "-p", str(port), "-c", str(concurrency), "-n", str(reads),
                "-r", str(keys), "--csv", "GET", f"{prefix}__rand_int__"]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(REDIS_BENCHMARK_TIMEOUT_S):
                out, err = await process.communicate()
        except BaseException:  # timed out or cancelled: it must not outlive the experiment
            process.kill()
            await process.wait()
            raise
        rps = _rps(out.decode(errors="replace"))
        if process.returncode != 0 or rps is None or not 0 < rps < math.inf:
            said = (err or out).decode(errors="replace").strip().splitlines()
            raise ExperimentError(
                f"redis-benchmark exited with code {process.returncode} and no usable GET rate"
                + (f": {said[-1][:200]}" if said else "")
            )
        return {"reads": reads, "seconds": reads / rps, "reads_per_s": rps,
                "commands": reads, "batches": 0, "cpu_s": math.nan}  # fmt: skip

    return run


def _rps(output: str) -> float | None:
    """The requests per second of the GET line in redis-benchmark's ``--csv`` output."""
    for row in csv.reader(io.StringIO(output)):
        if len(row) > 1 and row[0].startswith("GET"):
            try:
                return float(row[1])
            except ValueError:
                return None
    return None
