"""compare_policies (every herd and refresh policy under the workload that tests it) and its
2x2 chart, plot_comparison."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.figure import Figure

from cachelab import ConfigurationError
from cachelab.experiments import COMPARISON_COLUMNS, compare_policies, plot_comparison
from cachelab.experiments import compare as compare_module
from cachelab.experiments.compare import COMBINATIONS, WORKLOADS, policy_label
from cachelab.experiments.plots import VERMILLION

HERDS = ["none", "lock_table", "local", "distributed", "lease"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def by_label(frame: pd.DataFrame) -> dict[str, pd.Series]:
    return {row.label: row for _i, row in frame.iterrows()}


def check_shape(frame: pd.DataFrame, workload: str) -> None:
    pairs = COMBINATIONS[workload]
    assert list(frame.columns) == COMPARISON_COLUMNS
    assert list(zip(frame["herd"], frame["refresh"], strict=True)) == pairs
    assert set(frame["workload"]) == {workload}
    assert list(frame["label"]) == [policy_label(h, r) for h, r in pairs]
    assert (frame["loads_per_event"] == frame["backend_loads"] / frame["events"]).all()
    assert (frame["p50_ms"] <= frame["p99_ms"]).all()
    assert (frame["misses"] + frame["stale_served"] <= frame["requests"]).all()


# --- the cold start: the herd axis -----------------------------------------------------------


@pytest.mark.redis
async def test_cold_start_loads_once_per_instance_set_or_once_per_client(real_redis):
    clients, instances = 120, 4
    frame = await compare_policies(
        clients, instances, 40, workloads=["cold start"], redis=real_redis, seed=1
    )
    check_shape(frame, "cold start")
    assert list(frame["herd"]) == HERDS
    rows = {row.herd: row for _i, row in frame.iterrows()}
    assert rows["distributed"].backend_loads == 1  # one load across every instance
    assert rows["lease"].backend_loads == 1
    assert rows["local"].backend_loads == instances  # one per instance
    assert rows["lock_table"].backend_loads == instances
    # every client loads (a few may read the first stored value on a busy machine)
    assert 0.95 * clients <= rows["none"].backend_loads <= clients
    assert rows["none"].misses == rows["none"].backend_loads  # each miss loaded for itself
    for herd in ("lock_table", "local", "distributed", "lease"):
        assert rows[herd].misses == clients  # nobody can avoid waiting on a cold key
    assert (frame["requests"] == clients).all() and (frame["events"] == 1).all()
    assert (frame["stale_served"] == 0).all() and (frame["outdated_reads"] == 0).all()
    assert await real_redis.ping()  # the given client is not closed


# --- steady traffic across expiries: the refresh axis ---------------------------------------


@pytest.mark.redis
async def test_expiries_refresh_policies_remove_misses_and_herds(real_redis):
    frame = await compare_policies(
        20, 3, 30, rate=200, duration=1.6, ttl=0.4, workloads=["expiries"],
        redis=real_redis, seed=2,
    )  # fmt: skip
    check_shape(frame, "expiries")
    rows = by_label(frame)
    hard, locked = rows["none + hard TTL"], rows["distributed + hard TTL"]
    assert hard.events >= 3 and hard.misses >= hard.events  # every expiry is noticed
    assert hard.loads_per_event > 1  # a herd at each expiry: rate × load time = 6
    assert locked.loads_per_event == 1  # one load per expiry across the instances...
    assert locked.misses >= locked.events  # ...but requests still wait for it
    swr = rows["distributed + stale-while-revalidate"]
    # Early refresh keeps requests from waiting as far as the refresh lands before the hard
    # TTL: on a quiet machine no request misses at all, but a starved one can delay every
    # refresh past the expiry (a loaded CI run: distributed + XFetch 47 misses, the hard TTL
    # 28). How many misses it saves is a timing, shown in notebooks 03 and 07; what holds at any
    # speed is how each serves.
    assert swr.stale_served > 0
    # one background refresh per expiry, give or take a refresh racing the previous one's store
    assert swr.loads_per_event <= 1.5
    for label in ("none + XFetch", "distributed + XFetch"):
        assert rows[label].stale_served == 0  # XFetch never serves a value past its TTL
    assert (frame["requests"] == frame["requests"].iloc[0]).all()  # one seed, same arrivals
    assert (frame["outdated_reads"] == 0).all()


# --- a hot key under writes: stale values ---------------------------------------------------


@pytest.mark.redis
async def test_writes_only_leases_serve_marked_stale_values_and_fences_bound_the_loads(real_redis):
    # a write per load time: loads straddle deletes all the time, so stale sets would be sure
    frame = await compare_policies(
        20, 4, 40, rate=200, duration=1.5, writes_per_s=25, workloads=["writes"],
        redis=real_redis, seed=3,
    )  # fmt: skip
    check_shape(frame, "writes")
    rows = {row.herd: row for _i, row in frame.iterrows()}
    # How many of the ~37 invalidations the reads notice depends on how fast a (busy) machine
    # serves them; what follows holds per invalidation noticed, however many that is.
    assert rows["none"].events >= 1
    # every herd fences its fills, and a lookup that starts after a delete never joins a load
    # begun before it: no read is answered with a value older than a completed delete
    assert (frame["outdated_reads"] == 0).all()
    for herd in ("distributed", "lease"):
        # one grant per invalidation; +1: the last delete's reload may start before any read
        # notices that delete (the writer records it after DEL returns)
        assert rows[herd].backend_loads <= rows[herd].events + 1
    assert rows["none"].backend_loads > rows["none"].events  # a herd at every invalidation
    assert rows["lease"].stale_served > 0  # the old value, marked stale, while one refills
    for herd in ("none", "local", "distributed"):
        assert rows[herd].stale_served == 0  # only leases serve values marked stale
    assert (frame["refresh"] == "none").all()


# --- choosing what to run --------------------------------------------------------------------


async def test_chosen_combinations_and_progress(fake_redis):
    seen = []
    frame = await compare_policies(
        12, 3, 5, workloads=["cold start"], combinations={"cold start": [("local", "none")]},
        redis=fake_redis, on_run=seen.append,
    )  # fmt: skip
    assert list(frame["label"]) == ["local + hard TTL"]
    assert frame.loc[0, "backend_loads"] == 3 and frame.loc[0, "misses"] == 12
    assert seen == frame.to_dict("records")


def test_default_combinations_cover_every_herd_and_refresh_policy():
    pairs = {pair for workload in WORKLOADS for pair in COMBINATIONS[workload]}
    assert {herd for herd, _ in pairs} == set(HERDS)
    assert {refresh for _, refresh in pairs} == {"none", "xfetch", "swr"}
    assert {r for w in ("cold start", "writes") for _, r in COMBINATIONS[w]} == {"none"}


def test_policy_labels_are_readable():
    assert policy_label("distributed", "xfetch") == "distributed + XFetch"
    assert policy_label("none", "none") == "none + hard TTL"
    assert policy_label("lease", "swr") == "lease + stale-while-revalidate"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"workloads": ["warm start"]}, "unknown workload 'warm start'"),
        ({"combinations": {"later": [("none", "none")]}}, "unknown workload 'later'"),
        ({"combinations": {"expiries": [("nope", "none")]}}, "herd policy"),
        ({"combinations": {"expiries": [("none", "later")]}}, "unknown refresh 'later'"),
        ({"combinations": {"expiries": [("none",)]}}, r"\(herd, refresh\) pairs"),
        ({"combinations": {"cold start": [("local", "xfetch")]}}, "no value to refresh"),
        ({"combinations": {"writes": [("lease", "swr")]}}, "herd policies under invalidations"),
        ({"workloads": []}, "no combinations to run"),
        ({"clients": 0}, "clients"),
        ({"clients": 3, "instances": 4}, "instances"),
        ({"rate": 0}, "rate"),
        ({"writes_per_s": -1}, "writes_per_s"),
        ({"loader_ms": 600}, "loader_ms"),  # not shorter than the 0.5 s ttl
        ({"beta": 0}, "beta"),
    ],
)
async def test_bad_input_is_refused_before_connecting(monkeypatch, options, match):
    async def no_connect(**_options):
        raise AssertionError("connected although the arguments were invalid")

    monkeypatch.setattr(compare_module, "connect", no_connect)
    with pytest.raises(ConfigurationError, match=match):
        await compare_policies(**options)


# --- plot_comparison --------------------------------------------------------------------------


@pytest.fixture
def frame() -> pd.DataFrame:
    rows = [
        ("cold start", "none", "none", 100, 1, 100, 100, 0, 0, 60.0, 70.0),
        ("cold start", "distributed", "none", 100, 1, 1, 100, 0, 0, 55.0, 58.0),
        ("expiries", "none", "xfetch", 400, 5, 7, 0, 0, 0, 0.5, 50.0),
        ("expiries", "distributed", "swr", 400, 6, 6, 0, 80, 0, 0.4, 2.0),
        ("writes", "none", "none", 400, 20, 130, 130, 0, 88, 0.6, 55.0),
        ("writes", "lease", "none", 400, 20, 20, 60, 120, 0, 0.7, 53.0),
    ]
    columns = [c for c in COMPARISON_COLUMNS if c not in ("label", "loads_per_event")]
    table = pd.DataFrame(rows, columns=columns)
    pairs = zip(table["herd"], table["refresh"], strict=True)
    table["label"] = [policy_label(herd, refresh) for herd, refresh in pairs]
    table["loads_per_event"] = table["backend_loads"] / table["events"]
    return table[COMPARISON_COLUMNS]


def bar_widths(ax, color=None) -> list[float]:
    return [
        p.get_width()
        for p in ax.patches
        if color is None or matplotlib.colors.same_color(p.get_facecolor(), color)
    ]


def test_plot_comparison_has_four_titled_panels_with_units(frame):
    fig = plot_comparison(frame, title="All policies")
    assert isinstance(fig, Figure)
    assert fig.get_suptitle() == "All policies"
    loads, latency, misses, stale = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "Backend load", "Tail latency", "Misses", "Stale reads"
    ]  # fmt: skip
    assert "backend loads per event" in loads.get_xlabel() and "log" in loads.get_xlabel()
    assert loads.get_xscale() == "log"
    assert "(ms, log scale)" in latency.get_xlabel() and latency.get_xscale() == "log"
    assert "(%)" in misses.get_xlabel() and "(%)" in stale.get_xlabel()
    for ax in (loads, misses):
        assert [t.get_text() for t in ax.get_yticklabels()] == list(frame["label"])
        assert ax.get_ylabel() == "herd policy + refresh policy"


def test_plot_comparison_draws_one_bar_per_row_with_its_value(frame):
    loads, latency, misses, stale = plot_comparison(frame).axes
    assert bar_widths(loads) == pytest.approx([100, 1, 1.4, 1, 6.5, 1])
    ends = [p.get_x() + p.get_width() for p in latency.patches]
    assert ends == pytest.approx(frame["p99_ms"].tolist())  # bars end at p99
    assert {p.get_x() for p in latency.patches} == {0.2}  # from half the fastest p50 (log axis)
    p50 = latency.collections[0].get_offsets()[:, 0]
    assert p50.tolist() == pytest.approx(frame["p50_ms"].tolist())
    assert bar_widths(misses) == pytest.approx([100, 100, 0, 0, 32.5, 15])
    marked = frame["stale_served"] / frame["requests"] * 100
    outdated = frame["outdated_reads"] / frame["requests"] * 100
    assert bar_widths(stale) == pytest.approx([*marked, *outdated])
    red = [p for p in stale.patches if matplotlib.colors.same_color(p.get_facecolor(), VERMILLION)]
    assert [p.get_x() for p in red] == pytest.approx(marked.tolist())  # stacked after marked
    assert [t.get_text() for t in latency.texts] == ["70", "58", "50", "2", "55", "53"]
    bar_texts = [t.get_text() for t in loads.texts if t.get_fontweight() != "bold"]
    assert bar_texts == ["100", "1", "1.4", "1", "6.5", "1"]  # never 1e+02
    assert [t.get_text() for t in stale.texts] == ["0%", "0%", "0%", "20%", "22%", "30%"]
    rows_top_to_bottom = [t.get_position()[1] for t in loads.get_yticklabels()]
    assert rows_top_to_bottom == sorted(rows_top_to_bottom)
    assert loads.get_ylim()[0] > loads.get_ylim()[1]  # the y axis runs downwards: first row on top


def test_plot_comparison_legend_names_workloads_and_marks(frame):
    fig = plot_comparison(frame)
    assert fig.get_suptitle() == "Herd and refresh policies side by side"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "cold start", "expiries", "writes", "p50 latency", "outdated after a write, served as fresh"
    ]  # fmt: skip
    loads = fig.axes[0]
    headings = [t.get_text() for t in loads.texts if t.get_fontweight() == "bold"]
    assert headings == ["cold start", "expiries", "writes"]


def test_plot_comparison_of_one_workload(frame):
    fig = plot_comparison(frame[frame["workload"] == "writes"])
    (legend,) = fig.legends
    assert "cold start" not in [t.get_text() for t in legend.get_texts()]
    assert len(fig.axes[0].patches) == 2
