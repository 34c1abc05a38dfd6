"""Cache on fakeredis and the real Redis: primitives, read-/write-through, policies, bad input."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from helpers import scan_keys

from cachelab import (
    HERD_POLICIES,
    Cache,
    ConfigurationError,
    HerdPolicy,
    Lookup,
    Outcome,
    SerializationError,
)
from cachelab.herd import HerdStatistics
from cachelab.testing import BackendError, Gate, SlowBackend

COUNTERS = ("hits", "misses", "loads", "coalesced", "errors", "corrupt")


def counts(cache: Cache) -> dict[str, int]:
    """The counters these tests pin down (refresh-related ones are tested elsewhere)."""
    stats = cache.stats.as_dict()
    return {name: stats[name] for name in COUNTERS}


async def listed(cache: Cache) -> list[str]:
    return [k async for k in cache.keys()]  # noqa: SIM118 - an async iterator, not a dict


async def raw_get(cache: Cache, key: str):
    return await cache.redis.get(cache.redis_key(key))


async def released_together(n: int, call):
    """Run ``call(i)`` for i in range(n), all released at the same moment through a Gate."""
    gate = Gate()

    async def one(i):
        await gate.wait()
        return await call(i)

    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    await gate.arrivals(n)
    gate.open()
    return await asyncio.gather(*tasks, return_exceptions=True)


# --- cache-aside primitives -------------------------------------------------------------------


async def test_get_set_delete_ttl_of(make_cache):
    cache = make_cache(ttl=60)
    assert await cache.get("user:1") is None
    assert await cache.get("user:1", default="nobody") == "nobody"
    assert await cache.ttl_of("user:1") is None

    await cache.set("user:1", {"name": "Ada", "tags": ["x"], "n": 1.5, "ok": True})
    assert await cache.get("user:1") == {"name": "Ada", "tags": ["x"], "n": 1.5, "ok": True}
    ttl = await cache.ttl_of("user:1")
    assert 0 < ttl <= 60

    assert await cache.delete("user:1") is True
    assert await cache.delete("user:1") is False
    assert await cache.get("user:1", default=0) == 0
    assert counts(cache)["hits"] == 1
    assert counts(cache)["misses"] == 3


async def test_falsy_values_are_hits(make_cache):
    cache = make_cache()
    for i, value in enumerate([None, 0, "", [], {}, False]):
        await cache.set(f"k{i}", value)
        assert await cache.get(f"k{i}", default="MISSING") == value
    assert cache.stats.hits == 6
    assert cache.stats.misses == 0


async def test_set_stores_namespaced_key_with_px_within_ttl(make_cache, namespace):
    cache = make_cache(ttl=60)
    await cache.set("a", 1, ttl=5)
    assert cache.redis_key("a") == f"{namespace}:{{a}}"  # braces: a Cluster hash tag
    pttl = await cache.redis.pttl(f"{namespace}:{{a}}")
    assert 0 < pttl <= 5000
    await cache.set("b", 1)
    assert 5000 < await cache.redis.pttl(f"{namespace}:{{b}}") <= 60_000


async def test_ttl_jitter_spreads_ttls(make_cache):
    cache = make_cache(ttl=100, ttl_jitter=0.2)
    for i in range(60):
        await cache.set(f"k{i}", i)
    pttls = [await cache.redis.pttl(cache.redis_key(f"k{i}")) for i in range(60)]
    assert len(set(pttls)) > 30
    # within ttl * (1 ± j); a couple of seconds of slack on the low side for time spent writing
    assert all(80_000 - 2_000 <= p <= 120_000 for p in pttls), (min(pttls), max(pttls))
    assert min(pttls) < 95_000
    assert max(pttls) > 105_000


async def test_no_jitter_means_the_exact_ttl(make_cache):
    cache = make_cache(ttl=100)
    for i in range(10):
        await cache.set(f"k{i}", i)
    pttls = [await cache.redis.pttl(cache.redis_key(f"k{i}")) for i in range(10)]
    assert all(90_000 <= p <= 100_000 for p in pttls)


# --- read-through -----------------------------------------------------------------------------


async def test_get_or_set_miss_then_hit(make_cache):
    cache = make_cache()
    calls = 0

    async def loader():
        nonlocal calls
        calls += 1
        return {"v": calls}

    assert await cache.get_or_set("k", loader) == {"v": 1}
    assert await cache.get_or_set("k", loader) == {"v": 1}
    assert await cache.get_or_set("k", loader) == {"v": 1}
    assert calls == 1
    assert counts(cache) == {
        "hits": 2, "misses": 1, "loads": 1, "coalesced": 0, "errors": 0, "corrupt": 0
    }  # fmt: skip
    assert cache.stats.hit_ratio == pytest.approx(2 / 3)
    assert await cache.get("k") == {"v": 1}


async def test_get_or_set_ttl_argument(make_cache):
    cache = make_cache(ttl=60)

    async def loader():
        return 1

    await cache.get_or_set("k", loader, ttl=3)
    assert 0 < await cache.redis.pttl(cache.redis_key("k")) <= 3000


async def test_lookup_outcomes(make_cache):
    cache = make_cache()

    async def loader():
        return "v"

    first = await cache.lookup("k", loader)
    second = await cache.lookup("k", loader)
    assert first == Lookup("v", Outcome.LOAD)
    assert second == Lookup("v", Outcome.HIT)


@pytest.mark.parametrize("policy", list(HERD_POLICIES))
async def test_loader_error_propagates_and_nothing_is_stored(make_cache, policy):
    cache = make_cache(policy=policy)
    error = BackendError("db down")

    async def loader():
        raise error

    with pytest.raises(BackendError) as info:
        await cache.get_or_set("k", loader)
    assert info.value is error
    assert await raw_get(cache, "k") is None
    assert cache.stats.errors == 1
    assert cache.stats.loads == 1
    assert cache.stats.hits == cache.stats.misses == 0


@pytest.mark.parametrize("policy", list(HERD_POLICIES))
async def test_sync_loader_is_rejected_and_nothing_is_stored(make_cache, policy):
    cache = make_cache(policy=policy)
    with pytest.raises(ConfigurationError, match="async"):
        await cache.get_or_set("k", lambda: 42)
    assert await raw_get(cache, "k") is None
    assert cache.stats.loads == 0


@pytest.mark.parametrize("loader", [None, 42, "loader"])
async def test_non_callable_loader_is_rejected(make_cache, loader):
    cache = make_cache()
    with pytest.raises(ConfigurationError, match="loader"):
        await cache.get_or_set("k", loader)
    assert await raw_get(cache, "k") is None


async def test_loader_value_that_cannot_be_encoded(make_cache):
    cache = make_cache()

    async def loader():
        return {1, 2}

    with pytest.raises(SerializationError):
        await cache.get_or_set("k", loader)
    assert await raw_get(cache, "k") is None
    assert cache.stats.errors == 1


# --- bad input: a clear error before anything is written --------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, -0.5, True, False, "10", None, float("nan"), float("inf")])
async def test_bad_cache_ttl_is_rejected(any_redis, namespace, ttl):
    with pytest.raises(ConfigurationError, match="ttl"):
        Cache(any_redis, namespace=namespace, ttl=ttl)


@pytest.mark.parametrize("ttl", [0, -1, True, "10", [5], float("nan"), float("inf")])
async def test_bad_ttl_on_writes_is_rejected_and_nothing_is_written(make_cache, ttl):
    cache = make_cache()
    writes = []

    async def loader():
        return "loaded"

    async def writer(value):
        writes.append(value)

    with pytest.raises(ConfigurationError, match="ttl"):
        await cache.set("a", "v", ttl=ttl)
    with pytest.raises(ConfigurationError, match="ttl"):
        await cache.get_or_set("b", loader, ttl=ttl)
    with pytest.raises(ConfigurationError, match="ttl"):
        await cache.write_through("c", "v", writer, ttl=ttl)
    assert writes == []
    assert cache.stats.loads == 0
    for key in "abc":
        assert await raw_get(cache, key) is None


@pytest.mark.parametrize("jitter", [-0.1, 1, 1.5, "0.1"])
async def test_bad_ttl_jitter_is_rejected(any_redis, namespace, jitter):
    with pytest.raises(ConfigurationError, match="ttl_jitter"):
        Cache(any_redis, namespace=namespace, ttl=10, ttl_jitter=jitter)


@pytest.mark.parametrize("key", ["", 1, None, b"k"])
async def test_bad_keys_are_rejected(make_cache, key):
    cache = make_cache()

    async def loader():
        return 1

    async def writer(value):
        raise AssertionError("the writer must not run for a bad key")

    for call in (
        lambda: cache.get(key),
        lambda: cache.set(key, 1),
        lambda: cache.delete(key),
        lambda: cache.ttl_of(key),
        lambda: cache.get_or_set(key, loader),
        lambda: cache.write_through(key, 1, writer),
    ):
        with pytest.raises(ConfigurationError, match="non-empty strings"):
            await call()
    assert await listed(cache) == []


@pytest.mark.parametrize("namespace_value", ["", " ", " ns", "ns ", None, 7])
async def test_bad_namespace_is_rejected(any_redis, namespace_value):
    with pytest.raises(ConfigurationError, match="namespace"):
        Cache(any_redis, namespace=namespace_value, ttl=10)


async def test_unknown_policy_lists_the_valid_ones(any_redis, namespace):
    with pytest.raises(ConfigurationError) as info:
        Cache(any_redis, namespace=namespace, ttl=10, policy="distributedd")
    message = str(info.value)
    assert "distributedd" in message
    for name in ("none", "lock_table", "local"):
        assert name in message


async def test_a_policy_instance_is_accepted(any_redis, namespace):
    class Counting(HerdPolicy):
        """A policy of one's own, against the protocol: it talks to Redis through its store."""

        name = "counting"

        def __init__(self):
            self.reads = self.loads = 0

        async def read(self, key):
            self.reads += 1
            return await self.store.read(key)

        async def load(self, key, read, produce):
            self.loads += 1
            loaded = await produce()
            await self.store.fill(key, loaded.packed, read.fence)
            return loaded.value, Outcome.LOAD

    policy = Counting()
    cache = Cache(any_redis, namespace=namespace, ttl=10, policy=policy)

    async def loader():
        return 1

    await cache.get_or_set("k", loader)
    await cache.get_or_set("k", loader)
    assert type(cache.policy) is Counting  # the cache's own working copy of the settings
    assert (cache.policy.reads, cache.policy.loads) == (2, 1)
    assert (policy.reads, policy.loads) == (0, 0)  # the object passed in stays as it was
    assert cache.stats.loads == 1


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), {"x": float("inf")}, b"bytes"])
async def test_unencodable_value_writes_nothing(make_cache, value):
    cache = make_cache()
    writer_calls = []

    async def writer(v):
        writer_calls.append(v)

    with pytest.raises(SerializationError):
        await cache.set("k", value)
    assert await raw_get(cache, "k") is None

    with pytest.raises(SerializationError):
        await cache.write_through("k", value, writer)
    assert writer_calls == []
    assert await raw_get(cache, "k") is None


