"""Soak: several processes, thousands of clients, a minute of reads, writes and invalidations.

What runs
---------
``--processes`` worker processes (fresh interpreters, each with its own connection pool of
``--pool`` connections named ``soak-<run>-w<i>`` in CLIENT LIST) share one namespace. Each runs one
``Cache(policy=--policy, near=NearCache(max_age_s=--max-age-s), invalidation=--invalidation)``
and ``--concurrency`` client tasks. A client loops until the run's deadline: think for a random,
exponentially distributed time (mean ``--think-ms``), then make one request on a key drawn from a
Zipf distribution (exponent ``--zipf``) over ``--keys`` keys:

- a *read* (probability ``1 - --write-ratio``): ``cache.lookup(key, loader)``; the loader reads
  the key's version from the system of record and then waits like a database query
  (:class:`cachelab.testing.SlowBackend`, ``--loader-ms`` ± ``--jitter-ms``);
- a *write*: ``set`` (commit a new version, then ``cache.set``), ``write_through`` (the writer
  commits the version, then the cache stores it) or ``delete`` (commit a new version, then
  ``cache.delete``: the next read loads it), 40 / 40 / 20 %.

The *system of record* is one Redis hash, key -> version, the database this cache fronts. Every
write commits version ``n + 1`` of its key there before it touches the cache. Cached values are
``{"v": n}``. Writes of one key are made by one process only (key ``i`` by worker
``i mod processes``), one at a time (a :class:`cachelab.LockTable` per process): ``Cache.set`` is
last-writer-wins, so two processes setting one key concurrently can land in either order, an
application race that no cache claims to prevent, and not what a soak should count.

Stale reads, exactly
--------------------
Every worker logs each read (key, version returned, start and end) and each write (key, version
committed, start, and the instant its cache call *returned*, i.e. after the Redis write and the
invalidation's announcement) to a binary file; the parent joins them after the run. All times are
``time.perf_counter()``, which on Linux is ``CLOCK_MONOTONIC``, one clock for every process.

A read of key ``k`` that started at ``s`` and returned version ``v`` is *behind* when the write of
version ``v + 1`` of ``k`` had already returned at ``s``; its *lag* is ``s`` minus that instant.
(Writes of a key are serialised, so the write of ``v + 1`` is the first one that superseded ``v``.)
Before that instant, ``v`` may legitimately be served: the cache cannot know of a write that has
not reached it. After it, the write's invalidation is on its way to the other processes; once it
is applied there, their L1 has dropped the key and their lookups no longer join reads or loads
that began before it, so the lag is the invalidation's delivery time. If an invalidation is lost,
the L1 entry still leaves at ``max_age_s``. So the policy's bound is ``B = max_age_s``
(``+ --grace-s``, 0 by default, for a machine so overloaded that delivery takes longer). A read
whose lag exceeds ``B`` is **stale beyond the bound**. Reads that the policy itself marks stale
(``Outcome.STALE``: a lease serving the previous value while one caller refills) are counted
apart, not as violations. Each read also records where its value came from (L1, Redis, its own
load, another caller's load), so a violation shows which path served it. A read that returns a
version never committed is an error.

Checks (exit code 1 if any fails)
---------------------------------
- no request raised (and none was still running ``--drain-s`` after the deadline);
- zero reads stale beyond the bound ``B``;
- lock tables (the policy's read and load single-flights, the writers' LockTable, the near cache's
  fills in flight, the subscriber's channels, background refreshes), sampled every second, are
  back to their idle sizes once the clients have stopped;
- asyncio tasks: after the clients stopped, exactly as many as before they started;
- connections: the worker's named connections (CLIENT LIST, sampled every few seconds) never
  exceed its pool plus its listener connections;
- resident memory (``/proc/self/statm``) grows by at most 10 % + 8 MiB between the end of the
  warm-up (``--warmup-s``) and the deadline.

The scale targets (>= 100,000 requests, >= 2,000 concurrent clients, >= 4 processes, >= 60 s) are
reported, not enforced: a slow machine reports the throughput it reached.

Usage
-----
    uv run python benchmarks/soak.py                       # 4 x 500 clients, 60 s
    uv run python benchmarks/soak.py --duration 10 --concurrency 100 --json out.json
    uv run python benchmarks/soak.py --write docs/benchmarks.md   # update the "soak" section
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # the benchmarks' shared helpers, however we are loaded
from _workers import require_shared_clock, run_worker, send, spawn  # noqa: E402

ROOT = HERE.parent.parent

PROCESSES = 4
CONCURRENCY = 500  # clients per process
DURATION_S = 60.0
KEYS = 2_000
ZIPF = 1.0
WRITE_RATIO = 0.05
THINK_MS = 500.0
WARMUP_S = 10.0
LOADER_MS = 20.0
JITTER_MS = 10.0
TTL_S = 20.0
TTL_JITTER = 0.2
MAX_AGE_S = 2.0
GRACE_S = 0.0
POOL = 64
DRAIN_S = 60.0
PROGRESS_S = 10.0
SAMPLE_S = 1.0
CONNECTION_SAMPLE_S = 5.0
RSS_FRACTION = 0.10
RSS_SLACK_MIB = 8.0
TARGETS = {"requests": 100_000, "concurrency": 2_000, "processes": 4, "duration_s": 60.0}
WRITE_KINDS = ("set", "write_through", "delete")
WRITE_MIX = (0.4, 0.8)  # cumulative: set below 0.4, write_through below 0.8, else delete

READ = struct.Struct("<IIddB")  # key index, version, start, end, source (index in SOURCES)
SOURCES = ("l1", "hit", "load", "shared", "stale", "refresh", "bypass", "other")
"""Where a read's value came from: this process's L1, else the lookup's Outcome (Redis hit, own
load, another caller's load, a value the policy marks stale, an early refresh, the loader while
Redis was unreachable)."""
WRITE = struct.Struct("<IIddB")  # key index, version, start, returned, kind index
MIB = 1024 * 1024


def key_name(index: int) -> str:
    return f"k{index}"


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- the worker processes -----------------------------------------------------------------------


class SoakWorker:
    """One process of the soak: its cache, its clients, its samplers and its logs."""

    def __init__(self, job: dict, client, monitor) -> None:
        import cachelab
        from cachelab.subscriber import Subscriber
        from cachelab.testing import SlowBackend

        self.job = job
        self.index = job["index"]
        self.processes = job["processes"]
        self.client = client
        self.monitor = monitor
        self.record = job["record"]  # the system of record: a hash, key -> committed version
        self.cache = cachelab.Cache(
            client,
            namespace=job["namespace"],
            ttl=job["ttl_s"],
            ttl_jitter=TTL_JITTER,
            policy=job["policy"],
            near=cachelab.NearCache(max_entries=job["keys"], max_age_s=job["max_age_s"]),
            invalidation=job["invalidation"],
        )
        self.subscriber = Subscriber.of(client)
        self.backend = SlowBackend(job["loader_ms"], job["jitter_ms"], seed=job["seed"])
        self.writing = cachelab.LockTable()
        self.rng = random.Random(None if job["seed"] is None else job["seed"] + self.index)
        weights = [1.0 / (i + 1) ** job["zipf"] for i in range(job["keys"])]
        self.cumulative = list(itertools.accumulate(weights))
        self.reads_log = open(job["reads_log"], "wb", buffering=1 << 16)  # noqa: SIM115
        self.writes_log = open(job["writes_log"], "wb", buffering=1 << 16)  # noqa: SIM115
        self.counts = dict.fromkeys(("reads", "marked_stale", *WRITE_KINDS), 0)
        self.errors: dict[str, int] = {}
        self.error_examples: list[str] = []
        self.requests = self.in_flight = self.peak_in_flight = 0
        self.samples: list[dict] = []
        self.connection_samples: list[dict] = []
        self.max_lag_ms = 0.0

    # --- requests

    def pick(self) -> int:
        return bisect.bisect_left(self.cumulative, self.rng.random() * self.cumulative[-1])

    def owned(self, index: int) -> int:
        """The key this process writes instead of ``index``: key i is written by worker i mod P."""
        index += self.index - index % self.processes
        return index if index < len(self.cumulative) else index - self.processes

    async def load(self, key: str) -> dict:
        version = int(await self.client.hget(self.record, key) or 0)  # read when the query starts
        await self.backend.fetch(key)  # ... and answered after the database's latency
        return {"v": version}

    async def read(self, index: int) -> None:
        from cachelab import Outcome

        key = key_name(index)
        in_l1 = key in self.cache.near  # an L1 hit does not suspend: lookup will find it there
        start = time.perf_counter()
        found = await self.cache.lookup(key, lambda: self.load(key))
        end = time.perf_counter()
        outcome = str(found.outcome)
        source = SOURCES.index("l1" if in_l1 else outcome if outcome in SOURCES else "other")
        self.counts["reads"] += 1
        self.counts["marked_stale"] += found.outcome is Outcome.STALE
        self.reads_log.write(READ.pack(index, found.value["v"], start, end, source))

    async def write(self, index: int) -> None:
        key = key_name(index)
        roll = self.rng.random()
        kind = 0 if roll < WRITE_MIX[0] else 1 if roll < WRITE_MIX[1] else 2
        async with self.writing.lock(key):  # one write of a key at a time (see the docstring)
            start = time.perf_counter()
            if kind == 1:  # write-through: the writer commits the version, then the cache stores it
                version = int(await self.client.hget(self.record, key) or 0) + 1

                async def commit(_value: dict) -> None:
                    await self.client.hset(self.record, key, version)

                await self.cache.write_through(key, {"v": version}, commit)
            else:  # cache-aside: commit, then update (set) or invalidate (delete) the cache
                version = await self.client.hincrby(self.record, key, 1)
                if kind == 0:
                    await self.cache.set(key, {"v": version})
                else:
                    await self.cache.delete(key)
            returned = time.perf_counter()
        self.counts[WRITE_KINDS[kind]] += 1
        self.writes_log.write(WRITE.pack(index, version, start, returned, kind))

    async def client_loop(self, deadline: float, think_s: float) -> None:
        await asyncio.sleep(self.rng.uniform(0, think_s))  # spread the first requests out
        while time.perf_counter() < deadline:
            index = self.pick()
            writing = self.rng.random() < self.job["write_ratio"]
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if writing:
                    await self.write(self.owned(index))
                else:
                    await self.read(index)
            except Exception as exc:
                self.error(exc)
            finally:
                self.in_flight -= 1
                self.requests += 1
            await asyncio.sleep(self.rng.expovariate(1 / think_s) if think_s else 0)

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        if len(self.error_examples) < 5:
            self.error_examples.append(f"{name}: {exc}"[:300])

    # --- what is sampled

    def tables(self) -> dict[str, int]:
        """Sizes of every per-key table the run could leak into (0 when idle)."""
        policy = self.cache.policy
        return {
            "policy_reads": len(getattr(policy, "reads", ())),
            "policy_loads": policy.statistics().in_flight,
            "writer_locks": len(self.writing),
            "near_fills": len(self.cache.near._in_flight),
            "subscriber_channels": self.subscriber.channels,
            "background": len(self.cache._background),
        }

    def idle_tables(self) -> dict[str, int]:
        """The sizes at rest: only the invalidator's own channel (pub/sub) stays subscribed."""
        idle = dict.fromkeys(self.tables(), 0)
        idle["subscriber_channels"] = int(self.job["invalidation"] == "pubsub")
        return idle

    def connection_names(self) -> set[str]:
        """This worker's connections in CLIENT LIST: the pool's and the listeners'."""
        return {
            self.job["client_name"],
            self.subscriber.client_name,
            *self.cache.invalidator.connection_names(),
        }

    async def connections(self) -> int:
        names = self.connection_names()
        return sum(c.get("name") in names for c in await self.monitor.client_list())

    async def sample(self, started: float, stop: asyncio.Event) -> None:
        """Every second: tasks, lock tables and loop lag; every few seconds connections and RSS;
        every PROGRESS_S a progress line to the parent."""
        next_connections = next_progress = 0.0
        while not stop.is_set():
            before = time.perf_counter()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAMPLE_S):
                    await stop.wait()
            now = time.perf_counter()
            lag_ms = max(0.0, (now - before - SAMPLE_S) * 1000) if not stop.is_set() else 0.0
            self.max_lag_ms = max(self.max_lag_ms, lag_ms)
            self.backend.log.clear()  # SlowBackend keeps a row per call: not this run's memory
            row = {
                "t": now - started,
                "tasks": len(asyncio.all_tasks()),
                "lag_ms": lag_ms,
                "in_flight": self.in_flight,
                **self.tables(),
            }
            self.samples.append(row)
            if now - started >= next_connections:
                next_connections += CONNECTION_SAMPLE_S
                self.connection_samples.append(
                    {
                        "t": now - started,
                        "connections": await self.connections(),
                        "rss": rss_bytes(),
                    }
                )
            if now - started >= next_progress + PROGRESS_S:
                next_progress += PROGRESS_S
                send(
                    {
                        "kind": "progress",
                        "tick": round(next_progress / PROGRESS_S),
                        "requests": self.requests,
                        "errors": sum(self.errors.values()),
                        "in_flight": self.in_flight,
                        "tasks": row["tasks"],
                        "rss": rss_bytes(),
                    }
                )

    def snapshot(self) -> dict:
        return {
            "tasks": len(asyncio.all_tasks()),
            "rss": rss_bytes(),
            "tables": self.tables(),
            "requests": self.requests,
        }

    async def settle(self, timeout: float = 10.0) -> dict:
        """Wait (bounded) until the tables are idle and the task count is back to its baseline."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.tables() == self.idle_tables() and len(asyncio.all_tasks()) <= self.baseline:
                break
            await asyncio.sleep(0.05)
        return self.snapshot()

    async def run(self, start_at: float) -> dict:
        job = self.job
        await self.cache.get("soak-start")  # starts the invalidator: counted in the baseline
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        started = time.perf_counter()
        deadline = started + job["duration_s"]
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample(started, stop), name="soak-sampler")
        self.baseline = len(asyncio.all_tasks())
        before = {"tasks": self.baseline, "connections": await self.connections()}
        think_s = job["think_ms"] / 1000
        clients = [
            asyncio.create_task(self.client_loop(deadline, think_s))
            for _ in range(job["concurrency"])
        ]
        await asyncio.sleep(max(0.0, started + job["warmup_s"] - time.perf_counter()))
        warm = {**self.snapshot(), "connections": await self.connections()}
        await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
        at_deadline = {**self.snapshot(), "connections": await self.connections()}
        _done, pending = await asyncio.wait(clients, timeout=job["drain_s"])
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            self.errors["unfinished"] = len(pending)
        finished_at = time.perf_counter()
        drained = await self.settle()
        drained["connections"] = await self.connections()
        stop.set()
        await sampler
        self.reads_log.close()
        self.writes_log.close()
        tables_max = {
            name: max((s[name] for s in self.samples), default=0) for name in self.tables()
        }
        return {
            "kind": "done",
            "index": self.index,
            "pid": os.getpid(),
            "requests": self.requests,
            "elapsed_s": finished_at - started,
            "counts": self.counts,
            "errors": self.errors,
            "error_examples": self.error_examples,
            "peak_in_flight": self.peak_in_flight,
            "before": before,
            "warm": warm,
            "at_deadline": at_deadline,
            "drained": drained,
            "idle_tables": self.idle_tables(),
            "tables_max": tables_max,
            "tasks_max": max(
                [warm["tasks"], at_deadline["tasks"], *(s["tasks"] for s in self.samples)]
            ),
            "max_loop_lag_ms": self.max_lag_ms,
            "connection_samples": self.connection_samples,
            "connections_bound": job["pool"] + len(self.connection_names()) - 1,
            "cache": self.cache.stats.as_dict(),
            "near": self.cache.near.stats.as_dict(),
            "invalidator": self.cache.invalidator.stats.as_dict(),
            "backend": {"calls": self.backend.calls, "peak_in_flight": self.backend.peak_in_flight},
        }


async def _worker() -> None:
    from cachelab.connection import ClientSpec

    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())
    spec = ClientSpec.from_json(job["spec"])
    client = type(spec)(spec.connection_class, {**spec.kwargs, "client_name": job["client_name"]})
    monitor = type(spec)(spec.connection_class, {**spec.kwargs, "client_name": job["monitor_name"]})
    client, monitor = client.client(max_connections=job["pool"]), monitor.client(max_connections=1)
    worker = None
    try:
        worker = SoakWorker(job, client, monitor)
        await asyncio.gather(*(client.ping() for _ in range(job["pool"])))  # warm the pool
        send({"kind": "ready", "pid": os.getpid()})
        start_at = json.loads(await reader.readline())["start_at"]
        send(await worker.run(start_at))
        await reader.read()  # stay until the parent is done measuring (it closes stdin)
    finally:
        if worker is not None:
            with contextlib.suppress(Exception):
                await worker.cache.aclose()
        await client.aclose()
        await monitor.aclose()


# --- the parent -----------------------------------------------------------------------------------


class Progress:
    """Collects the workers' progress lines; prints one line per tick once every worker sent it."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self.ticks: dict[int, list[dict]] = {}
        self.last_requests = 0

    def add(self, message: dict) -> None:
        got = self.ticks.setdefault(message["tick"], [])
        got.append(message)
        if len(got) < self.processes:
            return
        requests = sum(m["requests"] for m in got)
        rate = (requests - self.last_requests) / PROGRESS_S
        self.last_requests = requests
        print(
            f"  t={message['tick'] * PROGRESS_S:>4.0f} s  requests {requests:>9,}  "
            f"({rate:,.0f} req/s)  errors {sum(m['errors'] for m in got)}  "
            f"in flight {sum(m['in_flight'] for m in got):,}  "
            f"tasks {'/'.join(str(m['tasks']) for m in got)}  "
            f"RSS {'/'.join(format(m['rss'] / MIB, '.0f') for m in got)} MiB",
            file=sys.stderr,
            flush=True,
        )
        del self.ticks[message["tick"]]


