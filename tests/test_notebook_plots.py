"""The plotting helpers written for notebooks 02 and 03: plot_events, plot_backend_rate and
plot_xfetch_sweep. Built from small hand-made frames, so no Redis is needed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from cachelab.experiments import plot_backend_rate, plot_events, plot_xfetch_sweep


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "the chart has no legend"
    return [t.get_text() for t in legend.get_texts()]


# --- plot_events ----------------------------------------------------------------------------


@pytest.fixture
def story() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "t_ms": [1000.0, 1000.1, 1700.0, 1705.0, 1708.0, 2500.0, 2504.0],
            "actor": ["holder A"] * 2 + ["lock"] + ["holder B"] * 2 + ["holder A"] * 2,
            "event": [
                "acquired the lock (fence n), loading",
                "paused (SIGSTOP)",
                "expired: holder A could not extend it",
                "acquired the expired lock (fence n+1), loading",
                "stored its value and released",
                "resumed (SIGCONT), finishes its load",
                "tried to store its old value: refused by the fence",
            ],
        }
    )


def test_plot_events_has_title_units_and_one_lane_per_actor(story):
    ax = plot_events(story, title="Kleppmann's paused holder")
    assert ax.get_title() == "Kleppmann's paused holder"
    assert ax.get_xlabel() == "time since the first event (ms)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["holder A", "lock", "holder B"]
    assert ax.get_yticks().tolist() == [2, 1, 0]  # first actor on top


def test_plot_events_default_title():
    events = pd.DataFrame({"t_ms": [5.0], "actor": ["x"], "event": ["happened"]})
    assert plot_events(events).get_title() == "What happened, and when"


def test_plot_events_labels_every_event_at_its_time_from_the_first(story):
    ax = plot_events(story)
    labels = {t.get_text().replace("\n", " "): t.xy for t in ax.texts}
    assert len(labels) == len(story)
    assert labels["paused (SIGSTOP)"] == pytest.approx((0.1, 2))
    assert labels["stored its value and released"] == pytest.approx((708.0, 0))
    markers = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    assert sorted(markers[:, 0].tolist()) == pytest.approx(sorted(story["t_ms"] - 1000.0))


def test_plot_events_legend_names_actors_and_spans(story):
    spans = [("holder A", "paused", "resumed", "frozen (SIGSTOP)")]
    ax = plot_events(story, spans=spans)
    assert legend_texts(ax) == [
        "event of holder A",
        "event of lock",
        "event of holder B",
        "frozen (SIGSTOP)",
    ]


def test_plot_events_span_from_event_texts_and_numbers(story):
    spans = [
        ("holder A", "paused", "resumed", "frozen"),
        ("watchdog", 1000.0, 1600.0, "a lane without events"),
    ]
    ax = plot_events(story, spans=spans, lanes=["watchdog", "holder A", "lock", "holder B"])
    bars = {c.get_label(): c.patches[0] for c in ax.containers}
    frozen = bars["frozen"]
    assert frozen.get_x() == pytest.approx(0.1)
    assert frozen.get_width() == pytest.approx(1500.0 - 0.1)
    assert frozen.get_y() + frozen.get_height() / 2 == pytest.approx(2)  # holder A's lane
    watchdog = bars["a lane without events"]
    assert (watchdog.get_x(), watchdog.get_width()) == pytest.approx((0.0, 600.0))
    assert ax.get_yticklabels()[0].get_text() == "watchdog"


def test_plot_events_hatches_a_second_span_in_the_same_lane(story):
    spans = [("holder A", 1000.0, "paused", "loading"), ("holder A", "paused", "resumed", "frozen")]
    bars = {c.get_label(): c.patches[0] for c in plot_events(story, spans=spans).containers}
    assert not bars["loading"].get_hatch()
    assert bars["frozen"].get_hatch() == "//"


def test_plot_events_rejects_unknown_event_text_and_incomplete_lanes(story):
    with pytest.raises(ValueError, match="no event contains 'exploded'"):
        plot_events(story, spans=[("lock", "exploded", "expired", "x")])
    with pytest.raises(ValueError, match="missing"):
        plot_events(story, lanes=["holder A", "lock"])


def test_plot_events_draws_on_given_axes(story):
    _fig, ax = plt.subplots()
    assert plot_events(story, ax=ax) is ax


# --- plot_backend_rate ----------------------------------------------------------------------


def run(policy: str, rates: list[float], bucket_s: float = 0.1):
    frame = pd.DataFrame({"t_s": np.arange(len(rates)) * bucket_s, "calls_per_s": rates})
    return SimpleNamespace(rate=frame, summary={"policy": policy})


def test_plot_backend_rate_has_title_units_and_peaks_in_the_legend():
    ax = plot_backend_rate([run("none", [0, 250, 40]), run("lease", [0, 10, 10])], title="hot")
    assert ax.get_title() == "hot"
    assert ax.get_xlabel() == "time since the start of the run (s)"
    assert ax.get_ylabel() == "backend calls per second (calls/s, in 100 ms buckets)"
    assert legend_texts(ax) == ["policy none (peak 250/s)", "policy lease (peak 10/s)"]
    assert len(ax.get_lines()) == 2


def test_plot_backend_rate_labels_bucket_and_mark():
    results = [run("local", [0, 980, 80], 0.05), run("local", [120, 320, 200], 0.05)]
    ax = plot_backend_rate(results, ["no jitter", "jitter 0.2"], mark_s=1.0, mark_label="TTL")
    assert "in 50 ms buckets" in ax.get_ylabel()
    assert legend_texts(ax) == ["no jitter (peak 980/s)", "jitter 0.2 (peak 320/s)", "TTL"]
    mark = ax.get_lines()[-1]
    assert list(mark.get_xdata()) == [1.0, 1.0]
    assert ax.get_title() == "Backend load over time"


def test_plot_backend_rate_step_line_follows_the_rates():
    ax = plot_backend_rate([run("none", [0, 250, 40])])
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == [0, 250, 40, 40]  # the last bucket drawn to its end
    assert list(line.get_xdata()) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert line.get_drawstyle() == "steps-post"
    assert ax.get_ylim() == pytest.approx((0, 250 * 1.3))  # room for the legend


def test_plot_backend_rate_needs_one_label_per_result():
    with pytest.raises(ValueError, match="2 results but 1 labels"):
        plot_backend_rate([run("a", [1]), run("b", [2])], ["only one"])


# --- plot_xfetch_sweep ----------------------------------------------------------------------


@pytest.fixture
def simulated() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "beta": [1.0, 1.0, 1.5, 1.5, 2.0, 2.0],
            "recomputes": [2, 4, 1, 3, 1, 2],
        }
    )


def test_plot_xfetch_sweep_has_title_units_and_legend(simulated):
    live = [{"beta": 1.0, "recomputes_per_expiry": 2.5}]
    ax = plot_xfetch_sweep(simulated, live)
    assert ax.get_title() == "XFetch: recomputes per expiry against β"
    assert ax.get_xlabel().startswith("β (XFetch's beta, no unit")
    assert ax.get_ylabel() == "recomputes per expiry (backend calls, mean)"
    assert legend_texts(ax) == [
        "closed form e^(1/β)",
        "simulated: calls per expiry, early and missed (mean of 2 per β)",
        "measured live on Redis (run_expiry)",
        "2 recomputes: the paper's bound at β = 1.5",
    ]


def test_plot_xfetch_sweep_draws_means_closed_form_and_the_line_at_two(simulated):
    ax = plot_xfetch_sweep(simulated, title="sweep")
    lines = {line.get_label(): line for line in ax.get_lines()}
    means = lines["simulated: calls per expiry, early and missed (mean of 2 per β)"]
    assert list(means.get_xdata()) == [1.0, 1.5, 2.0]
    assert list(means.get_ydata()) == [3.0, 2.0, 1.5]
    curve = lines["closed form e^(1/β)"]
    x, y = np.asarray(curve.get_xdata()), np.asarray(curve.get_ydata())
    assert y == pytest.approx(np.exp(1 / x))
    assert x.min() < 1.0 and x.max() > 2.0
    bound = lines["2 recomputes: the paper's bound at β = 1.5"]
    assert list(bound.get_ydata()) == [2, 2]
    assert ax.get_title() == "sweep"
    assert "measured live on Redis (run_expiry)" not in legend_texts(ax)


def test_plot_xfetch_sweep_places_live_points(simulated):
    live = pd.DataFrame({"beta": [1.0, 3.0], "recomputes_per_expiry": [2.1, 1.4]})
    ax = plot_xfetch_sweep(simulated, live, mark_beta=2.0)
    points = ax.collections[0].get_offsets()
    assert points.tolist() == [[1.0, 2.1], [3.0, 1.4]]
    curve = next(line for line in ax.get_lines() if line.get_label() == "closed form e^(1/β)")
    assert max(curve.get_xdata()) == pytest.approx(3.0 * 1.05)  # the curve spans the live points
    assert "2 recomputes: the paper's bound at β = 2" in legend_texts(ax)
    assert math.exp(1 / 2.0) < 2


# --- the palette, and the caller's matplotlib settings ------------------------------------------


def test_charts_draw_in_the_colour_blind_safe_palette_and_leave_settings_alone():
    from cachelab.experiments import plot_latency_cdf
    from cachelab.experiments.plots import OUTCOME_COLORS, PALETTE

    before = (plt.rcParams["axes.prop_cycle"], plt.rcParams["interactive"])
    frame = pd.DataFrame({"policy": ["a"] * 3 + ["b"] * 3, "latency_ms": [1, 2, 3, 4, 5, 6]})
    ax = plot_latency_cdf(frame)
    colours = [line.get_color().upper() for line in ax.get_lines()[:2]]
    assert colours == [c.upper() for c in PALETTE[:2]]
    assert set(OUTCOME_COLORS.values()) <= set(PALETTE) | {"#7F7F7F"}
    # rc_context would also restore `interactive`, which hides every later inline chart
    assert (plt.rcParams["axes.prop_cycle"], plt.rcParams["interactive"]) == before


def test_plot_latency_cdf_can_use_a_log_scale_for_hits_and_loads_together():
    from cachelab.experiments import plot_latency_cdf

    frame = pd.DataFrame({"strategy": ["x"] * 4, "latency_ms": [0.1, 0.2, 20.0, 25.0]})
    ax = plot_latency_cdf(frame, by="strategy", log=True)
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "latency (ms, log scale)"
    assert plot_latency_cdf(frame, by="strategy").get_xscale() == "linear"


def test_plot_invalidation_counts_what_was_left_behind_not_every_late_stale_read():
    from cachelab.experiments import plot_invalidation

    def result(mode, stale, after, left):
        reads = pd.DataFrame({"t_s": [1.0], "stale": [True], "staleness_ms": [500.0]})
        summary = {"mode": mode, "stale_reads": stale, "stale_after_reconnect": after,
                   "left_behind": left, "delivery_window_ms": 100.0, "reconnected_s": 0.9,
                   "killed_s": 0.5, "reads": 100}  # fmt: skip
        return SimpleNamespace(summary=summary, reads=reads)

    fig = plot_invalidation([result("pubsub-noflush", 40, 39, 35), result("pubsub", 2, 1, 0)])
    left = fig.axes[0]
    labels = [t.get_text() for t in left.texts]
    assert labels == ["40", "2", "35", "0"]
    assert "left behind: stale after reconnecting, its invalidation lost" in legend_texts(left)


# --- plot_hit_path (notebook 01b) -----------------------------------------------------------


def hit_rows(name: str, rates: dict[int, list[float]]) -> list[dict]:
    return [
        {"contender": name, "concurrency": level, "round": i, "reads_per_s": rate}
        for level, values in rates.items()
        for i, rate in enumerate(values)
    ]


@pytest.fixture
def hits() -> pd.DataFrame:
    frame = pd.DataFrame(
        hit_rows("redis-py GET + json.loads", {1: [5000, 6000, 7000], 50: [8000, 9000, 9500]})
        + hit_rows("cachelab, batching on", {1: [10_000, 12_000, 11_000], 50: [50_000] * 3})
    )
    frame.attrs["skipped"] = {"redis-benchmark GET": "it was not asked for"}
    return frame


def test_plot_hit_path_is_log_log_with_title_units_and_legend(hits):
    from cachelab.experiments import plot_hit_path

    ax = plot_hit_path(hits)
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_title() == "Hit throughput on warm keys (median of 3 rounds, bars min-max)"
    assert "concurrent coroutines" in ax.get_xlabel() and "log scale" in ax.get_xlabel()
    assert "reads/s" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "50"]
    texts = legend_texts(ax)
    assert texts[:2] == ["redis-py GET + json.loads", "cachelab, batching on"]
    assert texts[2].replace("\n", " ") == "redis-benchmark GET: not measured, it was not asked for"


def test_plot_hit_path_draws_medians_with_min_max_bars(hits):
    from cachelab.experiments import plot_hit_path
    from cachelab.experiments.plots import PALETTE

    ax = plot_hit_path(hits)
    raw, batched = ax.containers
    line, _caps, (bars,) = raw.lines
    assert line.get_xdata().tolist() == [1, 50]
    assert line.get_ydata().tolist() == [6000, 9000]  # medians
    spans = [segment[:, 1].tolist() for segment in bars.get_segments()]
    assert spans == [[5000, 7000], [8000, 9500]]  # slowest to fastest round
    assert batched.lines[0].get_ydata().tolist() == [11_000, 50_000]
    colours = [c.lines[0].get_color().upper() for c in ax.containers]
    assert colours == [c.upper() for c in PALETTE[:2]]
    assert raw.lines[0].get_linestyle() != batched.lines[0].get_linestyle()  # not colour alone


def test_plot_hit_path_draws_on_given_axes_and_without_skips(hits):
    from cachelab.experiments import plot_hit_path

    _fig, ax = plt.subplots()
    hits.attrs = {}
    assert plot_hit_path(hits, ax, title="mine") is ax
    assert ax.get_title() == "mine" and len(legend_texts(ax)) == 2
