"""The expiry stampede: steady traffic on a hot key whose value keeps expiring.

A cold key is one stampede; a hot key with a TTL is a stampede every TTL. ``run_expiry`` sends
Poisson-distributed requests at a steady ``rate`` to one key for ``duration`` seconds against a
real cache and groups the backend calls into *expiry events* (recomputes of the same value
generation). With a hard TTL every event is a small herd plus a burst of misses; XFetch recomputes
a little before expiry (about ``e^(1/beta)`` recomputes per event, no misses), and
stale-while-revalidate serves the old value while one background refresh runs.

``simulate_xfetch`` runs the same XFetch decision (:class:`cachelab.refresh.XFetch`) in a
discrete-event simulation with a virtual clock, so thousands of expiries take a second: that is
how the closed form is checked precisely, while ``run_expiry`` shows it live on Redis.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pandas as pd

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client, connect
from ..errors import ConfigurationError
from ..metrics import Outcome
from ..refresh import RefreshPolicy, StaleWhileRevalidate, XFetch
from ..testing import SlowBackend
from ._checks import known_policy, positive
from .traffic import drive_poisson

__all__ = [
    "EXPIRY_REQUEST_COLUMNS",
    "ExpiryResult",
    "expected_xfetch_recomputes",
    "run_expiry",
    "simulate_xfetch",
]

EXPIRY_REQUEST_COLUMNS = ["instance", "t_s", "latency_ms", "outcome", "window"]
WINDOW_COLUMNS = ["window", "start_s", "recomputes", "misses", "stale", "p99_ms"]
REFRESH_NAMES = ("none", "xfetch", "swr")


def expected_xfetch_recomputes(beta: float) -> float:
    """The paper's closed form for Poisson reads: about ``e^(1/beta)`` recomputes per expiry."""
    return math.exp(1 / beta)


@dataclass
class ExpiryResult:
    """One expiry run: ``requests`` (one row per request, ``t_s`` from the start), ``backend``
    (one row per backend call), ``windows`` (one row per expiry event) and ``summary``."""

    requests: pd.DataFrame
    backend: pd.DataFrame
    windows: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<ExpiryResult refresh={s['refresh']} beta={s['beta']} rate={s['rate']}/s "
            f"expiries={s['expiries']} recomputes/expiry={s['recomputes_per_expiry']:.2f} "
            f"misses={s['misses']}>"
        )


def _refresh(name: str, beta: float, soft_ttl: float | None, ttl: float, seed) -> RefreshPolicy:
    if name == "none":
        return RefreshPolicy()
    if name == "xfetch":  # its own stream: sharing the arrivals' seed would correlate the two
        return XFetch(beta, rng=random.Random(None if seed is None else f"xfetch:{seed}"))
    if name == "swr":
        return StaleWhileRevalidate(soft_ttl if soft_ttl is not None else ttl / 2)
    raise ConfigurationError(f"unknown refresh {name!r}; choose one of {', '.join(REFRESH_NAMES)}")


def _check(rate, duration, ttl, loader_ms, instances, policy) -> None:
    positive(rate=rate, duration=duration, ttl=ttl)
    if loader_ms < 0 or loader_ms / 1000 >= ttl:
        raise ConfigurationError(
            f"loader_ms must be >= 0 and shorter than the ttl ({ttl:g} s), got {loader_ms!r}"
        )
    if not isinstance(instances, int) or instances < 1:
        raise ConfigurationError(f"instances must be a positive int, got {instances!r}")
    known_policy(policy)