async def _follow(proc: asyncio.subprocess.Process, progress: Progress | None) -> dict:
    """Read one worker's messages until its report ("done"); fail on "error" or an early exit."""
    from cachelab.errors import ExperimentError

    while True:
        line = await proc.stdout.readline()
        message = json.loads(line) if line.strip() else {"kind": "exit"}
        if message["kind"] == "progress":
            if progress is not None:
                progress.add(message)
            continue
        if message["kind"] in ("ready", "done"):
            return message
        if message["kind"] == "error":
            raise ExperimentError(f"a soak worker failed:\n{message['traceback']}")
        stderr = (await proc.stderr.read()).decode(errors="replace").strip()
        raise ExperimentError(
            f"a soak worker exited early (exit code {await proc.wait()}):\n{stderr[-2000:]}"
        )


async def run(args, logs: Path) -> dict:
    import cachelab
    from cachelab.connection import portable_spec
    from cachelab.instances import stop

    base = await cachelab.connect(args.url, quiet=True)
    source = cachelab.source_of(base)
    spec = portable_spec(base).to_json()
    run_id = uuid.uuid4().hex[:8]
    namespace = f"soak:{run_id}"
    record = f"{namespace}:record"
    common = {
        "spec": spec, "namespace": namespace, "record": record, "processes": args.processes,
        "concurrency": args.concurrency, "duration_s": args.duration, "keys": args.keys,
        "zipf": args.zipf, "write_ratio": args.write_ratio, "think_ms": args.think_ms,
        "warmup_s": args.warmup_s, "loader_ms": args.loader_ms, "jitter_ms": args.jitter_ms,
        "ttl_s": args.ttl_s, "max_age_s": args.max_age_s, "policy": args.policy,
        "invalidation": args.invalidation, "pool": args.pool, "drain_s": args.drain_s,
        "seed": args.seed,
    }  # fmt: skip
    workers = []
    try:
        for i in range(args.processes):
            job = {
                **common,
                "index": i,
                "client_name": f"soak-{run_id}-w{i}",
                "monitor_name": f"soak-{run_id}-w{i}-monitor",
                "reads_log": str(logs / f"reads-{i}.bin"),
                "writes_log": str(logs / f"writes-{i}.bin"),
            }
            workers.append(await spawn(HERE, job))
        async with asyncio.timeout(120):
            ready = await asyncio.gather(*(_follow(w, None) for w in workers))
        pids = [r["pid"] for r in ready]
        from peers import CpuMeter

        meter = CpuMeter([os.getpid(), *pids])
        start_at = time.perf_counter() + 0.5
        for w in workers:
            w.stdin.write((json.dumps({"start_at": start_at}) + "\n").encode())
        progress = Progress(args.processes)
        limit = args.duration + args.drain_s + 120
        async with asyncio.timeout(limit):
            reports = await asyncio.gather(*(_follow(w, progress) for w in workers))
        others_cpus = meter.others_cpus()
        final_versions = {k.decode(): int(v) for k, v in (await base.hgetall(record)).items()}
    finally:
        await asyncio.gather(*(stop(w) for w in workers))
        with contextlib.suppress(Exception):
            cleanup = cachelab.Cache(
                base,
                namespace=namespace,
                ttl=1,
                near=cachelab.NearCache(),
                invalidation=args.invalidation,
            )
            await cleanup.clear()
            await base.delete(record)
        await base.aclose()
    return {
        "server": source.describe(),
        "namespace": namespace,
        "others_cpus": others_cpus,
        "reports": sorted(reports, key=lambda r: r["index"]),
        "final_versions": final_versions,
    }


