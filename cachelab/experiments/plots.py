"""Charts for experiment frames: each has a title, axes with units and a legend.

Every function takes a tidy frame from an experiment, draws on ``ax`` (or a new figure) and returns
the Axes, so a notebook can end the cell with ``;`` and a test can inspect what was drawn. Colours
come from the Okabe-Ito palette (``PALETTE``), which readers with the common colour-vision
deficiencies can tell apart; red and green are never the only difference between two series.
"""

from __future__ import annotations

import functools
import math
import textwrap
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import LogFormatter, MaxNLocator

__all__ = [
    "OUTCOME_COLORS",
    "PALETTE",
    "plot_backend_calls",
    "plot_backend_rate",
    "plot_comparison",
    "plot_events",
    "plot_expiry_overview",
    "plot_hit_path",
    "plot_invalidation",
    "plot_latency_cdf",
    "plot_latency_distribution",
    "plot_outage",
    "plot_stampede_overview",
    "plot_timeline",
    "plot_timelines",
    "plot_xfetch_sweep",
]

BLUE, ORANGE, GREEN, VERMILLION = "#0072B2", "#E69F00", "#009E73", "#D55E00"
PURPLE, SKY, YELLOW, GREY = "#CC79A7", "#56B4E9", "#F0E442", "#7F7F7F"
PALETTE = [BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, "#000000", YELLOW]
"""Okabe & Ito's colour-blind-safe palette, in the order series are drawn."""

OUTCOME_COLORS = {
    "hit": GREEN,
    "load": VERMILLION,
    "shared": BLUE,
    "bypass": ORANGE,
    "stale": PURPLE,
    "refresh": SKY,
    "error": GREY,
}


def _palette(plot):
    """Draw with :data:`PALETTE` as the colour cycle of the axes it creates, leaving the caller's
    matplotlib settings as they were. (Only that one setting is swapped: ``rc_context`` would also
    restore ``interactive``, which the inline backend turns on when the first figure is drawn,
    and the notebook's later charts would then never be shown.)"""

    @functools.wraps(plot)
    def drawn(*args, **kwargs):
        previous = plt.rcParams["axes.prop_cycle"]
        plt.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)
        try:
            return plot(*args, **kwargs)
        finally:
            plt.rcParams["axes.prop_cycle"] = previous

    return drawn


def _axes(ax: Axes | None, size=(8, 4.5)) -> Axes:
    if ax is None:
        _fig, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


