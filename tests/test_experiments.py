"""The cold-key stampede experiment and its charts."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from helpers import scan_keys
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cachelab import Cache, ConfigurationError
from cachelab.experiments import (
    REQUEST_COLUMNS,
    SlowBackend,
    StampedeResult,
    plot_backend_calls,
    plot_latency_cdf,
    plot_stampede_overview,
    plot_timeline,
    plot_timelines,
    run_stampede,
    sweep_stampede,
)
from cachelab.experiments import stampede as stampede_module

OUTCOMES = {"hit", "load", "shared", "error"}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def check_frame(result: StampedeResult, clients: int, instances: int, policy: str) -> None:
    frame = result.requests
    assert list(frame.columns) == REQUEST_COLUMNS
    assert len(frame) == clients
    assert sorted(frame["client"]) == list(range(clients))
    assert set(frame["instance"]) == set(range(instances))
    assert frame.groupby("instance").size().max() - frame.groupby("instance").size().min() <= 1
    assert (frame["latency_ms"] >= 0).all()
    assert (frame["end_ms"] >= frame["start_ms"]).all()
    assert set(frame["outcome"]) <= OUTCOMES
    assert set(frame["policy"]) == {policy}
    s = result.summary
    assert set(s) == set(stampede_module.SUMMARY_COLUMNS)
    assert (s["policy"], s["clients"], s["instances"]) == (policy, clients, instances)
    assert s["hits"] + s["loads"] + s["coalesced"] + s["errors"] == clients
    assert s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert len(result.backend) == s["backend_calls"]
    assert list(result.backend.columns) == ["key", "start_ms", "end_ms", "ok"]


@pytest.mark.parametrize("policy", ["local", "lock_table"])
async def test_one_load_per_instance(any_redis, policy):
    result = await run_stampede(200, 4, policy, loader_ms=50, redis=any_redis)
    check_frame(result, 200, 4, policy)
    assert result.summary["backend_calls"] == 4
    assert result.summary["loads"] == 4
    assert result.summary["errors"] == 0
    assert result.summary["max_ms"] >= 0
    assert "backend_calls=4" in repr(result)
    if policy == "local":
        assert result.summary["coalesced"] == 196
        assert result.summary["peak_backend_concurrency"] <= 4


async def test_no_protection_stampedes(any_redis):
    result = await run_stampede(200, 4, "none", loader_ms=100, redis=any_redis)
    check_frame(result, 200, 4, "none")
    calls = result.summary["backend_calls"]
    assert 150 < calls <= 200
    assert result.summary["loads"] == calls
    assert result.summary["coalesced"] == 0
    assert result.summary["peak_backend_concurrency"] > 100


@pytest.mark.redis
async def test_no_protection_on_real_redis_every_client_loads(real_redis):
    result = await run_stampede(200, 4, "none", loader_ms=100, redis=real_redis)
    assert result.summary["backend_calls"] >= 190  # 200 expected; a few may see the first store


@pytest.mark.parametrize(("failures", "errors"), [(1, 10), (2, 20)])
async def test_failures_are_counted_as_errors(any_redis, failures, errors):
    result = await run_stampede(20, 2, "local", loader_ms=10, redis=any_redis, failures=failures)
    check_frame(result, 20, 2, "local")
    assert result.summary["backend_calls"] == 2
    assert result.summary["errors"] == errors
    assert (result.requests["outcome"] == "error").sum() == errors
    assert (~result.backend["ok"]).sum() == failures


async def test_the_run_namespace_is_removed(any_redis, monkeypatch):
    run_id = uuid.uuid4()
    monkeypatch.setattr(stampede_module, "uuid", SimpleNamespace(uuid4=lambda: run_id))
    namespace = f"cachelab:stampede:{run_id.hex[:12]}"
    removed = []
    original_clear = Cache.clear

    async def spy_clear(self):
        assert self.namespace == namespace
        removed.append(await original_clear(self))
        return removed[-1]

    monkeypatch.setattr(Cache, "clear", spy_clear)
    before = await scan_keys(any_redis, "cachelab:stampede:*")
    await run_stampede(20, 2, "local", loader_ms=5, redis=any_redis)
    after = await scan_keys(any_redis, "cachelab:stampede:*")
    assert removed == [1]  # the hot key existed and was removed
    assert await scan_keys(any_redis, namespace + ":*") == set()
    assert not {k for k in after - before if k.decode().startswith(namespace)}


async def test_a_given_client_is_not_closed(any_redis):
    await run_stampede(10, 2, "local", loader_ms=1, redis=any_redis)
    assert await any_redis.ping()


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"clients": 0}, "clients"),
        ({"clients": -5}, "clients"),
        ({"clients": 2.5}, "clients"),
        ({"clients": 4, "instances": 5}, "instances"),
        ({"instances": 0}, "instances"),
        ({"policy": "nope"}, "none"),
        ({"loader_ms": -1}, "loader_ms"),
        ({"pool_size": 0}, "pool_size"),
        ({"pool_size": -1}, "pool_size"),
        ({"pool_size": 2.5}, "pool_size"),
    ],
)
async def test_bad_arguments(any_redis, args, match):
    options = {"clients": 10, "instances": 2, "policy": "local", "loader_ms": 1} | args
    with pytest.raises(ConfigurationError, match=match):
        await run_stampede(**options, redis=any_redis)


async def test_a_bad_pool_size_is_refused_before_connecting(monkeypatch):
    async def no_connect(**_options):
        raise AssertionError("connected although the arguments were invalid")

    monkeypatch.setattr(stampede_module, "connect", no_connect)
    with pytest.raises(ConfigurationError, match="pool_size"):
        await run_stampede(10, 2, "local", loader_ms=1, pool_size=0)


@pytest.mark.parametrize(
    ("pool_size", "clients", "expected"), [(64, 40, 20), (3, 40, 3), (1, 9, 1)]
)
async def test_pool_size_caps_each_instance_s_connections(
    any_redis, monkeypatch, pool_size, clients, expected
):
    sizes = []
    original = stampede_module.clone_client

    def spy_clone(client, *, max_connections=None):
        sizes.append(max_connections)
        return original(client, max_connections=max_connections)

    monkeypatch.setattr(stampede_module, "clone_client", spy_clone)
    await run_stampede(clients, 2, "local", loader_ms=1, redis=any_redis, pool_size=pool_size)
    assert sizes == [expected, expected]


@pytest.mark.parametrize("instances", [1, 3])
async def test_one_connection_per_instance_still_makes_one_load_per_instance(any_redis, instances):
    result = await run_stampede(30, instances, "local", loader_ms=5, redis=any_redis, pool_size=1)
    check_frame(result, 30, instances, "local")
    assert result.summary["loads"] == instances
    assert result.summary["backend_calls"] == instances
    assert result.summary["errors"] == 0


async def test_sweep_one_row_per_policy_and_client_count(any_redis):
    seen = []
    summaries, requests = await sweep_stampede(
        [5, 12], ["none", "local"], 2, loader_ms=20, redis=any_redis, on_run=seen.append
    )
    assert isinstance(summaries, pd.DataFrame)
    assert list(summaries.columns) == stampede_module.SUMMARY_COLUMNS
    assert len(summaries) == 4
    assert set(zip(summaries["policy"], summaries["clients"], strict=True)) == {
        ("none", 5), ("none", 12), ("local", 5), ("local", 12)
    }  # fmt: skip
    assert [(s["policy"], s["clients"]) for s in seen] == [
        ("none", 5), ("none", 12), ("local", 5), ("local", 12)
    ]  # fmt: skip
    local = summaries[summaries["policy"] == "local"]
    assert list(local["backend_calls"]) == [2, 2]
    assert len(requests) == 2 * (5 + 12)
    assert sorted(requests.groupby(["policy", "clients"]).size().unique()) == [5, 12]


async def test_sweep_caps_instances_at_clients(any_redis):
    summaries, _ = await sweep_stampede([1, 3], ["local"], 4, loader_ms=1, redis=any_redis)
    assert list(summaries["instances"]) == [1, 3]
    assert list(summaries["backend_calls"]) == [1, 3]


async def test_sweep_rejects_an_unknown_policy_before_running(any_redis):
    seen = []
    with pytest.raises(ConfigurationError, match="lock_table"):
        await sweep_stampede([5], ["local", "bogus"], 2, redis=any_redis, on_run=seen.append)
    assert seen == []


def test_slow_backend_rejects_negative_latency():
    with pytest.raises(ConfigurationError):
        SlowBackend(latency_ms=-1)


# --- charts -----------------------------------------------------------------------------------


def legend_texts(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, f"no legend on {ax.get_title()!r}"
    return [t.get_text() for t in legend.get_texts()]


def check_labels(ax: Axes, *, x_unit: str | None = None, y_unit: str | None = None) -> None:
    assert ax.get_title().strip()
    assert ax.get_xlabel().strip()
    assert ax.get_ylabel().strip()
    if x_unit:
        assert x_unit in ax.get_xlabel()
    if y_unit:
        assert y_unit in ax.get_ylabel()


@pytest.fixture
async def sweep(fake_redis):
    return await sweep_stampede([4, 16], ["none", "local"], 2, loader_ms=5, redis=fake_redis)


async def test_plot_timeline(fake_redis):
    result = await run_stampede(40, 2, "local", loader_ms=5, redis=fake_redis)
    ax = plot_timeline(result.requests, result.backend)
    assert isinstance(ax, Axes)
    check_labels(ax, x_unit="ms")
    labels = " ".join(legend_texts(ax))
    assert "load (2)" in labels
    assert "shared (38)" in labels
    assert "backend call (2)" in labels
    assert "local" in ax.get_title()


async def test_plot_timeline_on_given_axes_with_title(fake_redis):
    result = await run_stampede(10, 1, "none", loader_ms=1, redis=fake_redis)
    _fig, ax = plt.subplots()
    assert plot_timeline(result.requests, ax=ax, title="mine") is ax
    assert ax.get_title() == "mine"


async def test_plot_timelines_one_panel_per_result_on_a_shared_time_axis(fake_redis):
    results = [
        await run_stampede(12, 2, "none", loader_ms=5, redis=fake_redis),
        await run_stampede(12, 2, "local", loader_ms=5, redis=fake_redis),
        await run_stampede(6, 1, "lock_table", loader_ms=5, redis=fake_redis),
    ]
    fig = plot_timelines(results)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    top, middle, bottom = fig.axes
    assert top.get_shared_x_axes().joined(top, bottom)
    assert middle.get_shared_x_axes().joined(middle, bottom)
    fig.canvas.draw()
    assert top.get_xlim() == bottom.get_xlim()
    assert top.get_title() == "none: 12 requests, 2 instance(s)"
    assert middle.get_title() == "local: 12 requests, 2 instance(s)"
    assert bottom.get_title() == "lock_table: 6 requests, 1 instance(s)"
    assert (top.get_xlabel(), middle.get_xlabel()) == ("", "")
    check_labels(bottom, x_unit="ms")
    assert "load (2)" in " ".join(legend_texts(middle))
    assert "backend call (2)" in " ".join(legend_texts(middle))


async def test_plot_timelines_with_titles(fake_redis):
    results = [
        await run_stampede(4, 1, p, loader_ms=1, redis=fake_redis) for p in ("none", "local")
    ]
    fig = plot_timelines(results, titles=["first", "second"])
    assert [ax.get_title() for ax in fig.axes] == ["first", "second"]


async def test_plot_timelines_of_one_result(fake_redis):
    fig = plot_timelines([await run_stampede(4, 1, "local", loader_ms=1, redis=fake_redis)])
    (ax,) = fig.axes
    check_labels(ax, x_unit="ms")
    assert "local" in ax.get_title()


async def test_plot_backend_calls(sweep):
    summaries, _ = sweep
    ax = plot_backend_calls(summaries)
    assert isinstance(ax, Axes)
    check_labels(ax)
    assert "clients" in ax.get_xlabel()
    assert "backend calls" in ax.get_ylabel()
    assert ax.get_xscale() == "log"
    assert ax.get_yscale() == "log"
    labels = legend_texts(ax)
    assert any("none" in t for t in labels)
    assert any("local" in t for t in labels)


async def test_plot_latency_cdf(sweep):
    _, requests = sweep
    ax = plot_latency_cdf(requests)
    assert isinstance(ax, Axes)
    check_labels(ax, x_unit="ms")
    labels = legend_texts(ax)
    assert len(labels) == 2
    assert any("none" in t for t in labels)
    assert any("local" in t for t in labels)


async def test_plot_latency_cdf_mark_ms(sweep):
    _, requests = sweep
    ax = plot_latency_cdf(requests, mark_ms=5)
    labels = legend_texts(ax)
    assert len(labels) == 3
    assert "one load (5 ms)" in labels
    marks = [line for line in ax.get_lines() if line.get_label() == "one load (5 ms)"]
    assert len(marks) == 1
    assert list(marks[0].get_xdata()) == [5, 5]


async def test_plot_latency_cdf_without_mark_ms_has_no_mark(sweep):
    _, requests = sweep
    ax = plot_latency_cdf(requests)
    assert not any("one load" in t for t in legend_texts(ax))
    assert not any(line.get_label().startswith("one load") for line in ax.get_lines())


async def test_plot_stampede_overview_sweep(sweep):
    summaries, requests = sweep
    fig = plot_stampede_overview(summaries, requests)
    assert isinstance(fig, Figure)
    left, right = fig.axes
    check_labels(left)
    check_labels(right, x_unit="ms")
    assert any("local" in t for t in legend_texts(left))
    assert any("one load" in t for t in legend_texts(right))
    assert any("none" in t for t in legend_texts(right))


async def test_plot_stampede_overview_single_client_count(fake_redis):
    summaries, requests = await sweep_stampede(
        [8], ["none", "local"], 2, loader_ms=5, redis=fake_redis
    )
    fig = plot_stampede_overview(summaries, requests)
    left, right = fig.axes
    check_labels(left)
    check_labels(right, x_unit="ms")
    assert [t.get_text() for t in left.get_xticklabels()] == ["none", "local"]
    assert legend_texts(left) == ["backend calls (loads)"]
    assert "8 clients" in left.get_title()