# --- analysis -------------------------------------------------------------------------------------


def _records(path: Path, layout: struct.Struct):
    return layout.iter_unpack(path.read_bytes()) if path.exists() else iter(())


def staleness(logs: Path, processes: int, final_versions: dict[str, int], bound_s: float) -> dict:
    """Join the reads with the writes (see "Stale reads, exactly" in the module docstring)."""
    from peers import _percentile

    superseded: dict[int, dict[int, float]] = {}  # key -> version -> when the write of it returned
    writes = 0
    for i in range(processes):
        for index, version, _start, returned, _kind in _records(logs / f"writes-{i}.bin", WRITE):
            superseded.setdefault(index, {})[version] = returned
            writes += 1
    reads = phantom = 0
    lags: list[float] = []
    latencies: list[float] = []
    behind_by: dict[str, int] = {}
    beyond_by: dict[str, int] = {}
    marked = 0
    examples: list[dict] = []
    for i in range(processes):
        for index, version, start, end, source in _records(logs / f"reads-{i}.bin", READ):
            reads += 1
            latencies.append(end - start)
            if version > final_versions.get(key_name(index), 0):
                phantom += 1
            if SOURCES[source] == "stale":
                marked += 1
                continue
            returned = superseded.get(index, {}).get(version + 1)
            if returned is None or returned >= start:
                continue
            lag = start - returned
            lags.append(lag)
            behind_by[SOURCES[source]] = behind_by.get(SOURCES[source], 0) + 1
            if lag > bound_s:
                beyond_by[SOURCES[source]] = beyond_by.get(SOURCES[source], 0) + 1
                if len(examples) < 5:
                    examples.append({"key": key_name(index), "version": version, "worker": i,
                                     "lag_s": round(lag, 4), "source": SOURCES[source],
                                     "read_s": round(end - start, 4)})  # fmt: skip
    return {
        "reads": reads,
        "writes": writes,
        "bound_s": bound_s,
        "behind": len(lags),
        "behind_over_100ms": sum(lag > 0.1 for lag in lags),
        "beyond_bound": sum(beyond_by.values()),
        "behind_by_source": behind_by,
        "beyond_by_source": beyond_by,
        "marked_stale": marked,
        "phantom": phantom,
        "lag_p99_ms": _percentile(lags, 0.99) * 1000,
        "lag_max_ms": max(lags, default=0.0) * 1000,
        "read_p50_ms": _percentile(latencies, 0.50) * 1000,
        "read_p99_ms": _percentile(latencies, 0.99) * 1000,
        "read_max_ms": max(latencies, default=float("nan")) * 1000,
        "examples": examples,
    }