@_palette
def plot_timeline(
    requests: pd.DataFrame,
    backend: pd.DataFrame | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """One horizontal bar per request, from its start to its end, coloured by outcome.

    Requests are sorted by start time. If ``backend`` (a SlowBackend calls frame) is given, the
    backend calls are drawn as a shaded band behind the requests, so you can see which requests
    waited for which load.
    """
    ax = _axes(ax)
    ordered = requests.sort_values(["start_ms", "end_ms"]).reset_index(drop=True)
    for outcome, rows in ordered.groupby("outcome", sort=False):
        ax.hlines(
            rows.index,
            rows["start_ms"],
            rows["end_ms"],
            colors=OUTCOME_COLORS.get(str(outcome), "black"),
            linewidth=max(0.5, min(3.0, 300 / max(1, len(ordered)))),
            label=f"{outcome} ({len(rows)})",
        )
    if backend is not None and len(backend):
        # the columns, not itertuples(): pandas types a row's fields as any scalar
        calls = zip(backend["start_ms"], backend["end_ms"], strict=True)
        for i, (start_ms, end_ms) in enumerate(calls):
            ax.axvspan(
                start_ms,
                end_ms,
                color=VERMILLION,
                alpha=min(0.15, 2 / len(backend)),
                lw=0,
                label=f"backend call ({len(backend)})" if i == 0 else None,
            )
    ax.set_xlabel("time since the clients were released (ms)")
    ax.set_ylabel("request (sorted by start)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    policy = ", ".join(map(str, requests["policy"].unique())) if "policy" in requests else ""
    ax.set_title(title or f"Request timeline: {len(requests)} requests, policy {policy}")
    legend = ax.legend(loc="lower right", fontsize="small")
    for handle in legend.legend_handles:  # many faint backend bands: keep their key visible
        if isinstance(handle, Patch):
            handle.set_alpha(0.4)
    ax.set_xlim(left=0)
    return ax


@_palette
def plot_backend_calls(
    summaries: pd.DataFrame, *, ax: Axes | None = None, title: str | None = None
):
    """Backend calls against concurrent clients, one line per policy, log-log.

    The dashed diagonal is "every client loads": the stampede's upper bound.
    """
    ax = _axes(ax)
    for policy, rows in summaries.groupby("policy", sort=False):
        rows = rows.sort_values("clients")
        ax.plot(rows["clients"], rows["backend_calls"], marker="o", label=f"policy {policy}")
    lo, hi = summaries["clients"].min(), summaries["clients"].max()
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="one load per client")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent clients (requests for one cold key)")
    ax.set_ylabel("backend calls (loads)")
    instances = ", ".join(map(str, summaries["instances"].unique()))
    ax.set_title(title or f"Backend calls as clients grow ({instances} instances)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    return ax


@_palette
def plot_latency_cdf(
    requests: pd.DataFrame,
    *,
    by: str = "policy",
    ax: Axes | None = None,
    title: str | None = None,
    mark_ms: float | None = None,
    log: bool = False,
) -> Axes:
    """Fraction of requests answered within x ms, one curve per value of ``by``.

    ``mark_ms`` draws a dotted vertical line there, e.g. at the loader time: the least a request
    for a cold key can wait. ``log=True`` puts latency on a log scale, for mixes of
    sub-millisecond hits and slow loads that a linear axis squashes against zero.
    """
    ax = _axes(ax)
    for name, rows in requests.groupby(by, sort=False):
        values = np.sort(rows["latency_ms"].to_numpy())
        fraction = np.arange(1, len(values) + 1) / len(values)
        ax.step(
            values,
            fraction,
            where="post",
            label=f"{by} {name} (p99 {np.percentile(values, 99):.0f} ms)",
        )
    if mark_ms is not None:
        ax.axvline(mark_ms, ls=":", color="grey", label=f"one load ({mark_ms:g} ms)")
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_PlainLogFormatter())
        ax.set_xlabel("latency (ms, log scale)")
    else:
        ax.set_xlim(left=0)
        ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests answered")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Latency distribution (CDF)")
    ax.legend(loc="best")  # curves sit left or right depending on the run: avoid covering them
    ax.grid(True, alpha=0.3)
    return ax