async def test_serialization_error_is_a_type_error_naming_the_type(make_cache):
    cache = make_cache()
    with pytest.raises(TypeError, match="set"):
        await cache.set("k", {1})


@pytest.mark.skipif(importlib.util.find_spec("msgpack") is not None, reason="msgpack installed")
async def test_msgpack_without_the_package_is_a_configuration_error(any_redis, namespace):
    with pytest.raises(ConfigurationError, match="msgpack"):
        Cache(any_redis, namespace=namespace, ttl=10, serializer="msgpack")


# --- write-through ----------------------------------------------------------------------------


async def test_write_through_updates_the_cache_after_the_writer(make_cache):
    cache = make_cache()
    await cache.set("k", "old")
    seen_during_write = []

    async def writer(value):
        seen_during_write.append((value, await cache.get("k")))

    await cache.write_through("k", "new", writer)
    assert seen_during_write == [("new", "old")]
    assert await cache.get("k") == "new"


async def test_write_through_failure_leaves_the_cache_untouched(make_cache):
    cache = make_cache()
    await cache.set("k", "old")
    error = BackendError("constraint violated")

    async def writer(value):
        raise error

    with pytest.raises(BackendError) as info:
        await cache.write_through("k", "new", writer)
    assert info.value is error
    assert await cache.get("k") == "old"

    with pytest.raises(BackendError):
        await cache.write_through("fresh", "new", writer)
    assert await raw_get(cache, "fresh") is None