def checks(result: dict, stale: dict) -> list[tuple[str, bool, str]]:
    """The enforced checks: (what, passed, what was measured)."""
    reports = result["reports"]
    errors = sum(sum(r["errors"].values()) for r in reports)
    examples = [e for r in reports for e in r["error_examples"]][:3]
    found = []
    found.append(
        (
            "zero errors",
            errors == 0 and stale["phantom"] == 0,
            f"{errors} errors"
            + (f" (e.g. {'; '.join(examples)})" if examples else "")
            + (f", {stale['phantom']} reads of uncommitted versions" if stale["phantom"] else ""),
        )
    )
    found.append(
        (
            f"zero reads stale beyond {stale['bound_s']:g} s",
            stale["beyond_bound"] == 0,
            f"{stale['beyond_bound']} beyond; {stale['behind']} behind at all, "
            f"max lag {stale['lag_max_ms']:.1f} ms",
        )
    )
    leaked = {
        r["index"]: {k: v for k, v in r["drained"]["tables"].items() if v != r["idle_tables"][k]}
        for r in reports
    }
    leaked = {i: t for i, t in leaked.items() if t}
    found.append(
        (
            "lock tables back to idle after the clients stopped",
            not leaked,
            f"left over: {leaked}"
            if leaked
            else f"max during the run {max(sum(r['tables_max'].values()) for r in reports)}, "
            "0 after",
        )
    )
    tasks = [(r["before"]["tasks"], r["drained"]["tasks"]) for r in reports]
    found.append(
        (
            "asyncio tasks back to their count before the clients started",
            all(after <= before for before, after in tasks),
            ", ".join(f"{b} -> {a}" for b, a in tasks),
        )
    )
    over = [
        (r["index"], max(s["connections"] for s in r["connection_samples"]), r["connections_bound"])
        for r in reports
        if r["connection_samples"]
    ]
    found.append(
        (
            "connections within pool + listeners",
            all(peak <= bound for _, peak, bound in over),
            ", ".join(f"w{i}: max {p} <= {b}" for i, p, b in over),
        )
    )
    growth = [(r["index"], r["warm"]["rss"], r["at_deadline"]["rss"]) for r in reports]
    found.append(
        (
            f"resident memory flat (growth <= {RSS_FRACTION:.0%} + {RSS_SLACK_MIB:g} MiB)",
            all(
                end - start <= RSS_FRACTION * start + RSS_SLACK_MIB * MIB
                for _, start, end in growth
            ),
            ", ".join(f"w{i}: {(e - s) / MIB:+.1f} MiB" for i, s, e in growth),
        )
    )
    return found


