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
import redis.asyncio as aioredis

from ..cache import Cache
from ..connection import clone_client, connect
from ..errors import ConfigurationError
from ..metrics import Outcome
from ..policies import HERD_POLICIES
from ..testing import Gate, SlowBackend

__all__ = ["REQUEST_COLUMNS", "StampedeResult", "run_stampede", "sweep_stampede"]

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
    counts and latency percentiles.
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
    redis: aioredis.Redis | None = None,
    jitter_ms: float = 0.0,
    failures: int = 0,
    ttl: float = 60.0,
    seed: int | None = None,
) -> StampedeResult:
    """Release ``clients`` requests for one cold key across ``instances`` and measure.

    ``failures`` makes the backend's first calls fail (to see how a policy spreads an error).
    Without ``redis``, a client from :func:`cachelab.connect` is used (and closed afterwards).
    The run's keys live in a fresh namespace that is removed at the end.
    """
    _check_counts(clients, instances, loader_ms)
    if policy not in HERD_POLICIES:
        raise ConfigurationError(
            f"unknown herd policy {policy!r}; choose one of {', '.join(HERD_POLICIES)}"
        )
    owned = redis is None
    base = await connect(quiet=True) if owned else redis
    namespace = f"cachelab:stampede:{uuid.uuid4().hex[:12]}"
    per_instance = -(-clients // instances)
    pools = [clone_client(base, max_connections=min(64, per_instance)) for _ in range(instances)]
    caches = [Cache(p, namespace=namespace, ttl=ttl, policy=policy) for p in pools]
    backend = SlowBackend(loader_ms, jitter_ms, seed=seed)
    backend.fail_next = failures
    gate = Gate()
    key = "hot"

    async def request(client: int) -> dict:
        instance = client % instances
        await gate.wait()
        start = time.perf_counter()
        try:
            outcome = (await caches[instance].lookup(key, lambda: backend.fetch(key))).outcome
        except Exception:
            outcome = Outcome.ERROR
        return {"instance": instance, "client": client, "start": start,
                "end": time.perf_counter(), "outcome": str(outcome)}  # fmt: skip

    try:
        await asyncio.gather(*(_warm(p, min(64, per_instance)) for p in pools))
        tasks = [asyncio.ensure_future(request(c)) for c in range(clients)]
        try:
            await gate.arrivals(clients)
            opened = gate.open()
            rows = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        await caches[0].clear()
    finally:
        await asyncio.gather(*(p.aclose() for p in pools))
        if owned:
            await base.aclose()

    frame = pd.DataFrame(rows)
    frame["start_ms"] = (frame["start"] - opened) * 1000
    frame["end_ms"] = (frame["end"] - opened) * 1000
    frame["latency_ms"] = frame["end_ms"] - frame["start_ms"]
    frame["policy"] = policy
    frame = frame[REQUEST_COLUMNS]
    counts = frame["outcome"].value_counts()
    latency = frame["latency_ms"]
    summary = {
        "policy": policy,
        "clients": clients,
        "instances": instances,
        "loader_ms": float(loader_ms),
        "backend_calls": backend.calls,
        "peak_backend_concurrency": backend.peak_in_flight,
        "hits": int(counts.get(Outcome.HIT, 0)),
        "loads": int(counts.get(Outcome.LOAD, 0)),
        "coalesced": int(counts.get(Outcome.SHARED, 0)),
        "errors": int(counts.get(Outcome.ERROR, 0)),
        "p50_ms": float(latency.quantile(0.50)),
        "p95_ms": float(latency.quantile(0.95)),
        "p99_ms": float(latency.quantile(0.99)),
        "max_ms": float(latency.max()),
    }
    return StampedeResult(frame, backend.calls_frame(origin=opened), summary)


async def _warm(client: aioredis.Redis, connections: int) -> None:
    """Open the pool's connections before the gate, so latency measures the cache, not TCP setup."""
    await asyncio.gather(*(client.ping() for _ in range(connections)))


async def sweep_stampede(
    clients: Iterable[int] = (10, 100, 1000),
    policies: Iterable[str] = ("none", "local"),
    instances: int = 4,
    loader_ms: float = 50.0,
    *,
    redis: aioredis.Redis | None = None,
    on_run: Callable[[dict], None] | None = None,
    **options,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every (policy, clients) combination; return (summaries, all requests).

    ``on_run`` is called with each run's summary as it finishes (the CLI's progress bar uses it).
    """
    clients, policies = list(clients), list(policies)
    for policy in policies:
        if policy not in HERD_POLICIES:
            raise ConfigurationError(
                f"unknown herd policy {policy!r}; choose from {', '.join(HERD_POLICIES)}"
            )
    for n in clients:
        _check_counts(n, min(instances, n), loader_ms)
    owned = redis is None
    base = await connect(quiet=True) if owned else redis
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
