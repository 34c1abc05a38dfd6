"""Read a workload through several strategies and record every request.

Used to compare "no cache", cache-aside and read-through on the same sequence of keys: each
strategy is an async function ``read(key)``; the backend's call counter tells which requests
reached the database.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

import matplotlib.pyplot as plt
import pandas as pd

from ..testing import SlowBackend
from .plots import _palette
from .traffic import quiet_gc

__all__ = ["READ_COLUMNS", "measure_reads", "plot_reads"]

READ_COLUMNS = ["strategy", "request", "key", "latency_ms", "backend_call"]


async def measure_reads(
    workload: Iterable[str],
    strategies: Mapping[str, Callable[[str], Awaitable[object]]],
    backend: SlowBackend,
) -> pd.DataFrame:
    """Run the whole ``workload`` through each strategy in turn, one request at a time.

    Returns one row per request (``READ_COLUMNS``): which strategy, its position in the workload,
    the key, its latency in ms, and whether it called ``backend``.
    """
    keys = list(workload)
    rows = []
    with quiet_gc():
        for name, read in strategies.items():
            for i, key in enumerate(keys):
                calls, start = backend.calls, time.perf_counter()
                await read(key)
                latency = (time.perf_counter() - start) * 1000
                rows.append((name, i, key, latency, backend.calls > calls))
    return pd.DataFrame(rows, columns=READ_COLUMNS)


@_palette
def plot_reads(reads: pd.DataFrame):
    """Left: each request's latency (log scale). Right: the hit ratio so far, per strategy."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    styles = ["-", "--", ":", "-."]
    for i, (strategy, rows) in enumerate(reads.groupby("strategy", sort=False)):
        left.plot(rows["request"], rows["latency_ms"], ".", label=strategy)
        hit_ratio_so_far = 1 - rows["backend_call"].expanding().mean()
        right.plot(rows["request"], hit_ratio_so_far, styles[i % len(styles)], label=strategy)
    n = reads["request"].nunique()
    left.set(yscale="log", xlabel="request number", ylabel="latency (ms, log scale)")
    left.set_title(f"Latency of each of {n} reads")
    right.set(xlabel="request number", ylabel="hits / requests so far", ylim=(-0.02, 1.02))
    right.set_title("Hit ratio as the cache warms up")
    left.legend()
    right.legend(loc="lower right")
    return fig