def summary(result: dict, stale: dict, args) -> dict:
    reports = result["reports"]
    requests = sum(r["requests"] for r in reports)
    elapsed = max(r["elapsed_s"] for r in reports)
    counts = {k: sum(r["counts"][k] for r in reports) for k in reports[0]["counts"]}
    near = {k: sum(r["near"][k] for r in reports) for k in reports[0]["near"]}
    invalidator = {k: sum(r["invalidator"][k] for r in reports) for k in reports[0]["invalidator"]}
    cache = {k: sum(r["cache"][k] for r in reports) for k in reports[0]["cache"]}
    concurrency = args.concurrency * args.processes
    return {
        "requests": requests,
        "req_per_s": requests / elapsed,
        "duration_s": args.duration,
        "elapsed_s": elapsed,
        "concurrency": concurrency,
        "processes": args.processes,
        "peak_in_flight": sum(r["peak_in_flight"] for r in reports),
        "errors": sum(sum(r["errors"].values()) for r in reports),
        "stale_beyond_bound": stale["beyond_bound"],
        "max_tasks": max(r["tasks_max"] for r in reports),
        "max_lock_table": max(max(r["tables_max"].values()) for r in reports),
        "counts": counts,
        "near": near,
        "near_hit_ratio": near["hits"] / max(1, near["hits"] + near["misses"]),
        "invalidator": invalidator,
        "cache": cache,
        "backend_calls": sum(r["backend"]["calls"] for r in reports),
        "max_loop_lag_ms": max(r["max_loop_lag_ms"] for r in reports),
        "scale": {
            "requests": requests >= TARGETS["requests"],
            "concurrency": concurrency >= TARGETS["concurrency"],
            "processes": args.processes >= TARGETS["processes"],
            "duration_s": args.duration >= TARGETS["duration_s"],
        },
    }


