"""Every herd and refresh policy side by side, each under the workload that tests it.

The two axes of protection answer different questions, so no single workload measures both:

- **cold start** (:func:`~cachelab.experiments.run_stampede`): ``clients`` requests for one
  missing key at once, over ``instances``. This is where herd policies differ (who loads on a
  miss). A refresh policy has nothing to do here, since there is no value to refresh early or
  to serve stale, so only ``refresh="none"`` is accepted.
- **expiries** (:func:`~cachelab.experiments.run_expiry`): steady traffic at ``rate`` on a hot
  key whose value expires every ``ttl`` seconds. This is where refresh policies differ (whether
  the value goes missing at all), and where herd policies decide how many load when it does.
- **writes** (:func:`~cachelab.experiments.run_hot_key_writes`): the same traffic while a
  writer updates the row and deletes the cached copy ``writes_per_s`` times a second. This is
  where stale values come from: leases serve the old value *marked* stale, and an unfenced load
  that raced a delete stores an outdated value that readers take for fresh.

:func:`compare_policies` runs the chosen (herd, refresh) combinations of each workload and
returns one row per combination and workload, in the same units everywhere: backend loads per
event (the cold start, one expiry, one invalidation), misses and stale reads as shares of all
requests, and latency percentiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from ..cluster import RedisClient
from ..connection import connect
from ..errors import ConfigurationError
from ..metrics import Outcome
from ._checks import known_policy, positive
from .expiry import REFRESH_NAMES, run_expiry
from .expiry import _check as _check_expiry
from .hotkeys import run_hot_key_writes
from .stampede import _check_counts, run_stampede

__all__ = ["COMBINATIONS", "COMPARISON_COLUMNS", "WORKLOADS", "compare_policies", "policy_label"]

WORKLOADS = ("cold start", "expiries", "writes")

COMBINATIONS: dict[str, list[tuple[str, str]]] = {
    "cold start": [
        (herd, "none") for herd in ("none", "lock_table", "local", "distributed", "lease")
    ],
    "expiries": [
        ("none", "none"),
        ("distributed", "none"),
        ("none", "xfetch"),
        ("distributed", "xfetch"),
        ("distributed", "swr"),
    ],
    "writes": [(herd, "none") for herd in ("none", "local", "distributed", "lease")],
}
"""The (herd, refresh) pairs :func:`compare_policies` runs by default, per workload."""

COMPARISON_COLUMNS = [
    "workload", "herd", "refresh", "label", "requests", "events", "backend_loads",
    "loads_per_event", "misses", "stale_served", "outdated_reads", "p50_ms", "p99_ms",
]  # fmt: skip

REFRESH_LABELS = {"none": "hard TTL", "xfetch": "XFetch", "swr": "stale-while-revalidate"}

WAITED = (Outcome.LOAD, Outcome.SHARED, Outcome.ERROR)
"""Outcomes of requests that found no value and waited for a load (their own or another's)."""


def policy_label(herd: str, refresh: str) -> str:
    """How a combination is named in tables and charts, e.g. ``"distributed + XFetch"``."""
    return f"{herd} + {REFRESH_LABELS.get(refresh, refresh)}"


def _chosen(
    workloads: Iterable[str], combinations: Mapping[str, Iterable[tuple[str, str]]] | None
) -> dict[str, list[tuple[str, str]]]:
    """The combinations to run, checked: every name known, every pair meaningful."""
    workloads = list(workloads)
    source = COMBINATIONS if combinations is None else combinations
    unknown = [w for w in [*workloads, *source] if w not in WORKLOADS]
    if unknown:
        raise ConfigurationError(
            f"unknown workload {unknown[0]!r}; choose from {', '.join(map(repr, WORKLOADS))}"
        )
    chosen = {w: [tuple(pair) for pair in source.get(w, ())] for w in workloads}
    for workload, pairs in chosen.items():
        for pair in pairs:
            if len(pair) != 2:
                raise ConfigurationError(
                    f"combinations must be (herd, refresh) pairs, got {pair!r} for {workload!r}"
                )
            herd, refresh = pair
            known_policy(herd)
            if refresh not in REFRESH_NAMES:
                raise ConfigurationError(
                    f"unknown refresh {refresh!r}; choose one of {', '.join(REFRESH_NAMES)}"
                )
            if workload != "expiries" and refresh != "none":
                raise ConfigurationError(
                    f"refresh {refresh!r} does nothing in the {workload!r} workload: "
                    + (
                        "a cold key has no value to refresh early or to serve stale"
                        if workload == "cold start"
                        else "run_hot_key_writes measures herd policies under invalidations"
                    )
                    + "; use refresh 'none' there and compare refresh policies under 'expiries'"
                )
    if not any(chosen.values()):
        raise ConfigurationError("no combinations to run: name at least one workload with pairs")
    return {w: [(herd, refresh) for herd, refresh in pairs] for w, pairs in chosen.items()}


@dataclass(frozen=True)
class _Workloads:
    """The settings every run of one comparison shares."""

    clients: int
    instances: int
    loader_ms: float
    rate: float
    duration: float
    ttl: float
    writes_per_s: float
    beta: float
    redis: RedisClient
    seed: int | None

    async def cold_start(self, herd: str, _refresh: str) -> dict:
        run = await run_stampede(
            self.clients, self.instances, herd, self.loader_ms, redis=self.redis, seed=self.seed
        )
        s = run.summary
        return {"requests": self.clients, "events": 1, "backend_loads": s["backend_calls"],
                "misses": self.clients - s["hits"], "stale_served": 0, "outdated_reads": 0,
                "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}  # fmt: skip

    async def expiries(self, herd: str, refresh: str) -> dict:
        run = await run_expiry(
            self.rate, self.duration, self.ttl, self.loader_ms, self.instances, herd, refresh,
            self.beta, redis=self.redis, seed=self.seed,
        )  # fmt: skip
        s = run.summary
        return {"requests": s["requests"], "events": s["expiries"],
                "backend_loads": s["backend_calls"], "misses": s["misses"],
                "stale_served": s["stale"], "outdated_reads": 0,
                "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}  # fmt: skip

    async def writes(self, herd: str, _refresh: str) -> dict:
        run = await run_hot_key_writes(
            self.rate, self.writes_per_s, self.duration, self.loader_ms, self.instances, herd,
            redis=self.redis, seed=self.seed,
        )  # fmt: skip
        s, reads = run.summary, run.requests
        return {"requests": s["reads"], "events": reads["invalidated_version"].max(),
                "backend_loads": s["backend_calls"],
                "misses": reads["outcome"].isin(WAITED).sum(),
                "stale_served": s["stale_served"],
                "outdated_reads": s["stale_after_invalidation"],
                "p50_ms": reads["latency_ms"].quantile(0.5), "p99_ms": s["p99_ms"]}  # fmt: skip

    async def measure(self, workload: str, herd: str, refresh: str) -> dict:
        run = {"cold start": self.cold_start, "expiries": self.expiries, "writes": self.writes}
        measured = await run[workload](herd, refresh)
        events = int(measured["events"])
        return {
            "workload": workload,
            "herd": herd,
            "refresh": refresh,
            "label": policy_label(herd, refresh),
            **{k: int(v) for k, v in measured.items() if not k.endswith("_ms")},
            "events": events,
            "loads_per_event": measured["backend_loads"] / max(1, events),
            "p50_ms": float(measured["p50_ms"]),
            "p99_ms": float(measured["p99_ms"]),
        }


async def compare_policies(
    clients: int = 200,
    instances: int = 4,
    loader_ms: float = 50.0,
    *,
    rate: float = 200.0,
    duration: float = 2.0,
    ttl: float = 0.5,
    writes_per_s: float = 20.0,
    beta: float = 1.0,
    workloads: Iterable[str] = WORKLOADS,
    combinations: Mapping[str, Iterable[tuple[str, str]]] | None = None,
    redis: RedisClient | None = None,
    seed: int | None = None,
    on_run: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Run each (herd, refresh) combination under its workload; one row per run.

    ``clients`` and ``instances`` set the cold start; ``rate`` requests/s for ``duration``
    seconds over ``instances`` set the steady workloads (``ttl`` for expiries, ``writes_per_s``
    for writes; XFetch uses ``beta``, stale-while-revalidate a soft TTL of ``ttl / 2``). The
    default of one write per load time (20/s for 50 ms loads) makes loads and deletes overlap
    all the time, so the stale-set race happens in every run rather than by chance.
    ``combinations`` maps a workload to its (herd, refresh) pairs (default
    :data:`COMBINATIONS`). Everything is checked before the first run; ``on_run`` is called
    with each row as it is measured.

    Columns (``COMPARISON_COLUMNS``): ``events`` is what each workload repeats (1 for the cold
    start, the expiry events, the invalidations that reads saw), ``backend_loads`` the loader
    calls, ``misses`` the requests that found no value and waited for a load, ``stale_served``
    the requests answered with a value marked stale, ``outdated_reads`` the requests answered,
    as if fresh, with a value older than a delete that had already completed (a stale set).
    """
    chosen = _chosen(workloads, combinations)
    _check_counts(clients, instances, loader_ms)
    positive(rate=rate, duration=duration, writes_per_s=writes_per_s)
    _check_expiry(rate, duration, ttl, loader_ms, instances, "none")
    if not isinstance(beta, int | float) or isinstance(beta, bool) or not beta > 0:
        raise ConfigurationError(f"beta must be a positive number, got {beta!r}")
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    runs = _Workloads(clients, instances, loader_ms, rate, duration, ttl, writes_per_s, beta,
                      base, seed)  # fmt: skip
    rows = []
    try:
        for workload, pairs in chosen.items():
            for herd, refresh in pairs:
                rows.append(await runs.measure(workload, herd, refresh))
                if on_run is not None:
                    on_run(rows[-1])
    finally:
        if owned:
            await base.aclose()
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