@_palette
def plot_stampede_overview(summaries: pd.DataFrame, requests: pd.DataFrame):
    """The headline figure: backend calls per policy (left) and latency CDFs (right).

    With several client counts, the left panel is :func:`plot_backend_calls`; with one, a bar per
    policy. The right panel shows the latency CDF at the largest client count.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    if summaries["clients"].nunique() > 1:
        plot_backend_calls(summaries, ax=left)
    else:
        bars = left.bar(summaries["policy"], summaries["backend_calls"], color=VERMILLION)
        left.bar_label(bars)
        left.set_yscale("log")
        left.set_xlabel("herd policy")
        left.set_ylabel("backend calls (log scale)")
        n, k = summaries["clients"].iloc[0], summaries["instances"].iloc[0]
        left.set_title(f"Backend calls for one cold key: {n} clients, {k} instances")
        left.legend([bars], ["backend calls (loads)"])
    largest = requests[requests["clients"] == requests["clients"].max()]
    plot_latency_cdf(
        largest,
        ax=right,
        title=f"Latency of {largest['clients'].iloc[0]} concurrent requests",
        mark_ms=summaries["loader_ms"].iloc[0],
    )
    return fig


@_palette
def plot_timelines(results, *, titles: list[str] | None = None):
    """Stacked request timelines of several stampede results on one shared time axis.

    ``results`` are :class:`~cachelab.experiments.StampedeResult` objects; the default title of
    each panel names its policy, clients and instances.
    """
    results = list(results)
    fig, axes = plt.subplots(
        len(results), 1, figsize=(9, 3.4 * len(results)), sharex=True, layout="constrained",
        squeeze=False,
    )  # fmt: skip
    for i, (result, ax) in enumerate(zip(results, axes[:, 0], strict=True)):
        s = result.summary
        default = f"{s['policy']}: {s['clients']} requests, {s['instances']} instance(s)"
        plot_timeline(
            result.requests, result.backend, ax=ax, title=titles[i] if titles else default
        )
        if i < len(results) - 1:
            ax.set_xlabel("")
    return fig


def _config_label(summary: dict) -> str:
    beta = summary.get("beta")
    label = summary["refresh"] if beta is None else f"xfetch β={beta:g}"
    return label if summary.get("policy") in (None, "none") else f"{label} + {summary['policy']}"


@_palette
def plot_expiry_overview(results):
    """Compare expiry runs: recomputes and misses per expiry, and when the backend was called.

    ``results`` are :class:`~cachelab.experiments.ExpiryResult` objects. XFetch bars carry a
    marker at the paper's closed form ``e^(1/beta)``.
    """
    results = list(results)
    labels = [_config_label(r.summary) for r in results]
    fig, (left, middle, right) = plt.subplots(
        1, 3, figsize=(15, 4.5), layout="constrained", width_ratios=[1, 1, 1.4]
    )
    x = np.arange(len(results))
    recomputes = [r.summary["recomputes_per_expiry"] for r in results]
    bars = left.bar(x, recomputes, color=BLUE, label="measured (mean)")
    left.bar_label(bars, fmt="%.2f")
    expected = [
        (i, math.exp(1 / r.summary["beta"])) for i, r in enumerate(results) if r.summary["beta"]
    ]
    if expected:
        left.scatter(*zip(*expected, strict=True), marker="_", s=600, color="black", zorder=3,
                     label="closed form e^(1/β)")  # fmt: skip
    left.set_ylabel("backend calls per expiry")
    left.set_title("Recomputes per expiry")
    misses = [r.summary["misses"] / max(1, r.summary["expiries"]) for r in results]
    bars = middle.bar(x, misses, color=VERMILLION, label="requests that found no value")
    middle.bar_label(bars, fmt="%.1f")
    middle.set_ylabel("misses per expiry (requests)")
    middle.set_title("Requests that waited for a load")
    for ax in (left, middle):
        ax.set_xticks(x, labels, rotation=20, ha="right")
        ax.set_xlabel("refresh policy")
        ax.legend(loc="upper right", fontsize="small")
    for i, result in enumerate(results):
        starts = result.backend["start_ms"] / 1000
        right.scatter(starts, np.full(len(starts), i), marker="|", s=120, label=None)
    right.set_yticks(x, labels)
    right.set_xlabel("time since the start of the run (s)")
    right.set_ylabel("refresh policy")
    ttl = results[0].summary["ttl"]
    right.set_title(f"When the backend was called (TTL {ttl:g} s; one mark per call)")
    right.scatter([], [], marker="|", color="grey", label="backend call")
    right.legend(loc="upper right", fontsize="small")
    rate = results[0].summary["rate"]
    fig.suptitle(f"Expiry stampede on a hot key: {rate:g} requests/s")
    return fig


def _event_time(events: pd.DataFrame, when: float | str) -> float:
    """``when`` in ms on the events' clock: a number as is, a text as the first event holding it."""
    if isinstance(when, str):
        matching = events[events["event"].str.contains(when, regex=False)]
        if matching.empty:
            raise ValueError(f"no event contains {when!r}; events: {list(events['event'])}")
        return float(matching["t_ms"].iloc[0])
    return float(when)


