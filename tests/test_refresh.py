"""Refresh policies: XFetch's verdict math, stale-while-revalidate, and both inside a Cache."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from types import SimpleNamespace

import pytest

import cachelab
from cachelab import Cache, ConfigurationError, Lookup, Outcome
from cachelab.refresh import (
    RefreshPolicy,
    StaleWhileRevalidate,
    Verdict,
    XFetch,
    refresh_policy,
)

KEY = "page"
NOW = 1_700_000_000.0


def entry(load_ms: float, expires_in: float, soft_in: float | None = None):
    """Something with the timings a refresh policy looks at (relative to NOW)."""
    return SimpleNamespace(
        load_ms=load_ms,
        expires_at=NOW + expires_in,
        soft_expires_at=None if soft_in is None else NOW + soft_in,
    )


def early_count(policy: XFetch, item, draws: int) -> int:
    return sum(policy.verdict(item, NOW) is Verdict.EARLY for _ in range(draws))


# --- XFetch: the verdict ----------------------------------------------------------------------


def test_xfetch_far_from_expiry_is_fresh():
    policy = XFetch(1.0, rng=random.Random(7))
    delta_ms = 200.0
    far = entry(delta_ms, expires_in=100 * delta_ms / 1000)  # 100 recompute times away
    assert early_count(policy, far, 10_000) == 0  # p = e^-100


@pytest.mark.parametrize("expires_in", [0.0, -0.001, -5.0])
def test_xfetch_at_or_after_expiry_is_always_early(expires_in):
    policy = XFetch(1.0, rng=random.Random(7))
    assert early_count(policy, entry(50.0, expires_in), 10_000) == 10_000


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("gap_in_deltas", [0.25, 1.0, 2.0])
def test_xfetch_early_probability_is_exponential_in_the_gap(beta, gap_in_deltas):
    """P(EARLY at gap g before expiry) = P(-delta*beta*ln(U) >= g) = exp(-g / (beta*delta))."""
    delta = 0.3
    draws = 20_000
    policy = XFetch(beta, rng=random.Random(12345))
    item = entry(delta * 1000, expires_in=gap_in_deltas * delta)
    expected = math.exp(-gap_in_deltas / beta)
    sigma = math.sqrt(expected * (1 - expected) / draws)
    measured = early_count(policy, item, draws) / draws
    assert abs(measured - expected) < 5 * sigma + 1e-9


def test_xfetch_larger_beta_refreshes_earlier():
    item = entry(100.0, expires_in=0.1)  # one recompute time before expiry
    counts = [early_count(XFetch(b, rng=random.Random(3)), item, 10_000) for b in (0.5, 1, 1.5, 2)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    assert counts[0] < 2000 < counts[-1]  # e^-2 = 0.14 ... e^-0.5 = 0.61


@pytest.mark.parametrize("load_ms", [0.0, -1.0])
def test_xfetch_without_a_recompute_time_is_fresh(load_ms):
    policy = XFetch(1.0, rng=random.Random(1))
    # even after expiry: an entry written by set() carries no delta to weigh
    assert early_count(policy, entry(load_ms, expires_in=-1.0), 1000) == 0


def test_xfetch_seeded_rng_is_reproducible():
    item = entry(100.0, expires_in=0.1)
    first = [XFetch(1, rng=random.Random(9)).verdict(item, NOW) for _ in range(1)]
    a = XFetch(1, rng=random.Random(9))
    b = XFetch(1, rng=random.Random(9))
    assert [a.verdict(item, NOW) for _ in range(500)] == [b.verdict(item, NOW) for _ in range(500)]
    assert first[0] in (Verdict.EARLY, Verdict.FRESH)


@pytest.mark.parametrize("beta", [0, -1, True, "1", None, float("nan"), float("inf")])
def test_xfetch_bad_beta_is_rejected(beta):
    with pytest.raises(ConfigurationError, match="beta"):
        XFetch(beta)


def test_refresh_policy_names():
    assert type(refresh_policy(None)) is RefreshPolicy
    assert type(refresh_policy("none")) is RefreshPolicy
    xf = refresh_policy("xfetch")
    assert isinstance(xf, XFetch) and xf.beta == 1.0
    swr = StaleWhileRevalidate(1)
    assert refresh_policy(swr) is swr
    with pytest.raises(ConfigurationError, match="unknown refresh policy"):
        refresh_policy("swr-ish")


# --- StaleWhileRevalidate: the verdict --------------------------------------------------------


def test_swr_is_fresh_before_the_soft_expiry_and_stale_after():
    policy = StaleWhileRevalidate(1.0)
    assert policy.verdict(entry(10, expires_in=5, soft_in=0.5), NOW) is Verdict.FRESH
    assert policy.verdict(entry(10, expires_in=5, soft_in=0.0), NOW) is Verdict.STALE
    assert policy.verdict(entry(10, expires_in=5, soft_in=-0.5), NOW) is Verdict.STALE
    assert policy.verdict(entry(10, expires_in=5, soft_in=None), NOW) is Verdict.FRESH
    assert policy.soft_ttl_s == 1.0


@pytest.mark.parametrize("soft", [0, -1, True, "1", None, float("nan")])
def test_swr_bad_soft_ttl_is_rejected(soft):
    with pytest.raises(ConfigurationError, match="soft TTL"):
        StaleWhileRevalidate(soft)


@pytest.mark.parametrize("soft", [5, 6])
def test_swr_soft_ttl_not_below_the_ttl_is_rejected_by_the_cache(fake_redis, namespace, soft):
    with pytest.raises(ConfigurationError, match="shorter than"):
        Cache(fake_redis, namespace=namespace, ttl=5, refresh=StaleWhileRevalidate(soft))


# --- StaleWhileRevalidate inside a Cache (real server: background tasks and the Redis lock) ---


class Versions:
    """A loader returning "v1", "v2", ... (one per call), after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.delay = delay
        self.fail = fail
        self.calls = 0

    async def __call__(self):
        self.calls += 1
        n = self.calls
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("backend down")
        return f"v{n}"