async def run_expiry(
    rate: float = 200.0,
    duration: float = 20.0,
    ttl: float = 2.0,
    loader_ms: float = 50.0,
    instances: int = 1,
    policy: str = "none",
    refresh: str = "none",
    beta: float = 1.0,
    *,
    soft_ttl: float | None = None,
    redis: RedisClient | None = None,
    seed: int | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> ExpiryResult:
    """Steady Poisson traffic at ``rate`` requests/s on one hot key for ``duration`` seconds.

    ``refresh`` is ``"none"`` (hard TTL), ``"xfetch"`` (with ``beta``) or ``"swr"`` (stale after
    ``soft_ttl``, default ``ttl / 2``). The key is filled before the clock starts, so every miss
    is caused by an expiry, not by a cold start. ``on_progress`` is called with the elapsed
    fraction (0..1) about ten times a second.
    """
    _check(rate, duration, ttl, loader_ms, instances, policy)
    refresher = _refresh(refresh, beta, soft_ttl, ttl, seed)
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    namespace = f"cachelab:expiry:{uuid.uuid4().hex[:12]}"
    clients = [clone_client(base, max_connections=32) for _ in range(instances)]
    caches = [
        Cache(c, namespace=namespace, ttl=ttl, policy=policy, refresh=refresher) for c in clients
    ]
    backend = SlowBackend(loader_ms)
    rng = random.Random(seed)
    key = "hot"

    async def loader():
        return await backend.fetch(key)

    rows: list[dict] = []
    try:
        await caches[0].refresh(key, loader)  # warm: the run starts with a fresh value
        backend.log.clear()
        backend.calls = 0
        start = time.perf_counter()
        rows = await _drive(caches, key, loader, rate, duration, rng, start, on_progress)
        for cache in caches:
            await cache.aclose()
        await caches[0].clear()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
        if owned:
            await base.aclose()
    settings = {
        "rate": rate, "duration": duration, "ttl": ttl, "loader_ms": loader_ms,
        "instances": instances, "policy": policy, "refresh": refresh,
        "beta": beta if refresh == "xfetch" else None,
    }  # fmt: skip
    return _expiry_result(rows, backend.calls_frame(origin=start), ttl, settings)


async def _drive(caches, key, loader, rate, duration, rng, start, on_progress) -> list[dict]:
    """Fire requests at Poisson arrival times; each records its outcome and latency."""
    rows: list[dict] = []

    async def request(_arrival: float) -> None:
        instance = rng.randrange(len(caches))
        began = time.perf_counter()
        try:
            outcome = str((await caches[instance].lookup(key, loader)).outcome)
        except Exception:
            outcome = str(Outcome.ERROR)
        ended = time.perf_counter()
        rows.append({"instance": instance, "t_s": began - start,
                     "latency_ms": (ended - began) * 1000, "outcome": outcome})  # fmt: skip

    await drive_poisson(rate, duration, rng, request, start=start, on_progress=on_progress)
    return rows


EVENT_SLACK_S = 0.01
"""A call still belongs to an event if it starts within this long after the event's first load
ended (the time the stored value takes to become visible)."""


def _expiry_events(calls: pd.DataFrame) -> list[float]:
    """Start times (s) of expiry events.

    The recomputes of one value generation overlap: they all start while the first of them is
    still loading (after that, the new value is there and nobody needs to recompute). So a call
    that starts after the current event's first load has ended opens the next event. That holds
    however close together events come (XFetch refreshes well before the TTL).
    """
    starts: list[float] = []
    first_end = -1.0
    for start, end in sorted(zip(calls["start_ms"] / 1000, calls["end_ms"] / 1000, strict=True)):
        if not starts or start > first_end + EVENT_SLACK_S:
            starts.append(start)
            first_end = end
    return starts


def _expiry_result(rows, calls: pd.DataFrame, ttl: float, summary: dict) -> ExpiryResult:
    requests = pd.DataFrame(rows, columns=EXPIRY_REQUEST_COLUMNS[:-1]).sort_values("t_s")
    events = _expiry_events(calls)
    # a request belongs to the event it led up to: windows split halfway between events
    edges = [events[0] - ttl / 2, *((a + b) / 2 for a, b in pairwise(events))] if events else []
    requests["window"] = np.searchsorted(edges, requests["t_s"], side="right") - 1
    call_window = np.searchsorted(events, calls["start_ms"] / 1000, side="right") - 1
    missed = requests["outcome"].isin([Outcome.LOAD, Outcome.SHARED, Outcome.ERROR])
    windows = pd.DataFrame(
        {
            "window": range(len(events)),
            "start_s": events,
            "recomputes": np.bincount(call_window, minlength=len(events)) if len(events) else [],
        }
    )
    per_window = requests.assign(miss=missed, stale=requests["outcome"] == Outcome.STALE)
    grouped = per_window[per_window["window"] >= 0].groupby("window")
    windows["misses"] = grouped["miss"].sum().reindex(windows["window"], fill_value=0).to_numpy()
    windows["stale"] = grouped["stale"].sum().reindex(windows["window"], fill_value=0).to_numpy()
    windows["p99_ms"] = grouped["latency_ms"].quantile(0.99).reindex(windows["window"]).to_numpy()
    latency = requests["latency_ms"]
    summary.update(
        requests=len(requests),
        backend_calls=len(calls),
        expiries=len(events),
        recomputes_per_expiry=float(windows["recomputes"].mean()) if len(events) else 0.0,
        max_recomputes=int(windows["recomputes"].max()) if len(events) else 0,
        misses=int(missed.sum()),
        stale=int((requests["outcome"] == Outcome.STALE).sum()),
        errors=int((requests["outcome"] == Outcome.ERROR).sum()),
        p50_ms=float(latency.quantile(0.5)) if len(latency) else 0.0,
        p99_ms=float(latency.quantile(0.99)) if len(latency) else 0.0,
    )
    return ExpiryResult(requests.reset_index(drop=True), calls, windows[WINDOW_COLUMNS], summary)


def simulate_xfetch(
    rate: float,
    beta: float,
    delta_s: float,
    *,
    ttl: float | None = None,
    expiries: int = 2000,
    seed: int | None = None,
) -> pd.DataFrame:
    """Recomputes per expiry event under XFetch, simulated on a virtual clock (no Redis).

    Reads arrive as a Poisson process at ``rate``/s; each read of a valid value asks
    :class:`~cachelab.refresh.XFetch` for its verdict and, if EARLY, starts a recompute that
    lands ``delta_s`` later (no coordination between readers, as in the paper); a read of an
    expired value is a miss and recomputes too. Returns one row per expiry event: ``recomputes``
    (started for that value generation) and ``misses``.
    """
    if rate <= 0 or delta_s <= 0 or expiries < 1:
        raise ConfigurationError("rate and delta_s must be positive and expiries at least 1")
    rng = random.Random(seed)
    policy = XFetch(beta, rng=random.Random(rng.random()))
    ttl = ttl if ttl is not None else max(20 * beta * delta_s, 10 / rate)

    @dataclass
    class _Value:
        load_ms: float
        expires_at: float
        soft_expires_at: float | None = None

    value = _Value(delta_s * 1000, ttl)
    landing: list[float] = []  # completion times of recomputes in flight
    counts: list[tuple[int, int]] = []
    recomputes = misses = 0
    now = 0.0
    while len(counts) < expiries:
        now += rng.expovariate(rate)
        landing.sort()
        while landing and landing[0] <= now:
            done = landing.pop(0)
            if recomputes:  # the first landing of a generation closes its expiry event
                counts.append((recomputes, misses))
                recomputes = misses = 0
            value = _Value(delta_s * 1000, done + ttl)
        if now >= value.expires_at:
            misses += 1
            recomputes += 1
            landing.append(now + delta_s)
        elif policy.verdict(value, now).value == "early":
            recomputes += 1
            landing.append(now + delta_s)
    return (
        pd.DataFrame(counts, columns=["recomputes", "misses"]).rename_axis("expiry").reset_index()
    )