@_palette
def plot_events(
    events: pd.DataFrame,
    *,
    spans=(),
    lanes: list[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """A failure story as a timeline: one lane per actor, a labelled marker per event.

    ``events`` has the columns ``t_ms``, ``actor`` and ``event`` (a
    :class:`~cachelab.experiments.FaultResult`'s ``events``); time is drawn from the first event.
    ``spans`` adds bars behind the markers, each ``(actor, start, end, label)``: ``start`` and
    ``end`` are ms on the events' clock or a piece of an event's text (that event's time), e.g.
    ``("holder A", "paused", "resumed", "frozen by SIGSTOP")``. A span's actor may be one that has
    no events (a "lock" lane, say). ``lanes`` orders the actors from top to bottom (default: in
    order of appearance, events first); a second span in one lane is hatched.
    """
    spans = list(spans)
    actors = list(dict.fromkeys([*events["actor"], *(span[0] for span in spans)]))
    if lanes is None:
        lanes = actors
    elif missing := set(actors) - set(lanes):
        raise ValueError(f"lanes must name every actor; missing: {sorted(missing)}")
    height = 1.0 + 1.1 * len(lanes)
    ax = _axes(ax, size=(10, max(3.0, height)))
    origin = float(events["t_ms"].min())
    # first actor on top; keyed by the actors as the events hold them (pandas types a group's
    # key as any scalar)
    row: dict[Any, int] = {actor: len(lanes) - 1 - i for i, actor in enumerate(lanes)}
    colors: dict[Any, str] = {actor: PALETTE[i % len(PALETTE)] for i, actor in enumerate(lanes)}
    end = float(events["t_ms"].max()) - origin
    seen: set[str] = set()
    for actor, start, stop, label in spans:
        left = _event_time(events, start) - origin
        right = _event_time(events, stop) - origin
        end = max(end, right)
        ax.barh(row[actor], right - left, left=left, height=0.5, color=colors[actor],
                alpha=0.3, hatch="//" if actor in seen else None, label=label)  # fmt: skip
        seen.add(actor)
    for actor, rows in events.groupby("actor", sort=False):
        t = rows["t_ms"].to_numpy() - origin
        ax.scatter(t, np.full(len(t), row[actor]), color=colors[actor], s=60, zorder=3,
                   edgecolor="black", label=f"event of {actor!s}")  # fmt: skip
        for j, (x, text) in enumerate(zip(t, rows["event"], strict=True)):
            ax.annotate(
                "\n".join(textwrap.wrap(str(text), 40)),
                (x, row[actor]),
                xytext=(0, 12 if j % 2 == 0 else -12),
                textcoords="offset points",
                ha="left" if x <= 0.6 * max(end, 1e-9) else "right",
                va="bottom" if j % 2 == 0 else "top",
                fontsize="small",
            )
    ax.set_yticks(list(row.values()), list(row.keys()))
    ax.set_ylim(-0.8, len(lanes) - 0.2)
    ax.set_xlim(-0.03 * max(end, 1.0), 1.03 * max(end, 1.0))
    ax.set_xlabel("time since the first event (ms)")
    ax.set_ylabel("actor")
    ax.set_title(title or "What happened, and when")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22 if len(lanes) < 4 else -0.15),
              ncols=3, fontsize="small")  # fmt: skip
    ax.grid(True, axis="x", alpha=0.3)
    return ax


@_palette
def plot_backend_rate(
    results,
    labels: list[str] | None = None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    mark_s: float | None = None,
    mark_label: str | None = None,
) -> Axes:
    """Backend calls per second over time, one step line per run (each bucket drawn to its end).

    ``results`` are :class:`~cachelab.experiments.HotKeyResult` objects (anything with a ``rate``
    frame of ``t_s`` and ``calls_per_s``); ``labels`` name them (default: their policy). Each
    legend entry carries the run's peak. ``mark_s`` draws a dotted vertical line there (e.g. at
    the TTL, when keys written together expire), labelled ``mark_label``.
    """
    results = list(results)
    if labels is None:
        labels = [f"policy {r.summary['policy']}" for r in results]
    if len(labels) != len(results):
        raise ValueError(f"{len(results)} results but {len(labels)} labels")
    ax = _axes(ax)
    bucket_ms = None
    highest = 0.0
    for i, (result, label) in enumerate(zip(results, labels, strict=True)):
        t, calls = result.rate["t_s"].to_numpy(), result.rate["calls_per_s"].to_numpy()
        if len(t) > 1:
            bucket_ms = float(t[1] - t[0]) * 1000
            t, calls = np.append(t, t[-1] + bucket_ms / 1000), np.append(calls, calls[-1])
        peak = float(calls.max()) if len(calls) else 0.0
        highest = max(highest, peak)
        ax.step(t, calls, where="post", lw=1.6, ls=("-", "--", "-.", ":")[i % 4],
                label=f"{label} (peak {peak:.0f}/s)")  # fmt: skip
    if mark_s is not None:
        ax.axvline(mark_s, ls=":", color="grey", label=mark_label or f"t = {mark_s:g} s")
    bucket = f", in {bucket_ms:.0f} ms buckets" if bucket_ms else ""
    ax.set_xlabel("time since the start of the run (s)")
    ax.set_ylabel(f"backend calls per second (calls/s{bucket})")
    ax.set_xlim(left=0)
    ax.set_ylim(0, max(highest, 1.0) * 1.3)  # headroom for the legend above the peaks
    ax.set_title(title or "Backend load over time")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, alpha=0.3)
    return ax


