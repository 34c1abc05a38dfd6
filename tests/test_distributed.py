"""The "distributed" herd policy on the real server: one load across instances and OS processes,
errors that reach every waiter, wait timeouts, and fenced fills (crashed and paused holders)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import REAL_URL

import cachelab
from cachelab import Cache, Outcome, RedisLock
from cachelab.errors import LockTimeoutError, RemoteLoadError
from cachelab.herd import Distributed
from cachelab.subscriber import Subscriber
from cachelab.testing import BackendError, Gate

pytestmark = [pytest.mark.redis, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[1]
KEY = "report"


class CountingLoader:
    """An async loader that counts its calls; it can wait for ``release`` and then fail."""

    def __init__(self, value, *, delay: float = 0.0, error: Exception | None = None):
        self.value = value
        self.delay = delay
        self.error = error
        self.calls = 0
        self.started = asyncio.Event()
        self.release: asyncio.Event | None = None

    def gated(self) -> CountingLoader:
        self.release = asyncio.Event()
        return self

    async def __call__(self):
        self.calls += 1
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
async def clients(real_redis):
    """``clients(n)``: n separate clients (own pools), like n application instances."""
    made = []

    def make(n: int):
        more = [cachelab.clone_client(real_redis) for _ in range(n - 1)]
        made.extend(more)
        return [real_redis, *more]

    yield make
    for client in made:
        await client.aclose()


def caches_on(clients, namespace, **policy) -> list[Cache]:
    return [Cache(c, namespace=namespace, ttl=60, policy=Distributed(**policy)) for c in clients]


async def released_together(calls):
    """Start every coroutine factory in ``calls`` at the same moment; results in order."""
    gate = Gate()

    async def one(call):
        await gate.wait()
        return await call()

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    await gate.arrivals(len(calls))
    gate.open()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# --- many instances in one process ------------------------------------------------------------


async def test_cold_key_is_loaded_once_across_instances(clients, namespace):
    caches = caches_on(clients(4), namespace)  # lock_ttl 10 s: waiters must be woken, not time out
    loader = CountingLoader({"rows": 42}).gated()
    started = time.monotonic()
    calls = [lambda c=c: c.lookup(KEY, loader) for c in caches for _ in range(50)]
    stampede = asyncio.create_task(released_together(calls))
    await asyncio.wait_for(loader.started.wait(), 5)
    channel = caches[0].keyspace.helper(KEY, "filled")
    subs = [Subscriber.of(c.redis) for c in caches]

    def listening() -> list[int]:
        return [len(s._inboxes.get(channel.encode(), ())) for s in subs]

    await until(lambda: sorted(listening())[1:] >= [1, 1, 1])
    await asyncio.sleep(0.1)
    # one coroutine per waiting instance and per fence it read listens on Redis (a caller that
    # read the fence after the holder's grant starts a flight of its own); the others share it.
    # The holder's instance does not subscribe at all: its later callers join its own load.
    holder = [i for i, c in enumerate(caches) if c.stats.loads == 1]
    assert len(holder) == 1 and listening()[holder[0]] == 0
    assert all(1 <= n <= 2 for i, n in enumerate(listening()) if i != holder[0]), listening()
    loader.release.set()
    results = await asyncio.wait_for(stampede, 10)
    assert time.monotonic() - started < 5  # far below the 10 s lock TTL: woken by the message

    assert loader.calls == 1
    assert all(r.value == {"rows": 42} for r in results)
    assert Counter(r.outcome for r in results) == {Outcome.LOAD: 1, Outcome.SHARED: 199}
    assert sum(c.stats.loads for c in caches) == 1
    assert sum(c.stats.misses for c in caches) == 200
    for s in subs:
        await s.settle()
    assert all(s.channels == 0 and s._reader is None for s in subs)
    assert await caches[3].get(KEY) == {"rows": 42}


async def test_loader_error_reaches_every_waiter(clients, namespace):
    caches = caches_on(clients(4), namespace)
    failure = BackendError("database on fire (42)")
    loader = CountingLoader(None, error=failure).gated()
    calls = [lambda c=c: c.lookup(KEY, loader) for c in caches for _ in range(10)]
    run = asyncio.create_task(released_together(calls))
    await asyncio.wait_for(loader.started.wait(), 5)
    channel = caches[0].keyspace.helper(KEY, "filled").encode()
    subs = [Subscriber.of(c.redis) for c in caches]
    await until(lambda: sum(channel in s._inboxes for s in subs) == 3)  # all but the holder
    await asyncio.sleep(0.1)
    loader.release.set()
    results = await asyncio.wait_for(run, 10)

    assert loader.calls == 1
    (holder,) = [i for i, c in enumerate(caches) if c.stats.loads == 1]
    for i, result in enumerate(results):
        if i // 10 == holder:
            assert result is failure  # in the loading instance: the loader's own exception
        else:
            assert isinstance(result, RemoteLoadError)
            assert "database on fire" not in str(result)  # the text may hold secrets: it stays
            assert "BackendError" in str(result)  # the type travels
            assert repr(KEY) in str(result)
    assert sum(c.stats.errors for c in caches) == 40
    # nothing was stored; the next lookup loads again
    assert await caches[0].get(KEY) is None
    retry = CountingLoader("ok")
    assert (await caches[1].lookup(KEY, retry)).outcome is Outcome.LOAD
    assert retry.calls == 1


async def test_waiting_longer_than_wait_timeout_raises(clients, namespace):
    slow_instance, impatient = clients(2)
    holder = Cache(slow_instance, namespace=namespace, ttl=60, policy=Distributed())
    waiter = Cache(impatient, namespace=namespace, ttl=60, policy=Distributed(wait_timeout=0.3))
    slow = CountingLoader("slow").gated()
    holding = asyncio.create_task(holder.get_or_set(KEY, slow))
    await asyncio.wait_for(slow.started.wait(), 5)
    never = CountingLoader("never")
    started = time.monotonic()
    with pytest.raises(LockTimeoutError) as caught:
        await waiter.get_or_set(KEY, never)
    waited = time.monotonic() - started
    assert 0.25 <= waited < 2.0
    assert repr(KEY) in str(caught.value) and "wait_timeout" in str(caught.value)
    assert never.calls == 0
    assert waiter.stats.errors == 1
    slow.release.set()
    assert await asyncio.wait_for(holding, 5) == "slow"
    assert (await waiter.lookup(KEY, never)) == cachelab.Lookup("slow", Outcome.HIT)
    assert Subscriber.of(impatient).channels == 0


async def test_polling_waiters_still_load_once(clients, namespace):
    caches = caches_on(clients(3), namespace, wait="poll")
    loader = CountingLoader("polled", delay=0.3)
    results = await asyncio.wait_for(
        released_together([lambda c=c: c.lookup(KEY, loader) for c in caches for _ in range(20)]),
        10,
    )
    assert loader.calls == 1
    assert Counter(r.outcome for r in results) == {Outcome.LOAD: 1, Outcome.SHARED: 59}
    assert all(r.value == "polled" for r in results)
    assert all(Subscriber.of(c.redis).messages == 0 for c in caches)  # nobody subscribed


# --- fencing ----------------------------------------------------------------------------------


async def test_fill_with_an_outdated_fence_is_refused(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="distributed")
    fence_key = cache.keyspace.helper(KEY, "fence")
    lock = RedisLock(real_redis, cache.keyspace.helper(KEY, "lock"), fence_key=fence_key)
    old = await lock.try_acquire()
    assert old is not None
    await cache.set(KEY, "written")  # a write moves the fence on
    assert int(await real_redis.get(fence_key)) > old

    late = cache.codec.pack(cache.codec.payload("late"), None, 0.0)
    assert not await cache.store.fill(KEY, late, old)  # refused ...
    assert await cache.get(KEY) == "written"  # ... so the write stands
    assert cache.stats.rejected == 1

    current = int(await real_redis.get(fence_key))
    fresh = cache.codec.pack(cache.codec.payload("current"), None, 0.0)
    assert await cache.store.fill(KEY, fresh, current)
    assert await cache.get(KEY) == "current"
    assert cache.stats.rejected == 1
    await lock.release()


@pytest.mark.parametrize("fence", [True, False])
async def test_a_write_during_the_holders_load(clients, namespace, fence):
    """Fenced: the write wins and the holder's fill is refused; unfenced: the fill overwrites."""
    mine, theirs = clients(2)
    holder = Cache(mine, namespace=namespace, ttl=60, policy=Distributed(fence=fence))
    writer = Cache(theirs, namespace=namespace, ttl=60, policy="distributed")
    loader = CountingLoader("loaded").gated()
    task = asyncio.create_task(holder.lookup(KEY, loader))
    await asyncio.wait_for(loader.started.wait(), 5)
    await writer.set(KEY, "written")
    loader.release.set()
    assert await asyncio.wait_for(task, 5) == cachelab.Lookup("loaded", Outcome.LOAD)
    if fence:
        assert await writer.get(KEY) == "written"
        assert holder.stats.rejected == 1
    else:
        assert await writer.get(KEY) == "loaded"
        assert holder.stats.rejected == 0