async def test_write_through_rejects_bad_writers(make_cache):
    cache = make_cache()
    with pytest.raises(ConfigurationError, match="writer"):
        await cache.write_through("k", 1, None)
    with pytest.raises(ConfigurationError, match="async"):
        await cache.write_through("k", 1, lambda v: None)
    assert await raw_get(cache, "k") is None


async def test_write_through_with_slow_backend(make_cache):
    cache = make_cache()
    backend = SlowBackend(latency_ms=1)
    await cache.write_through("k", {"v": 1}, lambda v: backend.store("k", v))
    assert backend.versions == {"k": 1}
    assert await cache.get("k") == {"v": 1}


# --- corrupt entries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage", [b"garbage", b"", b"cl1 d=1 x=2\n{not json", b"\xff\xfe\x00", b"cl1 d=x x=2\n1"]
)
async def test_corrupt_entry_reads_as_a_miss_and_is_overwritten(make_cache, garbage):
    cache = make_cache()
    await cache.redis.set(cache.redis_key("k"), garbage)
    assert await cache.get("k", default="MISS") == "MISS"
    assert cache.stats.corrupt == 1
    assert cache.stats.misses == 1

    async def loader():
        return {"fixed": True}

    assert await cache.get_or_set("k", loader) == {"fixed": True}
    assert cache.stats.loads == 1
    assert await cache.get("k") == {"fixed": True}
    assert cache.stats.corrupt == 2  # the get_or_set read saw it too