@_palette
def plot_xfetch_sweep(
    simulated: pd.DataFrame,
    live=None,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    mark_beta: float = 1.5,
) -> Axes:
    """XFetch's mean recomputes per expiry against beta, next to the closed form ``e^(1/beta)``.

    ``simulated`` has one row per simulated expiry with columns ``beta`` and ``recomputes`` (the
    frames of :func:`~cachelab.experiments.simulate_xfetch`, each with its ``beta`` assigned,
    concatenated). ``live`` (optional) has columns ``beta`` and ``recomputes_per_expiry`` (e.g.
    ``[r.summary for r in expiry_runs]``): measured on Redis, drawn as hollow markers. The
    dashed horizontal line is the paper's claim, fewer than 2 recomputes at ``beta = mark_beta``.
    """
    ax = _axes(ax)
    means = simulated.groupby("beta")["recomputes"].agg(["mean", "size"]).sort_index()
    betas = means.index.to_numpy(dtype=float)
    live = None if live is None else pd.DataFrame(live)
    lo = betas.min() if live is None else min(betas.min(), live["beta"].min())
    hi = betas.max() if live is None else max(betas.max(), live["beta"].max())
    grid = np.linspace(lo * 0.95, hi * 1.05, 200)
    ax.plot(grid, np.exp(1 / grid), color="black", lw=1.5, label="closed form e^(1/β)")
    per_beta = int(means["size"].min())
    label = f"simulated: calls per expiry, early and missed (mean of {per_beta} per β)"
    ax.plot(betas, means["mean"], marker="o", color=BLUE, label=label)
    if live is not None and len(live):
        ax.scatter(live["beta"], live["recomputes_per_expiry"], s=140, facecolors="none",
                   edgecolors=VERMILLION, linewidths=2, zorder=3,
                   label="measured live on Redis (run_expiry)")  # fmt: skip
    ax.axhline(2, ls="--", color="grey", lw=1,
               label=f"2 recomputes: the paper's bound at β = {mark_beta:g}")  # fmt: skip
    ax.axvline(mark_beta, ls=":", color="grey", lw=1)
    ax.set_xlabel("β (XFetch's beta, no unit; larger refreshes earlier)")
    ax.set_ylabel("recomputes per expiry (backend calls, mean)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "XFetch: recomputes per expiry against β")
    ax.legend(loc="upper right", fontsize="small")
    ax.grid(True, alpha=0.3)
    return ax


@_palette
def plot_invalidation(results):
    """Compare invalidation modes: stale reads per mode, and every stale read over time.

    ``results`` are :class:`~cachelab.experiments.InvalidationResult` objects. Left: stale reads
    in total and after the subscribers were back (bars). Right: each stale read at its time, with
    how stale it was (ms since the newer version was committed); the outage is shaded.
    """
    results = list(results)
    modes = [r.summary["mode"] for r in results]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, 4.5), layout="constrained", width_ratios=[1, 1.5]
    )
    x = np.arange(len(results))
    total = [r.summary["stale_reads"] for r in results]
    bars = left.bar(x - 0.2, total, width=0.4, color=ORANGE, label="stale reads (all)")
    left.bar_label(bars)
    cut = [i for i, r in enumerate(results) if r.summary["reconnected_s"] is not None]
    if cut:  # only runs whose subscribers were cut off have reads left behind
        after = [results[i].summary["left_behind"] for i in cut]
        label = "left behind: stale after reconnecting, its invalidation lost"
        bars = left.bar(x[cut] + 0.2, after, width=0.4, color=VERMILLION, hatch="//",
                        edgecolor="white", label=label)  # fmt: skip
        left.bar_label(bars)
    left.set_xticks(x, modes, rotation=15)
    left.set_xlabel("invalidation mode")
    left.set_ylabel("reads that returned an outdated version (reads)")
    reads = results[0].summary["reads"]
    left.set_title(f"Stale reads out of about {reads} per run")
    left.legend()
    for mode, result in zip(modes, results, strict=True):
        stale = result.reads[result.reads["stale"]]
        right.scatter(stale["t_s"], stale["staleness_ms"], s=12, label=f"{mode} ({len(stale)})")
    killed = next((r.summary["killed_s"] for r in results if r.summary["killed_s"]), None)
    back = max((r.summary["reconnected_s"] or 0 for r in results), default=0)
    if killed is not None:
        right.axvspan(killed, back, color="grey", alpha=0.2, label="subscribers cut off")
    right.set_xlabel("time since the start of the run (s)")
    right.set_ylabel("staleness (ms since the newer version)")
    right.set_yscale("symlog", linthresh=1)
    right.set_title("When stale reads happened, and how stale")
    right.legend(loc="upper left", fontsize="small")
    return fig


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (0.001, 0.5, 2), never 1e-03 or 2×10⁰."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:g}"


