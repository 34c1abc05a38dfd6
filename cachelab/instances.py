"""Application instances for experiments: simulated in this event loop, or real OS processes.

(This module sits outside :mod:`cachelab.experiments` so that a worker process imports only the
cache, not pandas' and matplotlib's plotting stack: on a small machine that halves start-up.)

An *instance* is what a service replica would be: its own Cache (so its own herd-policy state),
its own connection pool and a share of the clients. :func:`prepare_instance` sets one up and parks
its requests at a :class:`~cachelab.testing.Gate`. :func:`run_in_processes` runs each instance in
its own process (a fresh interpreter, so it works from Jupyter and from scripts alike): every worker
prepares, reports ready, and all open their gates at one shared instant on the machine's monotonic
clock, so the herd really arrives together, as it would across separate servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .cache import Cache
from .cluster import RedisClient
from .connection import ClientSpec, portable_spec
from .errors import ExperimentError
from .herd import herd_policy
from .metrics import Outcome
from .testing import Gate, SlowBackend

__all__ = [
    "StampedePlan",
    "expect",
    "prepare_instance",
    "run_in_processes",
    "start_worker",
    "stop",
]

KEY = "hot"
START_MARGIN_S = 0.1
"""How far ahead the shared start instant is set, so every worker is waiting when it comes."""
WORKER_TIMEOUT_S = 180.0
MESSAGE_LIMIT = 256 * 1024 * 1024
"""A worker's result is one JSON line with a row per request: allow large ones."""

_Pipe = TypeVar("_Pipe", asyncio.StreamReader, asyncio.StreamWriter)


def _pipe(stream: _Pipe | None) -> _Pipe:
    """A worker's stdin, stdout or stderr: :func:`_spawn_worker` opens all three as pipes."""
    if stream is None:
        raise ExperimentError("a worker process was started without its pipes")
    return stream


@dataclass(frozen=True)
class StampedePlan:
    """Everything an instance needs to take part in one stampede run (picklable)."""

    namespace: str
    policy: str
    loader_ms: float
    jitter_ms: float
    failures: int
    ttl: float
    connections: int
    seed: int | None
    policy_options: dict = field(default_factory=dict)

    def backend(self) -> SlowBackend:
        backend = SlowBackend(self.loader_ms, self.jitter_ms, seed=self.seed)
        backend.fail_next = self.failures
        return backend


async def prepare_instance(
    index: int,
    client: RedisClient,
    plan: StampedePlan,
    client_ids: list[int],
    backend: SlowBackend,
    gate: Gate,
) -> asyncio.Future[list[dict[str, Any]]]:
    """Warm the pool, park one task per client at ``gate``; await the result for their rows.

    Rows hold absolute ``start`` / ``end`` times (``time.perf_counter()``) and the outcome.
    """
    await asyncio.gather(*(client.ping() for _ in range(plan.connections)))
    policy = herd_policy(plan.policy, **plan.policy_options)
    cache = Cache(client, namespace=plan.namespace, ttl=plan.ttl, policy=policy)

    async def loader():
        return await backend.fetch(KEY)

    async def request(client_id: int) -> dict:
        await gate.wait()
        start = time.perf_counter()
        try:
            outcome = (await cache.lookup(KEY, loader)).outcome
        except Exception:
            outcome = Outcome.ERROR
        end = time.perf_counter()
        return {"instance": index, "client": client_id, "start": start, "end": end,
                "outcome": str(outcome)}  # fmt: skip

    return asyncio.gather(*(request(c) for c in client_ids))


async def run_in_processes(
    base: RedisClient, plan: StampedePlan, assignments: list[list[int]]
) -> tuple[list[dict], list[dict]]:
    """Run each instance in its own OS process; return request rows and backend calls.

    Workers are ``python -m cachelab.instances`` children talking JSON lines over
    their stdin/stdout (the connection details, password included, travel over the pipe, never
    on a command line). Times are in ms from the shared start instant.
    """
    spec = portable_spec(base)
    workers = [await _spawn_worker() for _ in assignments]
    try:
        for i, (worker, ids) in enumerate(zip(workers, assignments, strict=True)):
            job = {"index": i, "spec": spec.to_json(), "plan": asdict(plan), "clients": ids}
            _pipe(worker.stdin).write((json.dumps(job) + "\n").encode())
        async with asyncio.timeout(WORKER_TIMEOUT_S):
            await asyncio.gather(*(expect(w, "ready") for w in workers))
            start_at = time.perf_counter() + START_MARGIN_S
            for worker in workers:
                _pipe(worker.stdin).write(f"{json.dumps({'start_at': start_at})}\n".encode())
            finished = await asyncio.gather(*(expect(w, "done") for w in workers))
    except TimeoutError:
        raise ExperimentError(
            f"worker processes did not finish within {WORKER_TIMEOUT_S:g} s"
        ) from None
    finally:
        await asyncio.gather(*(stop(w) for w in workers))
    rows = [row for payload in finished for row in payload["rows"]]
    calls = [call for payload in finished for call in payload["calls"]]
    return rows, calls


