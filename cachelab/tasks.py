"""Stopping background tasks for good.

On Python 3.11, redis-py sends every command under ``asyncio.wait_for``, which can swallow a
cancellation that lands just as the command completes. A task cancelled once may then run on:
a reader holding its connection, a fault loop polling forever. So cancel until it sticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["cancel_all", "cancel_for_good"]


async def cancel_all(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel ``tasks`` and return once every one has ended; their results are discarded.

    A task still running after a round (0.1 s) is cancelled again. If the caller is cancelled
    meanwhile, the tasks are still stopped first, then the caller's cancellation is raised: a
    cleanup that gave up half-way would leave exactly the task it was meant to end.
    """
    tasks = list(tasks)
    interrupted = False
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=0.1)
        except asyncio.CancelledError:
            interrupted = True
    for task in tasks:  # mark every outcome as retrieved: nobody else will look at them
        if not task.cancelled():
            task.exception()
    if interrupted:
        raise asyncio.CancelledError


def cancel_for_good(task: asyncio.Future, every_s: float = 0.1) -> None:
    """Cancel ``task`` now, and again every ``every_s`` while it still runs, without waiting.

    For a caller that is itself being cancelled and must not block (the last caller of a
    single-flight leaving): timer callbacks, no extra task, end when the task ends.
    """
    if not task.done():
        task.cancel()
        asyncio.get_running_loop().call_later(every_s, cancel_for_good, task, every_s)