# --- keys() and clear() -----------------------------------------------------------------------


async def test_keys_and_clear_touch_only_this_namespace(any_redis, namespace):
    mine = Cache(any_redis, namespace=namespace, ttl=60)
    sibling = Cache(any_redis, namespace=namespace + "2", ttl=60)
    for i in range(5):
        await mine.set(f"k{i}", i)
    await sibling.set("k0", "survives")
    await any_redis.set(namespace, b"bare key without a colon")

    assert sorted(await listed(mine)) == [f"k{i}" for i in range(5)]
    assert await mine.clear() == 5
    assert await listed(mine) == []
    assert await sibling.get("k0") == "survives"
    assert await any_redis.get(namespace) == b"bare key without a colon"
    assert await mine.clear() == 0


async def test_clear_removes_more_than_one_batch(any_redis, namespace):
    cache = Cache(any_redis, namespace=namespace, ttl=60)
    async with any_redis.pipeline(transaction=False) as pipe:
        for i in range(1234):
            pipe.set(cache.redis_key(f"k{i}"), b"x", px=60_000)
        await pipe.execute()
    assert await cache.clear() == 1234
    assert await scan_keys(any_redis, namespace + ":*") == set()


@pytest.mark.parametrize(("suffix", "other"), [("[ab]", "a"), ("*", "xyz"), ("?", "q"), ("\\", "")])
async def test_glob_characters_in_a_namespace_are_escaped(any_redis, namespace, suffix, other):
    mine = Cache(any_redis, namespace=namespace + suffix, ttl=60)
    # a namespace that the unescaped pattern would also match
    lookalike = Cache(any_redis, namespace=namespace + other + "x"[: len(other) == 0], ttl=60)
    await mine.set("k", 1)
    await lookalike.set("k", 2)
    assert await listed(mine) == ["k"]
    assert await mine.clear() == 1
    assert await lookalike.get("k") == 2


# --- herd policies ----------------------------------------------------------------------------


async def test_policy_none_every_caller_loads(make_cache):
    cache = make_cache(policy="none")
    backend = SlowBackend(latency_ms=200)
    results = await released_together(
        200, lambda i: cache.lookup("hot", lambda: backend.fetch("hot"))
    )
    assert backend.calls == 200
    assert all(r.outcome is Outcome.LOAD for r in results)
    assert cache.stats.loads == 200
    assert cache.stats.misses == 200