class _CountLogFormatter(LogFormatter):
    """Log-axis tick labels as whole numbers with thousands separators (5,000, 20,000)."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:,.0f}"


def _short_ms(ms: float) -> str:
    """A duration for a legend: µs below 1 ms, else ms, about three significant digits."""
    return f"{ms * 1000:.3g} µs" if ms < 1 else f"{ms:.3g} ms"


@_palette
def plot_latency_distribution(
    frame: pd.DataFrame,
    *,
    by: str,
    column: str = "latency_ms",
    ax: Axes | None = None,
    title: str | None = None,
    marks=(),
) -> Axes:
    """Fraction of samples within x ms, one curve per value of ``by``, on a log time axis.

    Made for latencies that span orders of magnitude (an L1 hit in µs, a network GET in tenths
    of a ms) or that sit far below a millisecond. Each legend entry carries the curve's median
    and p99. Values of 0 cannot be drawn on a log axis: they count in the fractions (the curve
    starts at their share) and the legend says how many there were. ``marks`` draws a dotted
    vertical line per ``(ms, label)`` pair, e.g. a published figure to compare with. The legend
    sits below the axes, so it never covers a curve.
    """
    ax = _axes(ax)
    styles = ["-", "--", "-.", ":"]
    for i, (name, rows) in enumerate(frame.groupby(by, sort=False)):
        values = np.sort(rows[column].to_numpy(dtype=float))
        fraction = np.arange(1, len(values) + 1) / len(values)
        positive = values > 0
        zeros = int((~positive).sum())
        p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
        label = f"{name}: median {_short_ms(p50)}, p99 {_short_ms(p99)}"
        if zeros:
            label += f" ({zeros} at 0)"
        ax.step(values[positive], fraction[positive], where="post", lw=1.8,
                ls=styles[i % len(styles)], label=label)  # fmt: skip
    for ms, label in marks:
        ax.axvline(ms, ls=":", color="grey", label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_PlainLogFormatter())
    ax.xaxis.set_minor_formatter(_PlainLogFormatter(minor_thresholds=(1, 0.4)))
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of samples (cumulative)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "Latency distribution (CDF)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return ax


WORKLOAD_COLORS = {"cold start": BLUE, "expiries": ORANGE, "writes": PURPLE}


def _grouped_positions(groups: pd.Series, gap: float = 1.2) -> tuple[np.ndarray, dict]:
    """One y position per row, top to bottom, with a gap before each new group for its name."""
    positions, starts, y, previous = [], {}, 0.0, None
    for group in groups:
        if group != previous:
            y += gap if previous is not None else gap - 0.4
            starts[group] = y - 0.75
            previous = group
        positions.append(y)
        y += 1
    return np.array(positions), starts


def _percent(value: float) -> str:
    return "<1%" if 0 < value < 1 else f"{value:.0f}%"


def _figure(value: float) -> str:
    """Three significant digits, without switching to 1e+03 notation for large values."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