async def test_a_failed_lock_extension_does_not_fail_the_load(clients, namespace, monkeypatch):
    """A network blip in the holder's keep-alive is retried; the load, store and release go on."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from cachelab.redis_lock import RedisLock

    extend = RedisLock.extend
    calls = 0

    async def flaky_extend(self, ttl=None):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RedisConnectionError("simulated network blip")
        await extend(self, ttl)

    monkeypatch.setattr(RedisLock, "extend", flaky_extend)
    mine, theirs = clients(2)
    holder = Cache(mine, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=0.6))
    waiter = Cache(theirs, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=0.6))
    loader = CountingLoader("v", delay=0.7)  # outlives one lock TTL: needs the later extensions
    first = asyncio.create_task(holder.lookup(KEY, loader))
    await asyncio.wait_for(loader.started.wait(), 5)
    second = asyncio.create_task(waiter.lookup(KEY, loader))
    assert await asyncio.wait_for(first, 5) == cachelab.Lookup("v", Outcome.LOAD)
    assert await asyncio.wait_for(second, 5) == cachelab.Lookup("v", Outcome.SHARED)
    assert loader.calls == 1
    assert calls >= 2  # the keep-alive tried again after the failure
    assert holder.stats.rejected == 0
    assert not await mine.exists(holder.keyspace.helper(KEY, "lock"))  # released


async def test_distributed_configuration_errors(real_redis):
    for bad in (0, -1, True, "10"):
        with pytest.raises(cachelab.ConfigurationError, match="lock_ttl"):
            Distributed(lock_ttl=bad)


# --- real OS processes ------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import asyncio, collections, json, os, sys

    import cachelab
    from cachelab.herd import Distributed


    def emit(**fields):
        print(json.dumps(fields), flush=True)


    async def hold(url, namespace, key, lock_ttl, sleep, value, fence):
        redis = await cachelab.connect(url, quiet=True)
        policy = Distributed(lock_ttl=float(lock_ttl), fence=fence == "1")
        cache = cachelab.Cache(redis, namespace=namespace, ttl=60, policy=policy)

        async def loader():
            emit(event="loading", pid=os.getpid())
            await asyncio.sleep(float(sleep))
            return value

        result = await cache.lookup(key, loader)
        emit(event="done", value=result.value, outcome=str(result.outcome),
             stats=cache.stats.as_dict())
        await redis.aclose()


    async def stampede(url, namespace, key, tasks, sleep):
        redis = await cachelab.connect(url, quiet=True)
        cache = cachelab.Cache(redis, namespace=namespace, ttl=60, policy="distributed")
        calls = 0

        async def loader():
            nonlocal calls
            calls += 1
            await asyncio.sleep(float(sleep))
            return {"by": os.getpid()}

        emit(event="ready")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        results = await asyncio.gather(*(cache.lookup(key, loader) for _ in range(int(tasks))))
        emit(event="done", loads=calls, values=[r.value for r in results],
             outcomes=dict(collections.Counter(str(r.outcome) for r in results)))
        await redis.aclose()


    mode, *args = sys.argv[1:]
    asyncio.run({"hold": hold, "stampede": stampede}[mode](*args))
    """
)


