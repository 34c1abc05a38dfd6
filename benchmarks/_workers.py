"""Shared by the benchmarks that run in several processes: how a worker talks to its parent.

The parent starts ``python <script> --worker`` and writes the job (connection details included)
as one JSON line on the worker's stdin, so no password ever appears in a process listing; the
worker answers with JSON lines on stdout, and a crash arrives as ``{"kind": "error"}`` with its
traceback instead of a silent exit.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path

__all__ = ["require_shared_clock", "run_worker", "send", "spawn"]


def send(message: dict) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_worker(main: Callable[[], Coroutine]) -> None:
    """Run the worker's coroutine; report any failure to the parent, then exit 1."""
    try:
        asyncio.run(main())
    except BaseException:
        send({"kind": "error", "traceback": traceback.format_exc()})
        sys.exit(1)


async def spawn(script: Path, job: dict) -> asyncio.subprocess.Process:
    """Start ``script --worker`` and hand it ``job`` over its stdin."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), "--worker",
        stdin=pipe, stdout=pipe, stderr=pipe, limit=64 * 1024 * 1024,
    )  # fmt: skip
    proc.stdin.write((json.dumps(job) + "\n").encode())
    return proc


def require_shared_clock() -> str:
    """The name of ``time.perf_counter()``'s clock, which must be CLOCK_MONOTONIC (else exit):
    the one clock every process on this machine reads, and the benchmarks compare times taken in
    different processes."""
    clock = time.get_clock_info("perf_counter")
    if "CLOCK_MONOTONIC" not in clock.implementation:
        raise SystemExit(
            f"time.perf_counter() is {clock.implementation} here, not CLOCK_MONOTONIC: "
            "times from different processes cannot be compared"
        )
    return clock.implementation