@pytest.mark.redis
async def test_swr_serves_stale_and_refreshes_once_in_the_background(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=5, refresh=StaleWhileRevalidate(0.2))
    loader = Versions(delay=0.1)
    assert await cache.lookup(KEY, loader) == Lookup("v1", Outcome.LOAD)
    assert await cache.lookup(KEY, loader) == Lookup("v1", Outcome.HIT)  # before the soft TTL
    await asyncio.sleep(0.3)

    results = await asyncio.gather(*(cache.lookup(KEY, loader) for _ in range(50)))
    assert all(r == Lookup("v1", Outcome.STALE) for r in results)  # none waited for the refresh
    await cache.aclose()
    assert loader.calls == 2  # the first load and one background refresh
    assert cache.stats.background_refreshes == 1
    assert cache.stats.stale == 50
    assert await cache.lookup(KEY, loader) == Lookup("v2", Outcome.HIT)
    assert not await real_redis.exists(cache.keyspace.helper(KEY, "lock"))  # released


@pytest.mark.redis
@pytest.mark.parametrize(("policy", "refreshes"), [("local", 2), ("distributed", 1), ("lease", 1)])
async def test_swr_refreshes_through_the_herd_policy_across_two_instances(
    real_redis, namespace, policy, refreshes
):
    """The background refresh goes through the herd policy: one per process under ``local``,
    one across every process under ``distributed`` (its lock) and ``lease`` (a lease)."""
    other = cachelab.clone_client(real_redis)
    try:
        swr = StaleWhileRevalidate(0.2)
        caches = [
            Cache(client, namespace=namespace, ttl=5, refresh=swr, policy=policy)
            for client in (real_redis, other)
        ]
        loader = Versions(delay=0.2)
        assert (await caches[0].lookup(KEY, loader)).outcome is Outcome.LOAD
        await asyncio.sleep(0.3)
        results = await asyncio.gather(*(c.lookup(KEY, loader) for c in caches for _ in range(20)))
        assert all(r == Lookup("v1", Outcome.STALE) for r in results)
        for cache in caches:
            await cache.aclose()
        assert loader.calls == 1 + refreshes
        assert sum(c.stats.background_refreshes for c in caches) == refreshes
        newest = f"v{1 + refreshes}"
        assert [await c.lookup(KEY, loader) for c in caches] == [Lookup(newest, Outcome.HIT)] * 2
    finally:
        await other.aclose()


@pytest.mark.redis
async def test_swr_background_error_keeps_serving_the_old_value(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=5, refresh=StaleWhileRevalidate(0.2))
    assert (await cache.lookup(KEY, Versions())).value == "v1"
    await asyncio.sleep(0.3)
    failing = Versions(fail=True)
    assert await cache.lookup(KEY, failing) == Lookup("v1", Outcome.STALE)
    await cache.aclose()
    assert failing.calls == 1
    assert cache.stats.background_errors == 1
    assert cache.stats.background_refreshes == 0
    assert cache.stats.errors == 0  # the caller was not affected
    assert await cache.lookup(KEY, Versions()) == Lookup("v1", Outcome.STALE)
    await cache.aclose()