async def _spawn_worker() -> asyncio.subprocess.Process:
    pipe = asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cachelab.instances",
        stdin=pipe,
        stdout=pipe,
        stderr=pipe,
        limit=MESSAGE_LIMIT,
    )


async def expect(worker: asyncio.subprocess.Process, kind: str) -> dict:
    """The worker's next message, which must be ``kind``; its stderr if it failed instead."""
    line = await _pipe(worker.stdout).readline()
    message = json.loads(line) if line.strip() else {"kind": "exit"}
    if message["kind"] == kind:
        return message
    if message["kind"] == "error":
        raise ExperimentError(f"a worker process failed:\n{message['traceback']}")
    stderr = (await _pipe(worker.stderr).read()).decode(errors="replace").strip()
    raise ExperimentError(
        f"a worker process exited before sending {kind!r} (exit code {await worker.wait()}):\n"
        f"{stderr[-2000:]}"
    )


async def stop(worker: asyncio.subprocess.Process) -> None:
    """Close the worker's stdin and wait for it to exit (kill it after 10 s)."""
    with contextlib.suppress(ProcessLookupError, OSError):
        _pipe(worker.stdin).close()
    try:
        async with asyncio.timeout(10):
            await worker.wait()
    except TimeoutError:
        worker.kill()
        await worker.wait()


async def start_worker(job: dict) -> asyncio.subprocess.Process:
    """Start a worker process and hand it ``job`` (see :func:`_worker_session` for the kinds)."""
    worker = await _spawn_worker()
    _pipe(worker.stdin).write((json.dumps(job) + "\n").encode())
    return worker


async def _worker_session() -> None:
    """A worker: read one job line and run it.

    ``{"mode": "stampede", ...}`` (the default): prepare an instance, say ready, wait for the
    start instant, run, report. ``{"mode": "holder", ...}``: become the lock holder of a key
    under the distributed policy, say "loading" once the loader runs, and report "done" with the
    cache's counters; the experiments in :mod:`cachelab.experiments.faults` kill or pause it.
    """
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())
    if job.get("mode") == "holder":
        await _hold(job)
        return
    plan = StampedePlan(**job["plan"])
    client = ClientSpec.from_json(job["spec"]).client(max_connections=plan.connections)
    backend = plan.backend()
    gate = Gate()
    run = None
    try:
        run = await prepare_instance(job["index"], client, plan, job["clients"], backend, gate)
        await gate.arrivals(len(job["clients"]))
        _send({"kind": "ready"})
        origin = json.loads(await reader.readline())["start_at"]
        await asyncio.sleep(max(0.0, origin - time.perf_counter()))
        gate.open()
        rows = await run
        for row in rows:
            row["start_ms"] = (row.pop("start") - origin) * 1000
            row["end_ms"] = (row.pop("end") - origin) * 1000
        calls = backend.call_records(origin=origin)
        _send({"kind": "done", "rows": rows, "calls": calls})
    finally:
        if run is not None:
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run
        await client.aclose()


async def _hold(job: dict) -> None:
    client = ClientSpec.from_json(job["spec"]).client(max_connections=4)
    policy = herd_policy("distributed", lock_ttl=job["lock_ttl"], fence=job["fence"])
    cache = Cache(client, namespace=job["namespace"], ttl=60, policy=policy)

    async def loader():
        _send({"kind": "loading"})
        await asyncio.sleep(job["loader_s"])
        return job["value"]

    try:
        await cache.get_or_set(job["key"], loader)
        _send({"kind": "done", "stats": cache.stats.as_dict()})
    finally:
        await client.aclose()


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        asyncio.run(_worker_session())
    except BaseException:
        _send({"kind": "error", "traceback": traceback.format_exc()})
        sys.exit(1)
