"""Steady traffic for experiments: Poisson arrivals, and backend load over time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections.abc import Awaitable, Callable, Iterator

import numpy as np
import pandas as pd

from ..tasks import cancel_all

__all__ = ["backend_rate", "drive_poisson", "quiet_gc"]


_quiet = {"depth": 0, "was_enabled": True}


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect garbage now, and not during the measured window (as ``timeit`` does).

    In a notebook kernel with pandas and matplotlib loaded, a full collection takes about 50 ms
    on a small machine. Landing inside one policy's run and not another's, it once made
    single-flight look twice as slow as a Redis lock (notebook 07); the experiments measure the
    cache, so the collector waits until the window is over. Windows may nest or overlap (two
    drivers in one run): the collector comes back when the last one ends.
    """
    if _quiet["depth"] == 0:
        gc.collect()
        _quiet["was_enabled"] = gc.isenabled()
        gc.disable()
    _quiet["depth"] += 1
    try:
        yield
    finally:
        _quiet["depth"] -= 1
        if _quiet["depth"] == 0 and _quiet["was_enabled"]:
            gc.enable()


async def drive_poisson(
    rate: float,
    duration: float,
    rng: random.Random,
    request: Callable[[float], Awaitable[None]],
    *,
    start: float | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> None:
    """Call ``request(t)`` at Poisson arrival times ``t`` (s from ``start``) for ``duration`` s.

    Arrivals are independent of how long requests take (an open system, like real users): each
    request runs in its own task, and this returns once all of them have finished.
    ``on_progress`` gets the elapsed fraction about ten times a second.
    """
    start = time.perf_counter() if start is None else start
    with quiet_gc():
        await _drive(rate, duration, rng, request, start, on_progress)
    if on_progress is not None:
        on_progress(1.0)


async def _drive(rate, duration, rng, request, start, on_progress) -> None:
    tasks: set[asyncio.Task] = set()
    arrival = reported = 0.0
    try:
        while True:
            arrival += rng.expovariate(rate)
            if arrival >= duration:
                break
            await asyncio.sleep(max(0.0, start + arrival - time.perf_counter()))
            task = asyncio.create_task(request(arrival))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if on_progress is not None and arrival - reported >= 0.1:
                reported = arrival
                on_progress(arrival / duration)
        if tasks:
            await asyncio.gather(*tasks)
    finally:  # cancelled, or a request failed: no request may outlive the run
        await cancel_all(list(tasks))


def backend_rate(calls: pd.DataFrame, duration: float, bucket_ms: float = 100.0) -> pd.DataFrame:
    """Backend calls per second in ``bucket_ms`` buckets: columns ``t_s`` and ``calls_per_s``."""
    edges = np.arange(0.0, duration * 1000 + bucket_ms, bucket_ms)
    counts, _ = np.histogram(calls["start_ms"], bins=edges)
    return pd.DataFrame({"t_s": edges[:-1] / 1000, "calls_per_s": counts * 1000 / bucket_ms})