@pytest.fixture
def script(tmp_path) -> Path:
    path = tmp_path / "instance.py"
    path.write_text(SCRIPT)
    return path


@pytest.fixture
async def spawn(script):
    """``await spawn(mode, *args)``: a Python process running ``script``; killed at the end."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args) -> asyncio.subprocess.Process:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            *map(str, args),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            await proc.wait()


async def line_of(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> dict:
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert raw, f"process {proc.pid} exited (rc {await proc.wait()}) without a line"
    return json.loads(raw)


async def test_a_killed_holder_delays_the_waiter_by_about_the_lock_ttl(
    real_redis, namespace, spawn
):
    ttl = 1.0
    cache = Cache(
        real_redis, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=ttl, wait_timeout=10)
    )
    holder = await spawn("hold", REAL_URL, namespace, KEY, ttl, 60, "A", 1)
    assert (await line_of(holder))["event"] == "loading"

    loader = CountingLoader("B")
    waiting = asyncio.create_task(cache.lookup(KEY, loader))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the live holder keeps its lock (it extends it)

    holder.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    left = await real_redis.pttl(cache.keyspace.helper(KEY, "lock")) / 1000
    await holder.wait()
    result = await asyncio.wait_for(waiting, 10)
    waited = time.monotonic() - killed_at

    assert result == cachelab.Lookup("B", Outcome.LOAD)
    assert loader.calls == 1  # exactly one new load, by the waiter
    assert cache.stats.loads == 1
    assert 0.3 * ttl < left <= ttl  # the lock outlived its holder ...
    assert 0.9 * left - 0.05 <= waited < left + 1.0  # ... and the waiter took over as it expired
    assert 0.3 * ttl <= waited < 3 * ttl
    assert await cache.get(KEY) == "B"


@pytest.mark.parametrize("fence", [True, False])
async def test_a_paused_holders_late_fill(real_redis, namespace, spawn, fence):
    """Kleppmann's scenario: the holder pauses past its lock TTL while another takes over.

    Fenced, its late value is refused; unfenced, it overwrites the newer value.
    """
    ttl = 1.0
    holder = await spawn("hold", REAL_URL, namespace, KEY, ttl, 0.3, "A", int(fence))
    assert (await line_of(holder))["event"] == "loading"
    holder.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    taker = Cache(real_redis, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=ttl))
    left = await real_redis.pttl(taker.keyspace.helper(KEY, "lock")) / 1000
    assert 0 < left <= ttl  # the paused holder still has its lock, for now

    loader = CountingLoader("B")
    result = await asyncio.wait_for(taker.lookup(KEY, loader), 10)
    assert result == cachelab.Lookup("B", Outcome.LOAD)  # it waited out the paused holder's lock
    assert loader.calls == 1
    assert time.monotonic() - stopped_at >= 0.9 * left - 0.05
    assert await taker.get(KEY) == "B"

    # stay paused for longer than a whole lock TTL, then resume the holder
    await asyncio.sleep(max(0.0, ttl + 0.1 - (time.monotonic() - stopped_at)))
    holder.send_signal(signal.SIGCONT)
    done = await line_of(holder)
    assert await asyncio.wait_for(holder.wait(), 10) == 0
    assert done["event"] == "done"
    assert done["value"] == "A" and done["outcome"] == "load"
    assert done["stats"]["loads"] == 1
    if fence:
        assert done["stats"]["rejected"] == 1
        assert await taker.get(KEY) == "B"
    else:
        assert done["stats"]["rejected"] == 0
        assert await taker.get(KEY) == "A"  # the stale late write landed


async def test_four_processes_load_a_cold_key_once(real_redis, namespace, spawn):
    procs = [await spawn("stampede", REAL_URL, namespace, KEY, 50, 0.5) for _ in range(4)]
    for proc in procs:
        assert (await line_of(proc))["event"] == "ready"
    for proc in procs:
        proc.stdin.write(b"go\n")
    await asyncio.gather(*(proc.stdin.drain() for proc in procs))
    reports = [await line_of(proc) for proc in procs]
    assert [await asyncio.wait_for(p.wait(), 10) for p in procs] == [0] * 4

    assert sum(r["loads"] for r in reports) == 1
    assert sorted(r["loads"] for r in reports) == [0, 0, 0, 1]
    outcomes = Counter()
    for r in reports:
        outcomes.update(r["outcomes"])
    assert outcomes == {"load": 1, "shared": 199}
    values = {json.dumps(v) for r in reports for v in r["values"]}
    assert len(values) == 1  # every caller in every process got the one loaded value


async def test_the_keep_alive_is_stopped_even_if_it_swallows_a_cancellation(fake_redis):
    """On Python 3.11 redis-py can swallow a cancellation that lands as a command completes; a
    keep-alive that did so goes on extending its lock. Leaving ``keep_alive()`` must cancel until
    it sticks, not wait for ever on a task that will not end (the lock would never be released).
    """
    extensions = 0

    async def keep_alive_that_swallows_once(_max_hold):
        nonlocal extensions
        with contextlib.suppress(asyncio.CancelledError):  # as redis-py's wait_for can on 3.11
            await asyncio.sleep(3600)
        while True:  # goes on, like a keep-alive whose lock is still ours
            extensions += 1
            await asyncio.sleep(0.01)

    lock = RedisLock(fake_redis, "{swallow}")
    lock._extend_until = keep_alive_that_swallows_once

    async def hold_briefly():
        async with lock.keep_alive():
            await asyncio.sleep(0)  # the keep-alive runs up to its first sleep

    stopping = asyncio.create_task(hold_briefly())
    # waited for, not cancelled on timeout: a second cancellation from outside would end the
    # keep-alive by itself and hide a stop that waits for ever
    await asyncio.wait({stopping}, timeout=30)
    try:
        assert stopping.done() and stopping.exception() is None
        assert extensions > 0  # it did swallow the first cancellation and went on
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "cachelab-lock-keepalive"]
    finally:
        stopping.cancel()
        await asyncio.gather(stopping, return_exceptions=True)
