"""measure_invalidation_latency (notebooks 04 and 05) and plot_latency_distribution."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from helpers import glob_escape, scan_keys

from cachelab import ConfigurationError, ExperimentError, PubSubInvalidator
from cachelab.experiments import (
    LATENCY_COLUMNS,
    measure_invalidation_latency,
    plot_latency_distribution,
)
from cachelab.store import Announce


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def check_frame(frame: pd.DataFrame, mode: str, samples: int) -> None:
    assert list(frame.columns) == LATENCY_COLUMNS
    assert len(frame) == samples
    assert set(frame["mode"]) == {mode}
    assert frame["sample"].tolist() == list(range(samples))
    assert (frame["write_ms"] > 0).all()
    assert (frame["latency_ms"] > 0).all()  # the drop always follows the write's start
    assert (frame["after_return_ms"] >= 0).all()
    assert (frame["after_return_ms"] <= frame["latency_ms"]).all()
    # a drop before the write returned has no window after it
    assert (frame.loc[frame["before_return"], "after_return_ms"] == 0).all()


async def test_every_sample_is_one_invalidation_and_nothing_is_left_behind(any_redis, namespace):
    frame = await measure_invalidation_latency(any_redis, "pubsub", 20, namespace=namespace)
    check_frame(frame, "pubsub", 20)
    assert await scan_keys(any_redis, glob_escape(namespace) + "*") == set()


# The real server only: the stream (and its deletion afterwards) as the notebooks see it.
@pytest.mark.redis
async def test_streams_samples_and_the_stream_is_deleted(real_redis, namespace):
    frame = await measure_invalidation_latency(real_redis, "streams", 20, namespace=namespace)
    check_frame(frame, "streams", 20)
    assert await scan_keys(real_redis, glob_escape(namespace) + "*") == set()  # the log too


@pytest.mark.redis
async def test_tracking_needs_no_publish_and_is_fast_on_a_real_server(real_redis, namespace):
    frame = await measure_invalidation_latency(real_redis, "tracking", 30, namespace=namespace)
    check_frame(frame, "tracking", 30)
    assert frame["latency_ms"].median() < 50  # loopback: well under a millisecond, usually
    assert await scan_keys(real_redis, glob_escape(namespace) + "*") == set()


async def test_tracking_on_fakeredis_says_it_needs_a_real_server(fake_redis, namespace):
    with pytest.raises(ConfigurationError, match="real Redis"):
        await measure_invalidation_latency(fake_redis, "tracking", 3, namespace=namespace)
    assert await scan_keys(fake_redis, glob_escape(namespace) + "*") == set()


async def test_a_lost_invalidation_times_out_with_a_clear_error(fake_redis, namespace, monkeypatch):
    def lost(self, keys, key):
        self.stats.sent += 1
        return Announce(channel=f"{keys.namespace}:nobody-listens", message="lost")

    monkeypatch.setattr(PubSubInvalidator, "announcement", lost)
    with pytest.raises(ExperimentError, match="no invalidation reached the reader"):
        await measure_invalidation_latency(
            fake_redis, "pubsub", 3, timeout_s=0.2, namespace=namespace
        )
    assert await scan_keys(fake_redis, glob_escape(namespace) + "*") == set()


@pytest.mark.parametrize(
    ("mode", "samples", "match"),
    [("none", 5, "unknown mode"), ("gossip", 5, "unknown mode"), ("pubsub", 0, "samples")],
)
async def test_bad_arguments_are_refused(fake_redis, mode, samples, match):
    with pytest.raises(ConfigurationError, match=match):
        await measure_invalidation_latency(fake_redis, mode, samples)


# --- plot_latency_distribution -----------------------------------------------------------------


@pytest.fixture
def reads() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "strategy": ["L1 hit"] * 4 + ["Redis GET"] * 4,
            "latency_ms": [0.002, 0.002, 0.003, 0.004, 0.25, 0.3, 0.35, 1.5],
        }
    )


def test_plot_latency_distribution_has_a_log_axis_units_and_percentiles(reads):
    ax = plot_latency_distribution(
        reads, by="strategy", title="L1 against Redis", marks=[(2.0, "2 ms")]
    )
    assert ax.get_title() == "L1 against Redis"
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "latency (ms, log scale)"
    assert "fraction" in ax.get_ylabel()
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts[0].startswith("L1 hit: median 2.5 µs, p99 ")
    assert texts[1].startswith("Redis GET: median 325 µs, p99 1.47 ms")
    assert texts[2] == "2 ms"
    curves = ax.get_lines()
    assert curves[0].get_ydata().tolist() == [0.25, 0.5, 0.75, 1.0]
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    assert {"0.001", "0.01", "0.1", "1"} <= labels  # plain numbers, not 1e-03


def test_plot_latency_distribution_counts_zeros_it_cannot_draw():
    frame = pd.DataFrame({"mode": ["pubsub"] * 4, "after_return_ms": [0.0, 0.0, 0.1, 0.2]})
    ax = plot_latency_distribution(frame, by="mode", column="after_return_ms")
    (curve,) = ax.get_lines()
    assert curve.get_xdata().tolist() == [0.1, 0.2]
    assert curve.get_ydata().tolist() == [0.75, 1.0]  # starts at the zeros' share
    (text,) = ax.get_legend().get_texts()
    assert text.get_text().endswith("(2 at 0)")
