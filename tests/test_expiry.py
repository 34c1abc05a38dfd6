"""The expiry experiment, the XFetch simulation, and stampedes run as real OS processes."""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
from helpers import REAL_URL
from test_cli import run as run_cli

from cachelab import ConfigurationError
from cachelab.experiments import (
    ExpiryResult,
    expected_xfetch_recomputes,
    plot_expiry_overview,
    run_expiry,
    run_stampede,
    simulate_xfetch,
)
from cachelab.experiments.expiry import EXPIRY_REQUEST_COLUMNS, WINDOW_COLUMNS


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


# --- XFetch against its closed form, on a virtual clock ---------------------------------------


@pytest.mark.parametrize("rate", [200, 1000])
@pytest.mark.parametrize("beta", [1.0, 1.5, 2.0])
def test_xfetch_recomputes_per_expiry_match_the_closed_form(rate, beta):
    """Vattani et al.: about e^(1/beta) recomputes per expiry, whatever the rate (±25%)."""
    events = simulate_xfetch(rate, beta, delta_s=0.05, expiries=600, seed=11)
    assert len(events) == 600
    expected = expected_xfetch_recomputes(beta)
    assert events["recomputes"].mean() == pytest.approx(expected, rel=0.25)
    # The key expires before a refresh lands only if nobody triggered one by expiry - delta:
    # probability exp(-rate * beta * delta * e^(-1/beta)) under Poisson reads.
    late = math.exp(-rate * beta * 0.05 * math.exp(-1 / beta))
    assert (events["misses"] > 0).mean() <= 2 * late + 0.01


def test_too_small_a_beta_lets_the_stampede_come_back():
    """beta=0.3 refreshes so late that the key often expires first: misses return."""
    late = simulate_xfetch(200, 0.3, delta_s=0.05, expiries=300, seed=3)
    on_time = simulate_xfetch(200, 1.5, delta_s=0.05, expiries=300, seed=3)
    assert late["misses"].mean() > 0.5
    assert on_time["misses"].mean() < 0.05


def test_beta_one_and_a_half_keeps_the_average_below_two():
    """The paper: beta = 1.5 brings the average stampede below 2."""
    events = simulate_xfetch(500, 1.5, delta_s=0.05, expiries=1500, seed=5)
    assert events["recomputes"].mean() < 2.0


def test_simulation_is_reproducible_with_a_seed():
    a = simulate_xfetch(300, 1.0, 0.05, expiries=50, seed=9)
    b = simulate_xfetch(300, 1.0, 0.05, expiries=50, seed=9)
    assert a.equals(b)


def test_simulation_rejects_bad_input():
    with pytest.raises(ConfigurationError):
        simulate_xfetch(0, 1.0, 0.05)
    with pytest.raises(ConfigurationError):
        simulate_xfetch(100, 1.0, 0.0)


def test_closed_form_values():
    assert expected_xfetch_recomputes(1.0) == pytest.approx(math.e)
    assert expected_xfetch_recomputes(2.0) == pytest.approx(1.6487, abs=1e-4)


# --- the live experiment on Redis --------------------------------------------------------------


def check_result(result: ExpiryResult) -> None:
    assert list(result.requests.columns) == EXPIRY_REQUEST_COLUMNS
    assert list(result.windows.columns) == WINDOW_COLUMNS
    s = result.summary
    assert s["requests"] == len(result.requests)
    assert s["backend_calls"] == len(result.backend) == result.windows["recomputes"].sum()
    assert s["expiries"] == len(result.windows)
    assert (result.requests["latency_ms"] >= 0).all()
    assert result.requests["t_s"].is_monotonic_increasing


@pytest.mark.redis
async def test_hard_ttl_stampedes_at_every_expiry(real_redis):
    """No refresh, no protection: every expiry is a burst of misses and several loads."""
    result = await run_expiry(200, 3.0, 0.5, 40, redis=real_redis, seed=1)
    check_result(result)
    s = result.summary
    assert s["expiries"] >= 4  # 3 s of traffic with a 0.5 s TTL
    assert s["misses"] >= s["expiries"]  # each expiry is noticed by at least one request
    assert s["recomputes_per_expiry"] > 1.5  # rate × load time = 8 would load at once
    assert s["stale"] == 0


@pytest.mark.redis
async def test_xfetch_refreshes_before_expiry(real_redis):
    result = await run_expiry(200, 3.0, 0.5, 40, refresh="xfetch", beta=1.5, redis=real_redis,
                              seed=2)  # fmt: skip
    check_result(result)
    s, outcomes = result.summary, result.requests["outcome"]
    assert s["expiries"] >= 4
    # Requests recompute the value early, before it expires, and every backend call is such a
    # refresh or the load of a request that found the value gone. How many expiries are caught
    # in time, and how many recomputes each draws, depends on how the 40 ms loads compare with
    # the gaps between reads on this machine at this moment (a starved one lets expiries through):
    # notebook 03 measures it; the paper's e^(1/beta) is checked where its model holds, by
    # simulate_xfetch above.
    assert (outcomes == "refresh").sum() >= 1
    assert (outcomes == "refresh").sum() + (outcomes == "load").sum() == s["backend_calls"]
    assert s["stale"] == 0  # XFetch never serves a value past its TTL