def worker_rows(result: dict) -> list[dict]:
    rows = []
    for r in result["reports"]:
        conns = r["connection_samples"]
        rows.append(
            {
                "worker": r["index"],
                "requests": r["requests"],
                "errors": sum(r["errors"].values()),
                "tasks": (
                    r["before"]["tasks"],
                    r["warm"]["tasks"],
                    r["tasks_max"],
                    r["at_deadline"]["tasks"],
                    r["drained"]["tasks"],
                ),
                "lock_table_max": max(r["tables_max"].values()),
                "lock_tables_max": r["tables_max"],
                "lock_tables_after": r["drained"]["tables"],
                "connections": (
                    r["warm"]["connections"],
                    r["at_deadline"]["connections"],
                    max((c["connections"] for c in conns), default=0),
                    r["connections_bound"],
                ),
                "rss": (r["warm"]["rss"], r["at_deadline"]["rss"]),
                "max_loop_lag_ms": r["max_loop_lag_ms"],
            }
        )
    return rows


def markdown(report: dict) -> str:
    s, st, setup = report["summary"], report["stale"], report["setup"]
    verdict = "**all met**" if report["ok"] else "**not all met**"
    offered = s["concurrency"] * 1000 / max(setup["think_ms"], 1.0)
    scale = s["scale"]
    lines = [
        f"## Soak: {setup['processes']} processes × {setup['concurrency']} clients for "
        f"{setup['duration_s']:g} s, with writes and invalidations",
        "",
        f"{setup['processes']} worker processes, each with one `Cache(policy="
        f"'{setup['policy']}', near=NearCache(max_age_s={setup['max_age_s']:g}), "
        f"invalidation='{setup['invalidation']}')` on a pool of {setup['pool']} connections and "
        f"{setup['concurrency']} client tasks. Each client thinks for an exponential time (mean "
        f"{setup['think_ms']:g} ms), then makes one request on a Zipf({setup['zipf']:g}) key out "
        f"of {setup['keys']:,}: a read (`lookup`, loader = the key's version from the system of "
        f"record + a {setup['loader_ms']:g} ± {setup['jitter_ms']:g} ms `SlowBackend`) or, with "
        f"probability {setup['write_ratio']:g}, a write (`set` / `write_through` / `delete`, "
        "40/40/20 %, each committing a new version first). TTL "
        f"{setup['ttl_s']:g} s ± {TTL_JITTER:.0%}. Server: {setup['server']}. Machine: "
        f"{setup['cpus']} CPUs, load average {setup['load_before']} before and "
        f"{setup['load_after']} after; other programs kept "
        f"{_cpus(setup['others_cpus'])} of the {setup['cpus']} CPUs busy on average during the "
        f"run ({setup['date']}). Produced by `{setup['command']}`.",
        "",
        "Every write commits version n + 1 of its key before its cache call; every read and write "
        "is logged with `time.perf_counter()` (`CLOCK_MONOTONIC`, one clock for all processes). "
        "A read is *behind* when the write that superseded the version it returned had already "
        "returned when the read started, by that much (its *lag*); it is *stale beyond the bound* "
        f"when the lag exceeds {st['bound_s']:g} s (the L1's maximum age, which bounds a lost "
        "invalidation). The checks below are enforced: the script exits 1 if one fails.",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| requests | {s['requests']:,} ({s['counts']['reads']:,} reads, "
        f"{s['counts']['set']:,} set, {s['counts']['write_through']:,} write_through, "
        f"{s['counts']['delete']:,} delete) |",
        f"| req/s | {s['req_per_s']:,.0f} |",
        f"| concurrency (client tasks) | {s['concurrency']:,} (peak requests in flight at "
        f"once: {s['peak_in_flight']:,}) |",
        f"| processes | {s['processes']} |",
        f"| duration | {s['duration_s']:g} s (clients done after {s['elapsed_s']:.1f} s) |",
        f"| errors | {s['errors']} |",
        f"| stale beyond bound ({st['bound_s']:g} s) | {st['beyond_bound']} (behind at all: "
        f"{st['behind']:,}, of which > 100 ms: {st['behind_over_100ms']:,}; max lag "
        f"{st['lag_max_ms']:.1f} ms; marked stale by the policy: {st['marked_stale']:,}) |",
        f"| reads behind at all, by where the value came from | "
        f"{_by_source(st['behind_by_source'])} |",
        f"| read latency p50 / p99 / max | {st['read_p50_ms']:.2f} / {st['read_p99_ms']:.1f} / "
        f"{st['read_max_ms']:.0f} ms |",
        f"| L1 hit ratio | {s['near_hit_ratio']:.1%} |",
        f"| backend loads / invalidations sent / applied | {s['backend_calls']:,} / "
        f"{s['invalidator']['sent']:,} / {s['invalidator']['applied']:,} |",
        f"| max asyncio tasks (one process) | {s['max_tasks']:,} |",
        f"| max lock-table size (one table) | {s['max_lock_table']:,} |",
        f"| max event-loop lag | {s['max_loop_lag_ms']:.0f} ms |",
        "",
        "| worker | requests | errors | tasks: before / warm / max / deadline / after | "
        "max lock table | connections: warm / end (max, bound) | RSS: warm → end (growth) |",
        "|---:|---:|---:|---|---:|---|---|",
    ]
    for w in report["workers"]:
        start, end = w["rss"]
        c = w["connections"]
        lines.append(
            f"| {w['worker']} | {w['requests']:,} | {w['errors']} | "
            f"{' / '.join(str(t) for t in w['tasks'])} | {w['lock_table_max']} | "
            f"{c[0]} / {c[1]} ({c[2]}, {c[3]}) | {start / MIB:.1f} → {end / MIB:.1f} MiB "
            f"({(end - start) / MIB:+.1f}) |"
        )
    lines += ["", f"Checks: {verdict}.", ""]
    lines += [f"- {'✅' if ok else '❌'} {what}: {got}" for what, ok, got in report["checks"]]
    missed = [k for k, ok in scale.items() if not ok]
    lines += [
        "",
        "Scale targets (>= 100,000 requests, >= 2,000 concurrent clients, >= 4 processes, "
        f">= 60 s): {'met' if not missed else 'not met: ' + ', '.join(missed)}.",
        "",
        "Notes:",
        "",
        f"- Offered load: {s['concurrency']:,} clients / {setup['think_ms']:g} ms mean think "
        f"time ≈ {offered:,.0f} req/s if requests took no time; served {s['req_per_s']:,.0f} "
        f"req/s, with up to {s['peak_in_flight']:,} requests in flight at once and event loops "
        f"lagging up to {s['max_loop_lag_ms']:.0f} ms. "
        + (
            "The processes were short of CPU: requests queued for the connection pools and the "
            "event loops, so throughput is what the CPU left to them allowed."
            if s["req_per_s"] < 0.8 * offered
            else "The workers kept up with the offered load."
        ),
        (
            f"- *Behind* reads (a newer write had already returned when the read started) show "
            f"the invalidation's delivery time: max {st['lag_max_ms']:.1f} ms, p99 of those "
            f"{st['lag_p99_ms']:.1f} ms, against a bound of {st['bound_s']:g} s."
            if st["behind"]
            else "- No read was behind a write that had already returned."
        ),
        "",
    ]
    return "\n".join(lines)


def _by_source(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())) or "none"