async def test_policy_local_one_load_for_the_herd(make_cache):
    cache = make_cache(policy="local")
    backend = SlowBackend(latency_ms=20)
    results = await released_together(
        200, lambda i: cache.lookup("hot", lambda: backend.fetch("hot"))
    )
    assert backend.calls == 1
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.LOAD) == 1
    assert outcomes.count(Outcome.SHARED) == 199
    assert all(r.value == {"key": "hot", "version": 0} for r in results)
    assert counts(cache) == {
        "hits": 0, "misses": 200, "loads": 1, "coalesced": 199, "errors": 0, "corrupt": 0
    }  # fmt: skip
    assert cache.policy.statistics() == HerdStatistics(0, 0)


async def test_policy_lock_table_one_load_for_the_herd(make_cache):
    cache = make_cache(policy="lock_table")
    backend = SlowBackend(latency_ms=20)
    results = await released_together(
        200, lambda i: cache.get_or_set("hot", lambda: backend.fetch("hot"))
    )
    assert backend.calls == 1
    assert backend.peak_in_flight == 1
    assert all(r == {"key": "hot", "version": 0} for r in results)
    assert cache.stats.loads == 1
    assert cache.stats.hits + cache.stats.misses == 200
    assert cache.policy.statistics() == HerdStatistics(0, 0)


async def test_policy_local_shared_read_of_a_warm_key_counts_hits(make_cache):
    cache = make_cache(policy="local")
    await cache.set("warm", "value")
    backend = SlowBackend(latency_ms=1)
    results = await released_together(
        50, lambda i: cache.lookup("warm", lambda: backend.fetch("x"))
    )
    assert backend.calls == 0
    assert all(r.value == "value" for r in results)
    # every caller was answered from Redis, even those that shared the leader's read
    assert all(r.outcome is Outcome.HIT for r in results)
    assert cache.stats.hits == 50
    assert cache.stats.misses == cache.stats.coalesced == 0


async def test_policy_local_error_reaches_every_caller_once(make_cache):
    cache = make_cache(policy="local")
    backend = SlowBackend(latency_ms=5)
    backend.fail_next = 10**6
    results = await released_together(
        100, lambda i: cache.get_or_set("hot", lambda: backend.fetch("hot"))
    )
    assert backend.calls == 1
    assert all(isinstance(r, BackendError) for r in results)
    assert all(r is results[0] for r in results)
    assert cache.stats.errors == 100
    assert cache.stats.loads == 1
    assert await raw_get(cache, "hot") is None


async def test_policy_lock_table_error_is_retried_by_every_waiter(make_cache):
    cache = make_cache(policy="lock_table")
    backend = SlowBackend(latency_ms=1)
    backend.fail_next = 10**6
    results = await released_together(
        50, lambda i: cache.get_or_set("hot", lambda: backend.fetch("hot"))
    )
    assert all(isinstance(r, BackendError) for r in results)
    assert backend.calls == 50
    assert backend.peak_in_flight == 1
    assert cache.stats.errors == 50
    assert cache.policy.statistics() == HerdStatistics(0, 0)


@pytest.mark.parametrize("write", ["set", "delete"])
async def test_write_during_an_inflight_local_lookup_is_seen_by_later_lookups(make_cache, write):
    cache = make_cache(policy="local")
    started, release = asyncio.Event(), asyncio.Event()
    loads = 0

    async def slow_loader():
        nonlocal loads
        loads += 1
        started.set()
        await release.wait()
        return "loaded before the write"

    async def fresh_loader():
        return "loaded after the write"

    first = asyncio.create_task(cache.lookup("k", slow_loader))
    await started.wait()
    if write == "set":
        await cache.set("k", "written")
        expected = Lookup("written", Outcome.HIT)
    else:
        await cache.delete("k")
        expected = Lookup("loaded after the write", Outcome.LOAD)
    later = await asyncio.wait_for(cache.lookup("k", fresh_loader), timeout=10)
    assert later == expected
    release.set()
    assert (await first).value == "loaded before the write"
    assert loads == 1
