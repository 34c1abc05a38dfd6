"""After each fault scenario nothing is left behind: no task, process, connection or key.

Each scenario (a lock holder killed or paused, subscribers' connections cut) runs on a private
redis-server inside :func:`helpers.no_leaks`, which snapshots the running asyncio tasks, this
process's children and the server's connections before, and afterwards fails on any that are
new, and on any key left on the server. The experiments end with ``cache.clear()``, which removes
the fence counters too, so the expected key count is zero (a fence left behind would expire after
``fencing.FENCE_TTL_MS``, a day; that would still be a leak here).

The same is checked when the run is *cancelled* mid-fault (a notebook's interrupt, a timeout):
the stopped or waiting holder process must not outlive the run, and the run still clears its
keys (a Streams log, which has no TTL, would otherwise stay forever).
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from helpers import delete_prefixed, no_leaks, process_state

import cachelab
from cachelab import connection
from cachelab.experiments import run_crashed_holder, run_invalidation, run_paused_holder

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def server_url():
    """A private redis-server: every connection and key on it belongs to this module's tests."""
    binary = connection.embedded_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = connection._EmbeddedServer(binary)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
async def control(server_url):
    """The test's own client, connected before the leak check's snapshot."""
    client = await cachelab.connect(server_url, quiet=True)
    await client.ping()
    try:
        yield client
    finally:
        await delete_prefixed(client, "")  # the server is private: what a cancelled run left
        await client.aclose()


@contextlib.asynccontextmanager
async def watched(control, **options):
    """:func:`no_leaks` around a fresh client for the experiment (the caller's, closed by the
    caller): every other connection the run opens must be gone at the end."""
    async with no_leaks(control, **options) as watch:
        caller = connection.clone_client(control, client_name="test-caller")
        try:
            yield watch, caller
        finally:
            await caller.aclose()


# --- the scenarios, run to the end ------------------------------------------------------------


async def test_a_killed_lock_holder_leaves_nothing_behind(control):
    async with watched(control) as (watch, caller):
        result = await run_crashed_holder(caller, lock_ttl=0.6, waiters=6, instances=2)
    assert result.summary["loads"] == result.summary["loads_after_crash"] == 1
    assert len(watch.children) == 1  # the holder process existed, and is gone
    assert watch.named("cachelab-fault-")  # so did the instances' named connections
    assert watch.named("cachelab-subscriber-")  # and the waiters' shared subscriber


@pytest.mark.parametrize(("fence", "final"), [(True, "new holder"), (False, "paused holder")])
async def test_a_paused_lock_holder_leaves_nothing_behind(control, fence, final):
    async with watched(control) as (watch, caller):
        result = await run_paused_holder(caller, fence=fence, lock_ttl=0.6)
    assert result.summary["final_writer"] == final
    assert result.summary["holder_store_refused"] is fence
    assert len(watch.children) == 1
    assert watch.named("cachelab-fault-")  # the holder process's connection


@pytest.mark.parametrize(
    ("mode", "prefix"),
    [
        ("pubsub", "cachelab-subscriber-"),
        ("pubsub-noflush", "cachelab-subscriber-"),
        ("streams", "cachelab-stream-reader-"),
        ("tracking", "cachelab-tracking-"),
    ],
)
async def test_killed_subscribers_leave_nothing_behind(control, mode, prefix):
    async with watched(control) as (watch, caller):
        result = await run_invalidation(
            instances=2, readers_rate=100, writes_rate=20, duration=1.5, mode=mode,
            kill_at=0.5, outage_s=0.3, redis=caller, seed=3,
        )  # fmt: skip
    s = result.summary
    assert s["connections_killed"] >= 2 and s["reconnects"] >= 2
    assert s["reconnected_s"] is not None
    assert len(watch.named(prefix)) >= 2  # each instance's invalidator connection, now gone
    assert watch.named("cachelab-coherence-")  # the instances' own pools, now closed


# --- the same scenarios, cancelled mid-fault --------------------------------------------------


async def cancel_when(coro, ready, *, after_s: float | None = None) -> None:
    """Run ``coro`` and cancel it once ``ready()`` (polled every 10 ms) is true, or after
    ``after_s`` seconds."""
    task = asyncio.ensure_future(coro)
    deadline = None if after_s is None else asyncio.get_running_loop().time() + after_s
    while not task.done() and not ready():
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            break
        await asyncio.sleep(0.01)
    assert not task.done(), "the run ended before the fault it should be cancelled in"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_cancelled_while_the_holder_is_stopped_kills_it(control):
    async with watched(control) as (watch, caller):

        def holder_stopped() -> bool:
            return any(process_state(pid) == "T" for pid in watch.children)

        await cancel_when(run_paused_holder(caller, lock_ttl=2.0), holder_stopped)
    assert len(watch.children) == 1


async def test_cancelled_while_waiters_wait_for_the_holder(control):
    async with watched(control) as (watch, caller):
        await cancel_when(
            run_crashed_holder(caller, lock_ttl=5.0, waiters=4),
            lambda: len(watch.named("cachelab-subscriber-")) > 0,  # the waiters are waiting
        )
    assert len(watch.children) == 1


@pytest.mark.parametrize("mode", ["pubsub", "streams", "tracking"])
async def test_cancelled_during_the_outage(control, mode):
    async with watched(control) as (watch, caller):
        run = run_invalidation(
            instances=2, readers_rate=100, writes_rate=20, duration=3.0, mode=mode,
            kill_at=0.5, outage_s=2.0, redis=caller, seed=4,
        )  # fmt: skip
        task = asyncio.ensure_future(run)
        # the instances' pools exist just before the traffic starts; the cut runs 0.5 s to 2.5 s
        while not watch.named("cachelab-coherence-"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await cancel_when(task, lambda: False, after_s=1.0)
    assert watch.named("cachelab-coherence-")