@_palette
def plot_comparison(frame: pd.DataFrame, *, title: str | None = None):
    """Four panels comparing the rows of :func:`~cachelab.experiments.compare_policies`.

    One horizontal bar per (workload, herd, refresh) row, grouped and coloured by workload:
    backend loads per event and latency (p99 bars, p50 marks), both on log scales because they
    span orders of magnitude; misses and stale reads as shares of the requests (outdated reads,
    served as if fresh, stacked in red after the values marked stale).
    """
    rows = frame.reset_index(drop=True)
    y, starts = _grouped_positions(rows["workload"])
    colors = [WORKLOAD_COLORS.get(w, GREY) for w in rows["workload"]]
    fig, axes = plt.subplots(
        2, 2, figsize=(13, 3 + 0.5 * (y.max() + 1)), sharey=True, layout="constrained"
    )
    (loads, latency), (misses, stale) = axes
    share = 100 / rows["requests"].clip(lower=1)

    bars = loads.barh(y, rows["loads_per_event"], color=colors)
    loads.bar_label(bars, labels=[_figure(v) for v in rows["loads_per_event"]], padding=2)
    loads.set_xscale("log")
    loads.xaxis.set_major_formatter(_PlainLogFormatter())
    loads.set_xlim(0.5, rows["loads_per_event"].max() * 4)
    loads.set_xlabel("backend loads per event (cold start, expiry or invalidation; log scale)")
    loads.set_title("Backend load")

    floor = max(0.05, min(rows["p50_ms"].min(), rows["p99_ms"].min()) / 2)  # log: no zero
    bars = latency.barh(y, rows["p99_ms"] - floor, left=floor, color=colors)
    latency.bar_label(bars, labels=[_figure(v) for v in rows["p99_ms"]], padding=2)
    latency.scatter(
        rows["p50_ms"], y, marker="|", s=150, color="black", zorder=3, label="p50 latency"
    )
    latency.set_xscale("log")
    latency.xaxis.set_major_formatter(_PlainLogFormatter())
    latency.set_xlim(floor, rows["p99_ms"].max() * 4)
    latency.set_xlabel("request latency (ms, log scale): bars p99, marks p50")
    latency.set_title("Tail latency")

    missed = rows["misses"] * share
    bars = misses.barh(y, missed, color=colors)
    misses.bar_label(bars, labels=[_percent(v) for v in missed], padding=2)
    misses.set_xlim(0, 115)
    misses.set_xlabel("requests that found no value and waited for a load (%)")
    misses.set_title("Misses")

    marked, outdated = rows["stale_served"] * share, rows["outdated_reads"] * share
    stale.barh(y, marked, color=colors)
    stale.barh(y, outdated, left=marked, color=VERMILLION, hatch="//", edgecolor="white",
               label="outdated after a write, served as fresh")  # fmt: skip
    for yi, total in zip(y, marked + outdated, strict=True):
        stale.annotate(_percent(total), (total, yi), xytext=(2, 0), textcoords="offset points",
                       va="center")  # fmt: skip
    stale.set_xlim(0, max(10.0, (marked + outdated).max() * 1.2))
    stale.set_xlabel("requests answered with an old value (%); plain bars: marked stale")
    stale.set_title("Stale reads")

    for ax in axes.flat:
        ax.set_yticks(y, rows["label"])
        ax.grid(True, axis="x", which="major", alpha=0.3)
        for workload, heading in starts.items():
            ax.axhline(heading - 0.25, color="grey", lw=0.6)
            if ax in (loads, misses):
                ax.text(0.01, heading + 0.2, workload, transform=ax.get_yaxis_transform(),
                        fontweight="bold", va="center")  # fmt: skip
    for ax in (loads, misses):
        ax.set_ylabel("herd policy + refresh policy")
    for ax in (latency, stale):
        ax.tick_params(labelleft=False)
    loads.set_ylim(y.max() + 0.7, 0)  # first row on top
    handles = [Patch(color=c, label=w) for w, c in WORKLOAD_COLORS.items() if w in starts]
    handles += [h for ax in (latency, stale) for h in ax.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(title or "Herd and refresh policies side by side")
    return fig


_FAULT_LABELS = {
    "kill": "Redis down (SIGKILL, restarted empty)",
    "freeze": "Redis frozen (SIGSTOP, then SIGCONT)",
}


@_palette
def plot_outage(result, *, title: str | None = None):
    """Request latency over time during an outage, one panel per mode, the outage shaded.

    ``result`` is an :class:`~cachelab.experiments.OutageResult`. Each dot is one request at its
    arrival time, coloured by how it was answered (errors included: their latency is how long the
    caller waited to be told). The y axis is logarithmic, so a refused connection (~0.1 ms), a
    loader call (a few ms) and a socket timeout (hundreds of ms) all stay readable.
    """
    summary = result.summary
    fig, axes = plt.subplots(
        len(summary), 1, figsize=(11, 2.6 * len(summary)), sharex=True, sharey=True,
        layout="constrained", squeeze=False,
    )  # fmt: skip
    for ax, row in zip(axes[:, 0], summary.itertuples(), strict=True):
        requests = result.requests[result.requests["mode"] == row.mode]
        ax.axvspan(row.failed_s, row.restored_s, color=VERMILLION, alpha=0.12, lw=0,
                   label=_FAULT_LABELS.get(row.fault, "Redis unavailable"))  # fmt: skip
        for outcome, rows in requests.groupby("outcome", sort=False):
            ax.scatter(rows["t_s"], rows["latency_ms"].clip(lower=0.01), s=6,
                       color=OUTCOME_COLORS.get(str(outcome), "black"),
                       label=f"{outcome} ({len(rows)})")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log)")
        ax.set_title(
            f"{row.mode}: {row.errors} errors, {row.served_from_loader} answered by the loader, "
            f"{row.paid_timeout} paid a timeout"
        )
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", markerscale=2)
    axes[-1, 0].set_xlabel("request arrival (s since the start of the run)")
    fig.suptitle(title or "A Redis outage under steady traffic: what each mode does to requests")
    return fig


