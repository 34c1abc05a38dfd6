"""Two more ways hot keys hurt: invalidations under load, and keys that expire together.

:func:`run_hot_key_writes` is the memcache-at-Facebook situation: a key read hundreds of times a
second is also written now and then, and every write deletes the cached copy (write the database,
then invalidate). Each delete is a cold-key stampede, and a slow load that started before the
write can store the old row after the delete (a *stale set*), so readers see outdated data until
the next write or the TTL. Leases fix both: one reader per key gets the right to fill, the others
are served the previous value marked stale, and the delete revokes the filler's right, so its
outdated value is refused.

:func:`run_mass_expiry` writes many keys at the same moment with the same TTL, so they all expire
at the same moment too, and the backend gets one load per key at once. TTL jitter spreads them.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client, connect
from ..herd import HerdPolicy
from ..metrics import Outcome
from ..testing import SlowBackend
from ._checks import herd_policy, known_policy, positive
from .traffic import backend_rate, drive_poisson

__all__ = ["HotKeyResult", "run_hot_key_writes", "run_mass_expiry"]


@dataclass
class HotKeyResult:
    """``requests`` (one row per read), ``backend`` (one row per load), ``rate`` (backend calls
    per second over time, in buckets) and ``summary``."""

    requests: pd.DataFrame
    backend: pd.DataFrame
    rate: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<HotKeyResult policy={s['policy']} backend_calls={s['backend_calls']} "
            f"peak={s['peak_backend_per_s']:.0f}/s>"
        )


async def run_hot_key_writes(
    rate: float = 400.0,
    writes_per_s: float = 10.0,
    duration: float = 4.0,
    loader_ms: float = 50.0,
    instances: int = 4,
    policy: str | HerdPolicy = "local",
    *,
    redis: RedisClient | None = None,
    seed: int | None = None,
    bucket_ms: float = 100.0,
    policy_options: dict | None = None,
) -> HotKeyResult:
    """Poisson reads at ``rate``/s on one key while a writer updates it ``writes_per_s`` times a
    second (commit the new row to the backend, then delete the cached copy).

    ``policy`` is a name or a policy object; ``policy_options`` go to a named policy's
    constructor, e.g. ``{"fence": False}`` for ``"distributed"`` to see what its fenced fills
    prevent. Every instance gets a policy of its own.

    A read is *stale after invalidation* when it started after a delete had completed, was not
    marked stale, and still returned an older version than that delete's write: the symptom of
    a stale set (a load that read the old row before the write and stored it after the delete).
    Writes more often than once per load time make that race frequent, as on a busy hot key.
    """
    positive(rate=rate, writes_per_s=writes_per_s, duration=duration)
    options = dict(policy_options or {})
    known_policy(policy, options)
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    namespace, key = f"cachelab:hotkey:{uuid.uuid4().hex[:12]}", "hot"
    clients = [clone_client(base, max_connections=32) for _ in range(instances)]
    caches = [
        Cache(c, namespace=namespace, ttl=60, policy=herd_policy(policy, **options))
        for c in clients
    ]
    backend = SlowBackend(loader_ms)
    rng = random.Random(seed)
    invalidated = {"version": 0}  # the newest version whose cached copy has been deleted
    rows: list[dict] = []

    async def loader():
        return await backend.fetch(key)

    async def read(_arrival: float) -> None:
        instance = rng.randrange(instances)
        floor, began = invalidated["version"], time.perf_counter()
        lookup = await caches[instance].lookup(key, loader)
        rows.append({"t_s": began - start, "instance": instance,
                     "latency_ms": (time.perf_counter() - began) * 1000,
                     "outcome": str(lookup.outcome), "version": lookup.value["version"],
                     "invalidated_version": floor})  # fmt: skip

    async def write_loop() -> None:
        version = 0
        while time.perf_counter() - start < duration:
            await asyncio.sleep(1 / writes_per_s)
            version += 1
            backend.rows[key] = {"key": key, "version": version}  # the commit (instant)
            await caches[0].delete(key)
            invalidated["version"] = version

    try:
        await caches[0].refresh(key, loader)  # warm
        backend.log.clear()
        backend.calls = 0
        start = time.perf_counter()
        writer = asyncio.create_task(write_loop())
        try:
            await drive_poisson(rate, duration, rng, read, start=start)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await caches[0].clear()
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
        if owned:
            await base.aclose()
    requests = pd.DataFrame(rows).sort_values("t_s", ignore_index=True)
    calls = backend.calls_frame(origin=start)
    per_second = backend_rate(calls, duration, bucket_ms)
    outdated = requests["version"] < requests["invalidated_version"]
    stale_after = outdated & (requests["outcome"] != Outcome.STALE)
    summary = {
        "policy": policy if isinstance(policy, str) else repr(policy),
        "rate": rate,
        "writes_per_s": writes_per_s,
        "instances": instances,
        "loader_ms": loader_ms,
        "reads": len(requests),
        "backend_calls": len(calls),
        "peak_backend_per_s": float(per_second["calls_per_s"].max()),
        "misses": int(requests["outcome"].isin([Outcome.LOAD, Outcome.SHARED]).sum()),
        "stale_served": int((requests["outcome"] == Outcome.STALE).sum()),
        "stale_after_invalidation": int(stale_after.sum()),
        "p99_ms": float(requests["latency_ms"].quantile(0.99)),
        "policy_options": options,
    }
    return HotKeyResult(requests, calls, per_second, summary)


async def run_mass_expiry(
    keys: int = 100,
    ttl: float = 1.0,
    jitter: float = 0.0,
    rate: float = 800.0,
    duration: float = 2.5,
    loader_ms: float = 30.0,
    policy: str | HerdPolicy = "local",
    *,
    redis: RedisClient | None = None,
    seed: int | None = None,
    bucket_ms: float = 50.0,
) -> HotKeyResult:
    """Write ``keys`` keys at once with one TTL (± ``jitter``), then read random keys at ``rate``.

    Without jitter every key expires in the same instant and the backend sees a burst of one
    load per key; with ``jitter=0.2`` the expiries spread over ±20% of the TTL.
    """
    positive(keys=keys, ttl=ttl, rate=rate, duration=duration)
    known_policy(policy)
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    namespace = f"cachelab:massexpiry:{uuid.uuid4().hex[:12]}"
    cache = Cache(base, namespace=namespace, ttl=ttl, policy=policy, ttl_jitter=jitter)
    backend = SlowBackend(loader_ms)
    rng = random.Random(seed)
    names = [f"item:{i}" for i in range(keys)]
    rows: list[dict] = []

    async def read(_arrival: float) -> None:
        name = rng.choice(names)
        began = time.perf_counter()
        lookup = await cache.lookup(name, lambda: backend.fetch(name))
        rows.append({"t_s": began - start, "key": name, "outcome": str(lookup.outcome),
                     "latency_ms": (time.perf_counter() - began) * 1000})  # fmt: skip

    try:
        await asyncio.gather(*(cache.set(n, {"key": n, "version": 0}) for n in names))
        start = time.perf_counter()  # all keys written together, just now
        entries = await asyncio.gather(*(cache.entry(n) for n in names))
        expiries = pd.Series([e.expires_at for e in entries if e is not None])
        await drive_poisson(rate, duration, rng, read, start=start)
        await cache.clear()
    finally:
        if owned:
            await base.aclose()
    requests = pd.DataFrame(rows).sort_values("t_s", ignore_index=True)
    calls = backend.calls_frame(origin=start)
    per_second = backend_rate(calls, duration, bucket_ms)
    summary = {
        "policy": policy if isinstance(policy, str) else repr(policy),
        "keys": keys,
        "ttl": ttl,
        "jitter": jitter,
        "rate": rate,
        "reads": len(requests),
        "backend_calls": len(calls),
        "peak_backend_per_s": float(per_second["calls_per_s"].max()),
        # when the written entries expire, from their own headers: the middle 80% of expiries,
        # set by the jitter alone (no clock of this machine's load in it)
        "expiry_spread_s": float(expiries.quantile(0.9) - expiries.quantile(0.1)),
        # the middle 80% of reloads: how long the backend's burst lasts, a steadier measure than
        # the peak of one 50 ms bucket, which a single event-loop stall can double
        "reload_spread_s": float(calls["start_ms"].quantile(0.9) - calls["start_ms"].quantile(0.1))
        / 1000,
        "p99_ms": float(requests["latency_ms"].quantile(0.99)),
    }
    return HotKeyResult(requests, calls, per_second, summary)