@pytest.mark.redis
async def test_stale_while_revalidate_serves_the_old_value_while_it_refreshes(real_redis):
    result = await run_expiry(200, 3.0, 0.6, 40, refresh="swr", soft_ttl=0.3, redis=real_redis,
                              seed=3)  # fmt: skip
    check_result(result)
    s, outcomes = result.summary, result.requests["outcome"]
    # Past the soft TTL requests get the old value at once (marked stale) while one refresh runs
    # in the background. On a quiet machine no request misses at all; whether a refresh lands
    # before the hard TTL on a starved one is timing, measured in notebook 03, not asserted.
    assert s["stale"] > 0
    assert (outcomes == "stale").sum() == s["stale"]
    assert (outcomes == "refresh").sum() == 0  # no caller recomputes in the foreground


@pytest.mark.redis
async def test_distributed_policy_loads_once_per_expiry_across_instances(real_redis):
    result = await run_expiry(200, 2.5, 0.5, 40, instances=3, policy="distributed",
                              redis=real_redis, seed=4)  # fmt: skip
    check_result(result)
    assert result.summary["max_recomputes"] == 1
    assert set(result.requests["instance"]) == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rate": 0}, "rate"),
        ({"ttl": -1}, "ttl"),
        ({"loader_ms": 5000}, "loader_ms"),
        ({"policy": "nope"}, "herd policy"),
        ({"refresh": "later"}, "refresh"),
        ({"instances": 0}, "instances"),
    ],
)
async def test_bad_arguments_are_refused(fake_redis, kwargs, match):
    options = {"rate": 100, "duration": 1, "ttl": 1, "loader_ms": 10, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        await run_expiry(redis=fake_redis, **options)


async def test_plot_expiry_overview(fake_redis):
    results = [
        await run_expiry(100, 1.0, 0.3, 20, refresh=r, beta=1.0, redis=fake_redis, seed=1)
        for r in ("none", "xfetch")
    ]
    fig = plot_expiry_overview(results)
    left, _middle, right = fig.axes
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
        assert ax.get_legend() is not None
    assert "closed form" in " ".join(t.get_text() for t in left.get_legend().get_texts())
    assert [t.get_text() for t in left.get_xticklabels()] == ["none", "xfetch β=1"]
    assert "(s)" in right.get_xlabel()


# --- real OS processes -------------------------------------------------------------------------


@pytest.mark.redis
async def test_processes_local_loads_once_per_process_and_distributed_once(real_redis):
    local = await run_stampede(400, 4, "local", 60, redis=real_redis, processes=True)
    assert local.summary["backend_calls"] == 4
    assert set(local.requests["instance"]) == {0, 1, 2, 3}
    assert len(local.requests) == 400
    distributed = await run_stampede(400, 4, "distributed", 60, redis=real_redis, processes=True)
    assert distributed.summary["backend_calls"] == 1
    assert distributed.summary["errors"] == 0
    assert (distributed.requests["outcome"] == "load").sum() == 1


async def test_processes_need_a_real_server(fake_redis):
    with pytest.raises(ConfigurationError, match="fakeredis"):
        await run_stampede(8, 2, "local", 10, redis=fake_redis, processes=True)


# --- the command line ------------------------------------------------------------------------


@pytest.mark.redis
def test_cli_stampede_processes_json():
    result = run_cli("stampede", "--clients", "200", "--instances", "4", "--processes",
                     "--policy", "local,distributed", "--json", "--url", REAL_URL)  # fmt: skip
    assert result.exit_code == 0, result.output
    calls = {r["policy"]: r["backend_calls"] for r in json.loads(result.clean_stdout)}
    assert calls == {"local": 4, "distributed": 1}


@pytest.mark.redis
def test_cli_expiry_json_and_plot(tmp_path):
    plot = tmp_path / "expiry.png"
    result = run_cli("expiry", "--rate", "100", "--duration", "1.5", "--ttl", "0.5",
                     "--loader-ms", "20", "--refresh", "none,xfetch", "--beta", "1,2", "--json",
                     "--plot", str(plot), "--seed", "1", "--url", REAL_URL)  # fmt: skip
    assert result.exit_code == 0, result.output
    records = json.loads(result.clean_stdout)
    assert [(r["refresh"], r["beta"]) for r in records] == [
        ("none", None), ("xfetch", 1.0), ("xfetch", 2.0)
    ]  # fmt: skip
    assert records[1]["expected_recomputes"] == pytest.approx(math.e)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--refresh", "later"], "unknown refresh"),
        (["--beta", "1,x"], "--beta"),
        (["--beta", "0"], "above 0"),
        (["--rate", "0"], "rate"),
    ],
)
def test_cli_expiry_bad_input(args, words):
    result = run_cli("expiry", *args, "--url", REAL_URL)
    assert result.exit_code == 1
    assert words in result.clean_stderr
    assert "Traceback" not in result.output


def test_expiry_events_split_where_the_first_load_of_a_generation_ends():
    """Recomputes that overlap the first load of a generation are one event, however soon the
    next generation comes (XFetch may refresh long before the TTL)."""
    import pandas as pd

    from cachelab.experiments.expiry import _expiry_events

    calls = pd.DataFrame(
        {"start_ms": [100, 120, 140, 260, 270, 400], "end_ms": [150, 170, 190, 310, 320, 450]}
    )
    assert _expiry_events(calls) == pytest.approx([0.1, 0.26, 0.4])
