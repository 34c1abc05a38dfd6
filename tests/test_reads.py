"""measure_reads, plot_reads, and the SlowBackend that stands in for the database."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from cachelab import Cache
from cachelab.experiments import READ_COLUMNS, SlowBackend, measure_reads, plot_reads

WORKLOAD = ["a", "b", "a", "c", "b", "a"]
ASIDE_CALLS = [True, True, False, True, False, False]  # only the first read of each key loads


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def dict_cache_aside(backend: SlowBackend):
    """Cache-aside over a plain dict: fetch on the first read of a key, remember it after."""
    cached: dict[str, object] = {}

    async def read(key: str):
        if key not in cached:
            cached[key] = await backend.fetch(key)
        return cached[key]

    return read


@pytest.fixture
async def reads():
    backend = SlowBackend(0)
    strategies = {"no cache": backend.fetch, "cache-aside": dict_cache_aside(backend)}
    return await measure_reads(WORKLOAD, strategies, backend)


async def test_measure_reads_one_row_per_request_and_strategy(reads):
    assert list(reads.columns) == READ_COLUMNS
    assert len(reads) == 2 * len(WORKLOAD)
    assert list(reads["strategy"]) == ["no cache"] * 6 + ["cache-aside"] * 6
    assert list(reads["request"]) == list(range(6)) * 2
    assert list(reads["key"]) == WORKLOAD * 2
    assert (reads["latency_ms"] >= 0).all()


async def test_measure_reads_flags_the_requests_that_reached_the_backend(reads):
    assert reads["backend_call"].dtype == bool
    by_strategy = reads.groupby("strategy", sort=False)["backend_call"].apply(list).to_dict()
    assert by_strategy == {"no cache": [True] * 6, "cache-aside": ASIDE_CALLS}


async def test_measure_reads_reads_a_one_shot_iterable_for_every_strategy():
    backend = SlowBackend(0)
    strategies = {"first": backend.fetch, "second": dict_cache_aside(backend)}
    frame = await measure_reads(iter(WORKLOAD), strategies, backend)
    assert frame.groupby("strategy").size().to_dict() == {"first": 6, "second": 6}
    assert backend.calls == 6 + 3


async def test_measure_reads_times_each_request():
    backend = SlowBackend(20)
    frame = await measure_reads(["a", "a"], {"aside": dict_cache_aside(backend)}, backend)
    miss, hit = frame["latency_ms"]
    assert miss >= 15  # the backend sleeps 20 ms
    assert hit < miss


async def test_measure_reads_with_a_redis_cache(any_redis, namespace):
    backend = SlowBackend(0)
    cache = Cache(any_redis, namespace=namespace, ttl=60)

    async def read_through(key):
        return await cache.get_or_set(key, lambda: backend.fetch(key))

    frame = await measure_reads(WORKLOAD, {"read-through": read_through}, backend)
    assert list(frame["backend_call"]) == ASIDE_CALLS
    assert cache.stats.loads == 3


async def test_measure_reads_without_strategies_is_an_empty_frame():
    frame = await measure_reads(WORKLOAD, {}, SlowBackend(0))
    assert list(frame.columns) == READ_COLUMNS
    assert frame.empty


async def test_plot_reads(reads):
    fig = plot_reads(reads)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    left, right = fig.axes
    for ax in (left, right):
        assert ax.get_title().strip()
        assert "request" in ax.get_xlabel()
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["no cache", "cache-aside"]
    assert "6 reads" in left.get_title()
    assert "ms" in left.get_ylabel()
    assert left.get_yscale() == "log"
    assert "hits / requests" in right.get_ylabel()
    assert right.get_ylim()[0] < 0 and right.get_ylim()[1] > 1


async def test_plot_reads_draws_the_hit_ratio_so_far(reads):
    _left, right = plot_reads(reads).axes
    no_cache, aside = right.get_lines()
    assert list(no_cache.get_ydata()) == [0.0] * 6
    assert list(aside.get_ydata()) == pytest.approx([0, 0, 1 / 3, 1 / 4, 2 / 5, 1 / 2])


# --- SlowBackend ------------------------------------------------------------------------------


async def test_slow_backend_returns_a_stored_value():
    backend = SlowBackend(0)
    assert await backend.fetch("user:1") == {"key": "user:1", "version": 0}
    profile = {"id": 1, "name": "Ada"}
    await backend.store("user:1", profile)
    assert await backend.fetch("user:1") == profile
    assert backend.versions == {"user:1": 1}
    await backend.store("user:1", "Grace")
    assert await backend.fetch("user:1") == "Grace"
    assert backend.versions == {"user:1": 2}


async def test_slow_backend_store_leaves_other_keys_and_the_call_count_alone():
    backend = SlowBackend(0)
    await backend.store("user:1", {"name": "Ada"})
    assert backend.calls == 0  # a store is a write, not a fetch
    assert await backend.fetch("user:2") == {"key": "user:2", "version": 0}
    assert backend.calls == 1