@pytest.mark.redis
async def test_swr_value_is_gone_after_the_hard_ttl(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=0.4, refresh=StaleWhileRevalidate(0.1))
    loader = Versions()
    assert (await cache.lookup(KEY, loader)).outcome is Outcome.LOAD
    await asyncio.sleep(0.6)
    assert await cache.lookup(KEY, loader) == Lookup("v2", Outcome.LOAD)  # a miss, not stale
    await cache.aclose()
    assert cache.stats.background_refreshes == 0


# --- XFetch inside a Cache --------------------------------------------------------------------


async def store_entry(cache: Cache, value, *, load_ms: float, expires_in: float) -> None:
    """Write an entry as if its last load took ``load_ms`` and it expires in ``expires_in`` s.

    The Redis TTL stays long, so only the refresh policy's view of the expiry matters.
    """
    header = b"cl1 d=%.3f x=%.3f\n" % (load_ms, time.time() + expires_in)
    data = header + cache.codec.payload(value)
    await cache.redis.set(cache.redis_key(KEY), data, px=60_000)


async def test_xfetch_makes_some_callers_refresh_early(make_cache):
    cache = make_cache(ttl=60, policy="none", refresh=XFetch(1.0, rng=random.Random(1)))
    # delta 1 s, expiry 1 s away: each read refreshes early with p = e^-1 = 0.37
    await store_entry(cache, "old", load_ms=1000, expires_in=1.0)
    loader = Versions(delay=0.1)
    results = await asyncio.gather(*(cache.lookup(KEY, loader) for _ in range(20)))
    outcomes = Counter(r.outcome for r in results)
    refreshed = outcomes[Outcome.REFRESH]
    assert 0 < refreshed < 20
    assert outcomes[Outcome.HIT] == 20 - refreshed
    assert loader.calls == refreshed == cache.stats.refreshes  # no protection: each one loads
    assert all(r.value == "old" for r in results if r.outcome is Outcome.HIT)
    # the refreshed entry carries the measured recompute time (~100 ms) and a new expiry
    stored = await cache.entry(KEY)
    assert stored.value.startswith("v")
    assert 50 <= stored.load_ms < 1000
    assert stored.expires_at > time.time() + 50


async def test_xfetch_entry_far_from_expiry_is_a_hit(make_cache):
    cache = make_cache(ttl=60, policy="none", refresh=XFetch(1.0, rng=random.Random(1)))
    await store_entry(cache, "old", load_ms=10, expires_in=30.0)
    loader = Versions()
    results = await asyncio.gather(*(cache.lookup(KEY, loader) for _ in range(50)))
    assert all(r == Lookup("old", Outcome.HIT) for r in results)
    assert loader.calls == 0


async def test_xfetch_early_refreshers_coalesce_under_local(make_cache):
    cache = make_cache(ttl=60, policy="local", refresh=XFetch(1.0, rng=random.Random(1)))
    # past XFetch's expiry (Redis still holds it): every reader's verdict is EARLY
    await store_entry(cache, "old", load_ms=500, expires_in=-0.5)
    loader = Versions(delay=0.1)
    results = await asyncio.gather(*(cache.lookup(KEY, loader) for _ in range(20)))
    assert loader.calls == 1
    assert Counter(r.outcome for r in results) == {Outcome.REFRESH: 1, Outcome.HIT: 19}
    # the others did not wait: they were served the current value (NOT_REFRESHED)
    assert all(r.value == "old" for r in results if r.outcome is Outcome.HIT)
    assert [r.value for r in results if r.outcome is Outcome.REFRESH] == ["v1"]
    assert await cache.lookup(KEY, loader) == Lookup("v1", Outcome.HIT)


@pytest.mark.redis
async def test_xfetch_early_refreshers_coalesce_across_instances_under_distributed(
    real_redis, namespace
):
    other = cachelab.clone_client(real_redis)
    try:
        caches = [
            Cache(c, namespace=namespace, ttl=60, policy="distributed", refresh=XFetch(1.0))
            for c in (real_redis, other)
        ]
        await store_entry(caches[0], "old", load_ms=500, expires_in=-0.5)
        loader = Versions(delay=0.2)
        results = await asyncio.gather(*(c.lookup(KEY, loader) for c in caches for _ in range(10)))
        assert loader.calls == 1  # the key's Redis lock: one early refresh in all instances
        assert Counter(r.outcome for r in results) == {Outcome.REFRESH: 1, Outcome.HIT: 19}
        assert await caches[1].get(KEY) == "v1"
    finally:
        await other.aclose()