def _shown_arguments(argv: list[str]) -> list[str]:
    """The command line without the output options (--json, --write and their paths)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--json", "--write"):
            skip = True
        elif not arg.startswith(("--json=", "--write=")):
            shown.append(arg)
    return shown


def _cpus(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="clients per process")
    parser.add_argument("--duration", type=float, default=DURATION_S, help="seconds of requests")
    parser.add_argument("--keys", type=int, default=KEYS)
    parser.add_argument("--zipf", type=float, default=ZIPF, help="key popularity exponent")
    parser.add_argument("--write-ratio", type=float, default=WRITE_RATIO)
    parser.add_argument("--think-ms", type=float, default=THINK_MS, help="mean, per client")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=WARMUP_S,
        help="RSS, tasks and connections 'start' are taken this far in",
    )
    parser.add_argument("--loader-ms", type=float, default=LOADER_MS)
    parser.add_argument("--jitter-ms", type=float, default=JITTER_MS)
    parser.add_argument("--ttl-s", type=float, default=TTL_S)
    parser.add_argument("--max-age-s", type=float, default=MAX_AGE_S, help="NearCache max age")
    parser.add_argument(
        "--grace-s",
        type=float,
        default=GRACE_S,
        help="stale bound = max age + this (slow invalidation delivery)",
    )
    parser.add_argument(
        "--policy", default="distributed", choices=("local", "distributed", "lease")
    )
    parser.add_argument("--invalidation", default="pubsub", choices=("pubsub", "streams"))
    parser.add_argument("--pool", type=int, default=POOL, help="connections per process")
    parser.add_argument(
        "--drain-s",
        type=float,
        default=DRAIN_S,
        help="how long clients may take to finish after the deadline",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--url", default=None, help="Redis URL (default: cachelab.connect())")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument(
        "--write", type=Path, default=None, help="update the 'soak' section of this markdown file"
    )
    args = parser.parse_args()
    problems = [
        f"--{name.replace('_', '-')} must be >= {low}"
        for name, low in (
            ("processes", 1),
            ("concurrency", 1),
            ("keys", args.processes),
            ("pool", 1),
        )
        if getattr(args, name) < low
    ]
    if not 0 <= args.write_ratio <= 1:
        problems.append("--write-ratio must be in [0, 1]")
    if args.duration <= 0 or not 0 <= args.warmup_s < args.duration:
        problems.append("--duration must be > 0 and --warmup-s in [0, duration)")
    for name in ("think_ms", "loader_ms", "jitter_ms", "grace_s", "drain_s"):
        if getattr(args, name) < 0:
            problems.append(f"--{name.replace('_', '-')} must be >= 0")
    if args.max_age_s <= 0 or args.ttl_s <= 0:
        problems.append("--max-age-s and --ttl-s must be > 0")
    if problems:
        parser.error("; ".join(problems))
    require_shared_clock()

    from _report import write_section
    from peers import _load

    started = time.monotonic()
    load_before = _load()
    command = " ".join(["uv run python benchmarks/soak.py", *_shown_arguments(sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="cachelab-soak-") as tmp:
        logs = Path(tmp)
        result = asyncio.run(run(args, logs))
        bound = args.max_age_s + args.grace_s
        stale = staleness(logs, args.processes, result["final_versions"], bound)
    setup = {
        **{
            k: getattr(args, k)
            for k in (
                "processes",
                "concurrency",
                "keys",
                "zipf",
                "write_ratio",
                "think_ms",
                "warmup_s",
                "loader_ms",
                "jitter_ms",
                "ttl_s",
                "max_age_s",
                "grace_s",
                "policy",
                "invalidation",
                "pool",
                "seed",
            )
        },
        "duration_s": args.duration,
        "server": result["server"],
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": _load(),
        "others_cpus": result["others_cpus"],
        "run_time_s": time.monotonic() - started,
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }
    found = checks(result, stale)
    report = {
        "setup": setup,
        "summary": summary(result, stale, args),
        "stale": stale,
        "workers": worker_rows(result),
        "checks": found,
        "ok": all(ok for _, ok, _ in found),
        "raw": result["reports"],
    }
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    if args.write:
        write_section(args.write, text, "soak")
        print(f"wrote the soak section of {args.write}", file=sys.stderr)
    if not report["ok"]:
        failed = "; ".join(f"{what} ({got})" for what, ok, got in found if not ok)
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        run_worker(_worker)
    else:
        sys.exit(main())
