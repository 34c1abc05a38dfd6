"""Charts for experiment frames: each has a title, axes with units and a legend.

Every function takes a tidy frame from an experiment, draws on ``ax`` (or a new figure) and returns
the Axes, so a notebook can end the cell with ``;`` and a test can inspect what was drawn.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = [
    "OUTCOME_COLORS",
    "plot_backend_calls",
    "plot_latency_cdf",
    "plot_stampede_overview",
    "plot_timeline",
]

OUTCOME_COLORS = {
    "hit": "#2ca02c",
    "load": "#d62728",
    "shared": "#1f77b4",
    "error": "#7f7f7f",
}


def _axes(ax: Axes | None, size=(8, 4.5)) -> Axes:
    if ax is None:
        _fig, ax = plt.subplots(figsize=size, layout="constrained")
    return ax


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
        for i, call in enumerate(backend.itertuples()):
            ax.axvspan(
                call.start_ms,
                call.end_ms,
                color="#ff9896",
                alpha=min(0.25, 3 / len(backend)),
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


def plot_latency_cdf(
    requests: pd.DataFrame, *, by: str = "policy", ax: Axes | None = None, title: str | None = None
) -> Axes:
    """Fraction of requests answered within x ms, one curve per value of ``by``."""
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
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests answered")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.set_title(title or "Latency distribution (CDF)")
    ax.legend(loc="best")  # curves sit left or right depending on the run: avoid covering them
    ax.grid(True, alpha=0.3)
    return ax


def plot_stampede_overview(summaries: pd.DataFrame, requests: pd.DataFrame):
    """The headline figure: backend calls per policy (left) and latency CDFs (right).

    With several client counts, the left panel is :func:`plot_backend_calls`; with one, a bar per
    policy. The right panel shows the latency CDF at the largest client count.
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    if summaries["clients"].nunique() > 1:
        plot_backend_calls(summaries, ax=left)
    else:
        bars = left.bar(summaries["policy"], summaries["backend_calls"], color="#d62728")
        left.bar_label(bars)
        left.set_yscale("log")
        left.set_xlabel("herd policy")
        left.set_ylabel("backend calls (log scale)")
        n, k = summaries["clients"].iloc[0], summaries["instances"].iloc[0]
        left.set_title(f"Backend calls for one cold key: {n} clients, {k} instances")
        left.legend([bars], ["backend calls (loads)"])
    largest = requests[requests["clients"] == requests["clients"].max()]
    plot_latency_cdf(
        largest, ax=right, title=f"Latency of {largest['clients'].iloc[0]} concurrent requests"
    )
    loader = summaries["loader_ms"].iloc[0]
    right.axvline(loader, ls=":", color="grey", label=f"loader time ({loader:g} ms)")
    right.legend(loc="lower right")
    return fig