@_palette
def plot_hit_path(frame: pd.DataFrame, ax: Axes | None = None, *, title: str | None = None) -> Axes:
    """Reads per second against concurrency, one line per contender, log-log.

    ``frame`` is :func:`~cachelab.experiments.measure_hit_path`'s: each point is the median over
    its rounds, the bar through it spans the slowest and the fastest round. A contender the run
    skipped (``frame.attrs["skipped"]``) is named in the legend with the reason.
    """
    ax = _axes(ax, size=(10, 4.5))
    styles, markers = ["-", "--", "-.", ":"], ["o", "s", "^", "D"]
    for i, (name, rows) in enumerate(frame.groupby("contender", sort=False)):
        by = rows.groupby("concurrency")["reads_per_s"].agg(["median", "min", "max"]).sort_index()
        ax.errorbar(
            by.index, by["median"], yerr=[by["median"] - by["min"], by["max"] - by["median"]],
            ls=styles[i % len(styles)], marker=markers[i % len(markers)], capsize=3, label=name,
        )  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    for name, reason in frame.attrs.get("skipped", {}).items():
        labels.append("\n".join(textwrap.wrap(f"{name}: not measured, {reason}", 60)))
        handles.append(ax.plot([], [], ls="none")[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    levels = sorted(frame["concurrency"].unique())
    ax.set_xticks(levels, [f"{level:,}" for level in levels])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.yaxis.set_major_formatter(_CountLogFormatter())
    ax.yaxis.set_minor_formatter(_CountLogFormatter(minor_thresholds=(2, 0.5)))
    ax.set_xlabel("concurrent coroutines (redis-benchmark: connections; log scale)")
    ax.set_ylabel("cache hits per second (reads/s, log scale)")
    rounds = frame["round"].nunique()
    ax.set_title(title or f"Hit throughput on warm keys (median of {rounds} rounds, bars min-max)")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    return ax
