"""What a Redis lock does when its holder crashes or stops: the two failure stories, live.

Both experiments start a real lock holder as a separate OS process (a cache under the
``distributed`` policy, loading a key) and then do to it what production does to processes:

- :func:`run_crashed_holder` kills it with SIGKILL mid-load. Its release never comes; the waiters
  notice when the lock's TTL runs out, and exactly one of them loads.
- :func:`run_paused_holder` stops it with SIGSTOP (a long GC pause, a frozen VM) for longer than
  the lock's TTL. Another caller takes the lock over and stores a newer value; then the holder
  wakes up, finishes its load and tries to store its now-outdated value. With the fence the store
  is refused; without it (``fence=False``, for teaching only) the stale value overwrites the new
  one. This is Kleppmann's argument in "How to do distributed locking" (2016), run for real.

Each returns an event timeline (one row per event, times in ms from the start) and a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd
from redis.exceptions import RedisError

from ..cache import Cache
from ..cluster import RedisClient
from ..connection import clone_client, connect, portable_spec
from ..errors import ConfigurationError
from ..herd import Distributed
from ..instances import expect, start_worker, stop
from ..metrics import Outcome
from ..tasks import cancel_all
from ..testing import SlowBackend

__all__ = ["FaultResult", "run_crashed_holder", "run_paused_holder"]

EVENT_COLUMNS = ["t_ms", "actor", "event"]


@dataclass
class FaultResult:
    """``events``: what happened when (``EVENT_COLUMNS``); ``requests``: the waiters' requests
    (crashed holder only); ``summary``: the facts the story turns on."""

    events: pd.DataFrame
    summary: dict = field(default_factory=dict)
    requests: pd.DataFrame | None = None


class _Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.rows: list[dict] = []

    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000

    def log(self, actor: str, event: str) -> float:
        now = self.ms()
        self.rows.append({"t_ms": now, "actor": actor, "event": event})
        return now

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=EVENT_COLUMNS)


def _require_signals() -> None:
    if sys.platform == "win32":
        raise ConfigurationError(
            "these experiments stop and kill a process with SIGSTOP/SIGKILL, which Windows does "
            "not have; run them on Linux or macOS (or in WSL)"
        )


def _run_id() -> tuple[str, str]:
    """A fresh namespace for one run, and the prefix its connections are named with."""
    run = uuid.uuid4().hex[:12]
    return f"cachelab:fault:{run}", f"cachelab-fault-{run}"


async def _holder(base, namespace, key, *, name, lock_ttl, loader_s, fence, value):
    spec = portable_spec(base).to_json()
    spec["kwargs"]["client_name"] = f"{name}-holder"  # findable in CLIENT LIST
    worker = await start_worker({
        "mode": "holder", "spec": spec, "namespace": namespace,
        "key": key, "lock_ttl": lock_ttl, "loader_s": loader_s, "fence": fence, "value": value,
    })  # fmt: skip
    try:
        await expect(worker, "loading")  # it holds the lock and its loader is running
    except BaseException:
        await _end(worker)
        raise
    return worker


async def _end(worker: asyncio.subprocess.Process | None) -> None:
    """Kill ``worker`` (running or stopped) and reap it, unless it already exited: a failed or
    cancelled run must not leave a holder behind, let alone a stopped one that keeps its lock."""
    if worker is None or worker.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        worker.kill()
    await stop(worker)


async def run_crashed_holder(
    redis: RedisClient | None = None,
    *,
    lock_ttl: float = 1.0,
    waiters: int = 20,
    instances: int = 2,
    loader_ms: float = 50.0,
) -> FaultResult:
    """Kill the lock holder mid-load; measure how long ``waiters`` wait and how many load."""
    _require_signals()
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    (namespace, name), key = _run_id(), "report"
    clock = _Clock()
    clients = [clone_client(base, max_connections=8, client_name=f"{name}-instance-{i}")
               for i in range(instances)]  # fmt: skip
    caches = [Cache(c, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=lock_ttl))
              for c in clients]  # fmt: skip
    backend = SlowBackend(loader_ms)
    holder, tasks = None, []
    try:
        holder = await _holder(base, namespace, key, name=name, lock_ttl=lock_ttl, loader_s=3600,
                               fence=True, value={"from": "holder"})  # fmt: skip
        clock.log("holder", "acquired the lock, loading")

        async def wait(i: int) -> dict:
            began = clock.ms()
            lookup = await caches[i % instances].lookup(key, lambda: backend.fetch(key))
            return {"waiter": i, "start_ms": began, "end_ms": clock.ms(),
                    "outcome": str(lookup.outcome)}  # fmt: skip

        tasks = [asyncio.create_task(wait(i)) for i in range(waiters)]
        await asyncio.sleep(0.05)  # the waiters are now subscribed and waiting
        holder.send_signal(signal.SIGKILL)
        killed = clock.log("holder", "killed (SIGKILL): its release will never come")
        rows = await asyncio.gather(*tasks)
        clock.log("waiters", f"{waiters} waiters answered")
        await stop(holder)
    finally:
        await cancel_all(tasks)  # all done unless the run failed or was cancelled
        await _end(holder)
        with contextlib.suppress(RedisError, OSError):  # a failed run still removes its keys
            await caches[0].clear()
        await asyncio.gather(*(c.aclose() for c in clients))
        if owned:
            await base.aclose()
    requests = pd.DataFrame(rows)
    requests["waited_after_kill_ms"] = requests["end_ms"] - killed
    summary = {
        "lock_ttl_s": lock_ttl,
        "waiters": waiters,
        "loads_after_crash": backend.calls,
        "loads": int((requests["outcome"] == Outcome.LOAD).sum()),
        "median_wait_after_kill_ms": float(requests["waited_after_kill_ms"].median()),
        "max_wait_after_kill_ms": float(requests["waited_after_kill_ms"].max()),
    }
    return FaultResult(clock.frame(), summary, requests)


async def run_paused_holder(
    redis: RedisClient | None = None,
    *,
    fence: bool = True,
    lock_ttl: float = 1.0,
    loader_s: float = 0.3,
    pause_s: float | None = None,
) -> FaultResult:
    """Pause the lock holder past its TTL while another caller takes over (Kleppmann's scenario).

    Returns which value the cache holds at the end (``final_writer``) and whether the paused
    holder's late store was refused (``holder_store_refused``).
    """
    _require_signals()
    pause_s = lock_ttl * 1.5 if pause_s is None else pause_s
    if pause_s <= lock_ttl:
        raise ConfigurationError(
            f"pause_s ({pause_s:g}) must exceed lock_ttl ({lock_ttl:g}): the point is that the "
            "lock expires while its holder is frozen"
        )
    owned = redis is None
    base = await connect(quiet=True) if redis is None else redis
    (namespace, name), key = _run_id(), "balance"
    clock = _Clock()
    policy = Distributed(lock_ttl=lock_ttl, fence=fence)
    cache = Cache(base, namespace=namespace, ttl=60, policy=policy)
    old = {"writer": "paused holder", "computed": "before the pause"}
    new = {"writer": "new holder", "computed": "during the pause"}
    holder = None
    try:
        holder = await _holder(base, namespace, key, name=name, lock_ttl=lock_ttl,
                               loader_s=loader_s, fence=fence, value=old)  # fmt: skip
        clock.log("holder A", "acquired the lock (fence n), loading")
        holder.send_signal(signal.SIGSTOP)
        clock.log("holder A", "paused (SIGSTOP)")
        await asyncio.sleep(lock_ttl + 0.1)
        clock.log("lock", "expired: holder A could not extend it")

        async def load_new():
            clock.log("holder B", "acquired the expired lock (fence n+1), loading")
            return new

        await cache.get_or_set(key, load_new)
        clock.log("holder B", "stored its value and released")
        await asyncio.sleep(max(0.0, pause_s - lock_ttl - 0.1))
        holder.send_signal(signal.SIGCONT)
        clock.log("holder A", "resumed (SIGCONT), finishes its load")
        done = await expect(holder, "done")
        refused = done["stats"]["rejected"] == 1
        verdict = "refused by the fence" if refused else "landed over B's newer value"
        clock.log("holder A", f"tried to store its old value: {verdict}")
        await stop(holder)
        final = await cache.get(key)
    finally:
        await _end(holder)
        with contextlib.suppress(RedisError, OSError):  # a failed run still removes its keys
            await cache.clear()
        if owned:
            await base.aclose()
    summary = {
        "fence": fence,
        "lock_ttl_s": lock_ttl,
        "pause_s": pause_s,
        "holder_store_refused": refused,
        "final_writer": final["writer"] if isinstance(final, dict) else None,
    }
    return FaultResult(clock.frame(), summary)
