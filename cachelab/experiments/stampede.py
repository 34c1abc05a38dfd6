"""The cold-key stampede: many clients ask for one missing key at the same moment.

``run_stampede`` simulates ``instances`` application instances (each with its own Cache, its own
herd policy state and its own connection pool, as separate processes would have) whose ``clients``
requests are released together through a :class:`~cachelab.testing.Gate`. The backend counts how
often it was called: with no protection that is about one call per client; with per-process
single-flight it is one per instance.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client, connect
from ..errors import ConfigurationError
from ..instances import StampedePlan, prepare_instance, run_in_processes
from ..metrics import Outcome
from ..testing import BACKEND_COLUMNS, Gate
from ._checks import known_policy
from .traffic import quiet_gc

__all__ = ["REQUEST_COLUMNS", "StampedeResult", "run_arrivals", "run_stampede", "sweep_stampede"]

REQUEST_COLUMNS = ["policy", "instance", "client", "start_ms", "end_ms", "latency_ms", "outcome"]
SUMMARY_COLUMNS = [
    "policy", "clients", "instances", "loader_ms", "backend_calls", "peak_backend_concurrency",
    "hits", "loads", "coalesced", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms",
]  # fmt: skip


@dataclass
class StampedeResult:
    """What one stampede run produced.

    ``requests`` has one row per client request (see ``REQUEST_COLUMNS``; times in ms from the
    moment the gate opened), ``backend`` one row per backend call, and ``summary`` the run's
    counts and latency percentiles. In the summary, ``hits``, ``loads``, ``coalesced`` and
    ``errors`` count *requests* by outcome and add up to ``clients`` (``loads``: requests whose
    own loader call succeeded), while ``backend_calls`` counts every loader call, failed ones too.
    """

    requests: pd.DataFrame
    backend: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<StampedeResult policy={s['policy']} clients={s['clients']} "
            f"instances={s['instances']} backend_calls={s['backend_calls']} "
            f"p99={s['p99_ms']:.1f} ms>"
        )


def _check_counts(clients: int, instances: int, loader_ms: float) -> None:
    if not isinstance(clients, int) or clients < 1:
        raise ConfigurationError(f"clients must be a positive int, got {clients!r}")
    if not isinstance(instances, int) or not 1 <= instances <= clients:
        raise ConfigurationError(
            f"instances must be an int between 1 and clients ({clients}), got {instances!r}"
        )
    if loader_ms < 0:
        raise ConfigurationError(f"loader_ms must be >= 0, got {loader_ms!r}")


async def run_stampede(
    clients: int = 1000,
    instances: int = 4,
    policy: str = "local",
    loader_ms: float = 50.0,
    *,
    redis: RedisClient | None = None,
    processes: bool = False,
    jitter_ms: float = 0.0,
    failures: int = 0,
    ttl: float = 60.0,
    pool_size: int = 64,
    policy_options: dict | None = None,
    seed: int | None = None,
) -> StampedeResult:
    """Release ``clients`` requests for one cold key across ``instances`` and measure.

    With ``processes=True`` every instance is a real OS process (with its own event loop, its own
    CPU time and its own backend counter), all released at one shared instant; this needs a real
    Redis server. The default simulates the instances inside this event loop, which is faster to
    start and deterministic enough for counts, but shares one CPU between all instances.

    ``failures`` makes the backend's first calls fail (to see how a policy spreads an error; with
    processes, each process's backend fails its first ``failures`` calls). ``pool_size`` caps each
    instance's connections: with a fast loader, how many GETs can be in flight at once decides how
    many requests miss before the first load is stored. Without ``redis``, a client from
    :func:`cachelab.connect` is used (and closed afterwards). The run's keys live in a fresh
    namespace that is removed at the end. ``policy_options`` go to the policy's constructor, e.g.
    ``{"wait": "poll"}`` for ``"distributed"``.
    """
    _check_counts(clients, instances, loader_ms)
    known_policy(policy, policy_options)  # bad names and options fail here, before any work
    if not isinstance(pool_size, int) or pool_size < 1:
        raise ConfigurationError(f"pool_size must be a positive int, got {pool_size!r}")
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    plan = StampedePlan(
        namespace=f"cachelab:stampede:{uuid.uuid4().hex[:12]}",
        policy=policy,
        loader_ms=float(loader_ms),
        jitter_ms=float(jitter_ms),
        failures=failures,
        ttl=ttl,
        connections=min(pool_size, -(-clients // instances)),
        seed=seed,
        policy_options=dict(policy_options or {}),
    )
    assignments = [list(range(i, clients, instances)) for i in range(instances)]
    try:
        if processes:
            rows, records = await run_in_processes(base, plan, assignments)
            calls = pd.DataFrame(records, columns=BACKEND_COLUMNS)
        else:
            rows, calls = await _run_in_this_loop(base, plan, assignments)
        await Cache(base, namespace=plan.namespace, ttl=ttl).clear()
    finally:
        if owned:
            await base.aclose()
    return _result(rows, calls, plan, clients, instances)


async def _run_in_this_loop(base, plan: StampedePlan, assignments: list[list[int]]):
    pools = [clone_client(base, max_connections=plan.connections) for _ in assignments]
    backend = plan.backend()  # one shared database, as for real instances
    gate = Gate()
    runs = []
    try:
        for i, (pool, ids) in enumerate(zip(pools, assignments, strict=True)):
            runs.append(await prepare_instance(i, pool, plan, ids, backend, gate))
        await gate.arrivals(sum(map(len, assignments)))
        with quiet_gc():
            opened = gate.open()
            rows = [row for finished in await asyncio.gather(*runs) for row in finished]
    finally:
        for run in runs:
            run.cancel()
        await asyncio.gather(*(p.aclose() for p in pools))
    return _relative(rows, opened), backend.calls_frame(origin=opened)


def _relative(rows: list[dict], opened: float) -> list[dict]:
    for row in rows:
        row["start_ms"] = (row.pop("start") - opened) * 1000
        row["end_ms"] = (row.pop("end") - opened) * 1000
    return rows


def _peak_concurrency(calls: pd.DataFrame) -> int:
    """Most backend calls in flight at once, from their start and end times."""
    events = sorted([(t, 1) for t in calls["start_ms"]] + [(t, -1) for t in calls["end_ms"]])
    peak = running = 0
    for _t, step in events:
        running += step
        peak = max(peak, running)
    return peak


def _result(rows, calls: pd.DataFrame, plan: StampedePlan, clients, instances) -> StampedeResult:
    frame = pd.DataFrame(rows)
    frame["latency_ms"] = frame["end_ms"] - frame["start_ms"]
    frame["policy"] = plan.policy
    frame = frame.sort_values("client", ignore_index=True)[REQUEST_COLUMNS]
    counts = frame["outcome"].value_counts()
    latency = frame["latency_ms"]
    summary = {
        "policy": plan.policy,
        "clients": clients,
        "instances": instances,
        "loader_ms": plan.loader_ms,
        "backend_calls": len(calls),
        "peak_backend_concurrency": _peak_concurrency(calls),
        "hits": int(counts.get(Outcome.HIT, 0)),
        "loads": int(counts.get(Outcome.LOAD, 0)),
        "coalesced": int(counts.get(Outcome.SHARED, 0)),
        "errors": int(counts.get(Outcome.ERROR, 0)),
        "p50_ms": float(latency.quantile(0.50)),
        "p95_ms": float(latency.quantile(0.95)),
        "p99_ms": float(latency.quantile(0.99)),
        "max_ms": float(latency.max()),
    }
    return StampedeResult(frame, calls, summary)


async def run_arrivals(
    clients: int = 200,
    spread_ms: float = 200.0,
    loader_ms: float = 50.0,
    policy: str = "none",
    *,
    redis: RedisClient | None = None,
    ttl: float = 60.0,
) -> StampedeResult:
    """``clients`` requests for one cold key, arriving one after another, evenly spread over
    ``spread_ms`` (one instance): arrivals at a steady rate, instead of all at once.

    The herd is then the requests that arrive while the key is missing, about *arrival rate x
    time the key stays missing*. Besides the usual summary, ``first_stored_ms`` is when the first
    load's value was in Redis (its request's end), and ``arrived_while_missing`` counts the
    requests that started before that moment: only they can have missed.
    """
    _check_counts(clients, 1, loader_ms)
    known_policy(policy)
    if not isinstance(spread_ms, int | float) or isinstance(spread_ms, bool) or spread_ms < 0:
        raise ConfigurationError(f"spread_ms must be a number >= 0, got {spread_ms!r}")
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    plan = StampedePlan(
        namespace=f"cachelab:arrivals:{uuid.uuid4().hex[:12]}", policy=policy,
        loader_ms=float(loader_ms), jitter_ms=0.0, failures=0, ttl=ttl,
        connections=min(64, clients), seed=None,
    )  # fmt: skip
    pool = clone_client(base, max_connections=plan.connections)
    cache = Cache(pool, namespace=plan.namespace, ttl=ttl, policy=policy)
    backend, gate = plan.backend(), Gate()

    async def loader():
        return await backend.fetch("hot")

    async def request(client_id: int) -> dict:
        await gate.wait()
        await asyncio.sleep(client_id * spread_ms / clients / 1000)
        start = time.perf_counter()
        try:
            outcome = (await cache.lookup("hot", loader)).outcome
        except Exception:
            outcome = Outcome.ERROR
        return {"instance": 0, "client": client_id, "start": start, "end": time.perf_counter(),
                "outcome": str(outcome)}  # fmt: skip

    try:
        await _warm(pool, plan.connections)
        runs = asyncio.gather(*(request(c) for c in range(clients)))
        await gate.arrivals(clients)
        with quiet_gc():
            opened = gate.open()
            rows = await runs
        await cache.clear()
    finally:
        await pool.aclose()
        if owned:
            await base.aclose()
    result = _result(_relative(rows, opened), backend.calls_frame(origin=opened), plan, clients, 1)
    loads = result.requests[result.requests["outcome"] == Outcome.LOAD]
    first_stored = float(loads["end_ms"].min()) if len(loads) else float("nan")
    result.summary.update(
        spread_ms=float(spread_ms),
        first_stored_ms=first_stored,
        arrived_while_missing=int((result.requests["start_ms"] < first_stored).sum()),
    )
    return result


async def _warm(client: RedisClient, connections: int) -> None:
    """Open the pool's connections before the gate, so latency measures the cache, not TCP setup."""
    await asyncio.gather(*(client.ping() for _ in range(connections)))


async def sweep_stampede(
    clients: Iterable[int] = (10, 100, 1000),
    policies: Iterable[str] = ("none", "local"),
    instances: int = 4,
    loader_ms: float = 50.0,
    *,
    redis: RedisClient | None = None,
    on_run: Callable[[dict], None] | None = None,
    **options,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every (policy, clients) combination; return (summaries, all requests).

    ``on_run`` is called with each run's summary as it finishes (the CLI's progress bar uses it).
    """
    clients, policies = list(clients), list(policies)
    for policy in policies:
        known_policy(policy)
    for n in clients:
        _check_counts(n, min(instances, n), loader_ms)
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    summaries, frames = [], []
    try:
        for policy in policies:
            for n in clients:
                result = await run_stampede(
                    n, min(instances, n), policy, loader_ms, redis=base, **options
                )
                summaries.append(result.summary)
                frames.append(result.requests.assign(clients=n))
                if on_run is not None:
                    on_run(result.summary)
    finally:
        if owned:
            await base.aclose()
    return pd.DataFrame(summaries, columns=SUMMARY_COLUMNS), pd.concat(frames, ignore_index=True)
