"""Races and leaks found by a review of the cache core (issue 9), one regression test each.

Each test was written before the fix and failed on the old core; it drives the public API (and a
real Redis where the behaviour is the server's) with gates and events, never with sleeps that
hope for an interleaving.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest
import redis.asyncio as aioredis
from helpers import REAL_URL, free_port

import cachelab
from cachelab import (
    Cache,
    CircuitBreaker,
    ConfigurationError,
    Distributed,
    Lease,
    LocalSingleFlight,
    NearCache,
    Outcome,
    RefreshPolicy,
    SingleFlight,
    StaleWhileRevalidate,
)
from cachelab.refresh import Verdict

pytestmark = pytest.mark.redis

POLICIES = ["none", "lock_table", "local", "distributed", "lease"]


class Held:
    """A loader that returns ``value`` only once released; counts its calls."""

    def __init__(self, value) -> None:
        self.value = value
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self):
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return self.value


def returning(value):
    async def loader():
        return value

    return loader


async def until(condition, timeout: float = 10.0) -> None:
    """Wait until ``condition()`` holds; fail (rather than hang) if it never does."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polling state that no event announces
            await asyncio.sleep(0.005)


class AlwaysEarly(RefreshPolicy):
    """Every read of a cached value asks for an early refresh (a deterministic XFetch)."""

    name = "always-early"

    def verdict(self, entry, now):
        return Verdict.EARLY


@pytest.fixture
async def redis_client(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True)
    yield client
    with contextlib.suppress(Exception):
        async for key in client.scan_iter(match=namespace.replace("[", "\\[") + "*", count=1000):
            await client.unlink(key)
    await client.aclose()


# --- A. a miss never receives what an early refresh returns --------------------------------


@pytest.mark.parametrize("policy", ["local", "distributed", "lease"])
async def test_a_miss_that_arrives_during_an_early_refresh_gets_a_whole_value(
    redis_client, namespace, policy
):
    cache = Cache(redis_client, namespace=namespace, ttl=60, policy=policy, refresh=AlwaysEarly())
    await cache.set("k", {"old": True})
    refresh = Held({"fresh": True})
    refreshing = asyncio.create_task(cache.lookup("k", refresh))  # EARLY: starts a refresh
    await refresh.started.wait()
    await redis_client.delete(cache.redis_key("k"))  # the value vanishes (evicted, say)
    miss = asyncio.create_task(cache.lookup("k", returning({"loaded": True})))
    refresh.release.set()
    found = await miss
    assert isinstance(found.value, dict), f"a miss got {found.value!r}, not a whole value"
    assert found.value in ({"fresh": True}, {"loaded": True})
    assert (await refreshing).value == {"fresh": True}


# --- B. a cancelled flight that is still winding down is not joined --------------------------


async def test_a_caller_arriving_while_a_cancelled_flight_winds_down_starts_a_new_one():
    flight = SingleFlight()
    winding_down = asyncio.Event()
    finish_winding = asyncio.Event()
    calls = 0

    async def work():
        nonlocal calls
        calls += 1
        if calls == 1:
            try:
                await asyncio.Event().wait()  # runs until cancelled
            except asyncio.CancelledError:
                winding_down.set()
                await finish_winding.wait()  # clean-up that takes a while (e.g. a Redis call)
                raise
        return "second"

    first = asyncio.create_task(flight.do("k", work))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    first.cancel()  # its only caller leaves: nobody wants the result any more
    await winding_down.wait()
    second = asyncio.create_task(flight.do("k", work))  # arrives while the first winds down
    await asyncio.sleep(0)
    finish_winding.set()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert await second == ("second", False), "the new caller was handed a cancelled flight"
    assert calls == 2


# --- C. a fill that read the database before a write never overwrites the write -------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("writer_is", ["same cache", "another process"])
async def test_a_load_that_began_before_a_write_cannot_overwrite_it(
    redis_client, namespace, policy, writer_is
):
    reader = Cache(redis_client, namespace=namespace, ttl=60, policy=policy)
    writer = (
        reader
        if writer_is == "same cache"
        else Cache(redis_client, namespace=namespace, ttl=60, policy=policy)
    )
    old = Held("old")  # what the database said before the write
    loading = asyncio.create_task(reader.get_or_set("k", old))
    await old.started.wait()
    await writer.set("k", "new")
    old.release.set()
    await loading
    assert await reader.get("k") == "new", f"{policy}: the write was lost to an older fill"
    assert await writer.get("k") == "new"


# --- D. tracking with Redis unreachable at first use does not hang --------------------------


async def test_tracking_invalidation_with_redis_unreachable_answers_instead_of_hanging(namespace):
    port = free_port()  # nothing listens there: connections are refused at once
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    cache = Cache(
        client,
        namespace=namespace,
        ttl=60,
        near=NearCache(),
        invalidation="tracking",
        on_redis_error="open",
    )
    try:
        async with asyncio.timeout(10):
            assert await cache.get("k", "default") == "default"
            assert await cache.get_or_set("k", returning("loaded")) == "loaded"
    finally:
        await cache.aclose()
        await client.aclose()


# --- E. a dropped listener connection is noticed, whatever client the user passed ------------


@pytest.mark.parametrize("mode", ["pubsub", "tracking"])
async def test_a_dropped_listener_flushes_the_near_cache_even_on_a_plain_client(
    redis_client, namespace, mode
):
    host, port = REAL_URL.split("//")[1].split(":")
    plain = aioredis.Redis(host=host, port=int(port))  # redis-py's defaults: retries on errors
    near = NearCache(max_age_s=60)
    cache = Cache(plain, namespace=namespace, ttl=60, near=near, invalidation=mode)
    try:
        await cache.set("k", "v1")
        assert await cache.get("k") == "v1"
        assert "k" in near
        assert await kill_listener(redis_client, cache) >= 1
        stats = cache.invalidator.stats
        await until(lambda: stats.reconnects >= 1 and stats.flushes >= 1)  # the drop was noticed
        assert "k" not in near  # and the L1 flushed
    finally:
        await cache.aclose()
        await plain.aclose()


async def test_a_dropped_stream_listener_replays_what_it_missed_on_a_plain_client(
    redis_client, namespace
):
    host, port = REAL_URL.split("//")[1].split(":")
    plain = aioredis.Redis(host=host, port=int(port))
    near = NearCache(max_age_s=60)
    cache = Cache(plain, namespace=namespace, ttl=60, near=near, invalidation="streams")
    writer = Cache(redis_client, namespace=namespace, ttl=60, invalidation="streams")
    try:
        await cache.set("k", "v1")
        assert await cache.get("k") == "v1"
        assert await kill_listener(redis_client, cache) >= 1
        await writer.set("k", "v2")  # while the listener may be away
        await until(lambda: "k" not in near)
        assert await cache.get("k") == "v2"
    finally:
        await cache.aclose()
        await plain.aclose()


async def kill_listener(admin, cache: Cache) -> int:
    """CLIENT KILL the connections the cache's invalidator listens on."""
    names, killed = set(cache.invalidator.connection_names()), 0
    for client in await admin.client_list():
        if client.get("name") in names:
            killed += await admin.client_kill_filter(_id=client["id"])
    return killed


# --- F. a busy pool is not an outage; a probe is one command, not a whole lookup -------------


async def test_a_busy_connection_pool_does_not_open_the_breaker(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True, max_connections=1, pool_timeout=0.05)
    breaker = CircuitBreaker(failures=1, reset_after=60)
    cache = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=breaker)
    taken = await client.connection_pool.get_connection()  # the only connection: pool exhausted
    try:
        for _ in range(3):
            await cache.lookup("k", returning("v"))
        assert breaker.state == "closed", "a healthy Redis behind a busy pool counted as down"
        assert cache.stats.redis_errors == 0
    finally:
        await client.connection_pool.release(taken)
    assert (await cache.lookup("k", returning("v"))).outcome is Outcome.LOAD
    await cache.clear()
    await client.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_half_open_probe_is_one_command_not_a_whole_load(redis_client, namespace):
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    cache = Cache(redis_client, namespace=namespace, ttl=60, breaker=breaker)
    breaker.failure(breaker.allow())  # opened (as by an outage that has now ended)
    clock.now += 1.0  # half-open: the next command is the probe
    slow = Held("slow")
    probing = asyncio.create_task(cache.lookup("a", slow))
    await slow.started.wait()  # the probe (the miss's read) has answered; the load runs
    assert breaker.state == "closed"
    other = await cache.lookup("b", returning("b"))  # not held back by a load it has no part in
    assert other.outcome is Outcome.LOAD
    slow.release.set()
    assert (await probing).outcome is Outcome.LOAD


# --- G. the near cache returns what Redis would, and never outlives the entry ---------------


async def test_the_near_cache_never_serves_an_entry_past_its_ttl(redis_client, namespace):
    clock = FakeClock()
    near = NearCache(max_age_s=60, clock=clock)
    cache = Cache(redis_client, namespace=namespace, ttl=60, near=near)
    await cache.set("k", "v", ttl=0.2)
    assert "k" in near
    clock.now += 0.3  # past the entry's TTL, far below the near cache's max age
    assert "k" not in near


async def test_the_near_cache_hands_out_copies(redis_client, namespace):
    cache = Cache(redis_client, namespace=namespace, ttl=60, near=NearCache())
    first = await cache.get_or_set("k", returning({"n": 1, "tags": ["a"]}))
    first["n"] = 2
    first["tags"].append("b")
    assert await cache.get("k") == {"n": 1, "tags": ["a"]}
    again = await cache.get("k")
    again["n"] = 3
    assert await cache.get("k") == {"n": 1, "tags": ["a"]}


async def test_the_near_cache_reads_back_what_redis_would(redis_client, namespace):
    with_near = Cache(redis_client, namespace=namespace, ttl=60, near=NearCache())
    without = Cache(redis_client, namespace=namespace, ttl=60)
    await with_near.set("t", (1, 2))
    assert await with_near.get("t") == await without.get("t") == [1, 2]


# --- H. stale-while-revalidate with jitter or a short per-call TTL ---------------------------


async def test_swr_with_ttl_jitter_stores_every_value(redis_client, namespace):
    cache = Cache(
        redis_client,
        namespace=namespace,
        ttl=10,
        ttl_jitter=0.1,
        refresh=StaleWhileRevalidate(soft_ttl_s=9.5),
    )
    for i in range(60):
        await cache.set(f"k{i}", i)
        entry = await cache.entry(f"k{i}")
        assert entry.soft_expires_at < entry.expires_at


async def test_a_per_call_ttl_below_the_soft_ttl_is_refused_before_the_loader_runs(
    redis_client, namespace
):
    cache = Cache(
        redis_client, namespace=namespace, ttl=10, refresh=StaleWhileRevalidate(soft_ttl_s=8)
    )
    loader = Held("v")
    loader.release.set()
    with pytest.raises(ConfigurationError, match="soft"):
        await cache.get_or_set("k", loader, ttl=5)
    assert loader.calls == 0


# --- I. one policy object shared by two caches keeps them apart -----------------------------


@pytest.mark.parametrize("policy", [LocalSingleFlight, Distributed, Lease])
async def test_one_policy_object_shared_by_two_caches_keeps_their_data_apart(
    redis_client, namespace, policy
):
    shared = policy()
    users = Cache(redis_client, namespace=f"{namespace}:users", ttl=60, policy=shared)
    orders = Cache(redis_client, namespace=f"{namespace}:orders", ttl=60, policy=shared)
    user = Held("user-1")
    loading_user = asyncio.create_task(users.get_or_set("1", user))
    await user.started.wait()
    order = asyncio.create_task(orders.get_or_set("1", returning("order-1")))
    done, _ = await asyncio.wait({order}, timeout=2)
    user.release.set()
    assert done, "orders waited for a load of users"
    assert await order == "order-1"
    assert await loading_user == "user-1"


# --- J. a streams listener on a client with a short socket timeout stays connected ----------


async def test_a_streams_listener_does_not_reconnect_while_idle_on_a_short_socket_timeout(
    namespace,
):
    client = await cachelab.connect(REAL_URL, quiet=True, socket_timeout=0.1)
    cache = Cache(client, namespace=namespace, ttl=60, near=NearCache(), invalidation="streams")
    try:
        await cache.get("k")  # starts the listener
        await asyncio.sleep(0.5)  # idle for several of the stream reads' 0.1 s socket timeout
        assert cache.invalidator.stats.reconnects == 0
    finally:
        await cache.clear()
        await cache.aclose()
        await client.aclose()


# --- from the review, by reading ---------------------------------------------------------------


async def test_a_holder_cancelled_right_after_its_load_releases_the_lock(redis_client, namespace):
    cache = Cache(redis_client, namespace=namespace, ttl=60, policy="distributed")
    returned = asyncio.Event()

    async def loader():
        returned.set()
        return "v"

    task = asyncio.create_task(cache.get_or_set("k", loader))
    await returned.wait()
    task.cancel()  # lands at the holder's first await after the load
    with contextlib.suppress(asyncio.CancelledError):
        await task
    lock = cache.redis_key("k") + ":lock"
    for _ in range(500):  # the load winds down in its own task: give it up to 5 s (TTL is 10)
        if not await redis_client.exists(lock):
            break
        await asyncio.sleep(0.01)
    assert not await redis_client.exists(lock), "a cancelled holder left its lock held"


async def test_the_keep_alive_does_not_queue_behind_traffic_on_a_busy_pool(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True, max_connections=2, pool_timeout=10)
    watcher = await cachelab.connect(REAL_URL, quiet=True)
    cache = Cache(client, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=0.3))
    load = Held("v")
    try:
        task = asyncio.create_task(cache.get_or_set("k", load))
        await load.started.wait()
        taken = [await client.connection_pool.get_connection() for _ in range(2)]  # pool busy
        lock = cache.redis_key("k") + ":lock"
        for _ in range(10):  # a full second: more than three lock TTLs
            await asyncio.sleep(0.1)
            assert await watcher.pttl(lock) > 0, "the lock expired while its holder was loading"
        for connection in taken:
            await client.connection_pool.release(connection)
        load.release.set()
        assert await task == "v"
        assert cache.stats.rejected == 0
    finally:
        await cache.clear()
        await client.aclose()
        await watcher.aclose()


async def test_a_remote_load_error_does_not_travel_with_its_text(redis_client, namespace):
    holder = Cache(redis_client, namespace=namespace, ttl=60, policy="distributed")
    waiter_client = cachelab.clone_client(redis_client)
    waiter = Cache(waiter_client, namespace=namespace, ttl=60, policy="distributed")
    secret = "postgres://app:hunter2-secret@db/prod"
    started, fail = asyncio.Event(), asyncio.Event()

    async def failing():
        started.set()
        await fail.wait()
        raise ValueError(f"could not connect to {secret}")

    pubsub = redis_client.pubsub()
    await pubsub.psubscribe(namespace.replace("[", "\\[") + "*")
    try:
        holding = asyncio.create_task(holder.get_or_set("k", failing))
        await started.wait()
        waiting = asyncio.create_task(waiter.get_or_set("k", returning("unused")))
        channel = cache_channel(waiter, "k")
        for _ in range(1000):  # until the waiter listens on the lock's channel
            if (await redis_client.pubsub_numsub(channel))[0][1] >= 2:
                break
            await asyncio.sleep(0.005)
        fail.set()
        with pytest.raises(ValueError):
            await holding
        with pytest.raises(cachelab.RemoteLoadError) as remote:
            await waiting
        assert "hunter2" not in str(remote.value)
        assert "ValueError" in str(remote.value)
        seen = []
        while (message := await pubsub.get_message(timeout=0.2)) is not None:
            if message["type"] == "pmessage":
                seen.append(message["data"])
        assert seen, "the release message was not observed"
        assert not any(b"hunter2" in data for data in seen), seen
    finally:
        await pubsub.aclose()
        await waiter_client.aclose()


def cache_channel(cache: Cache, key: str) -> str:
    """The channel a distributed cache's lock holder announces ``key``'s fill on."""
    return cache.redis_key(key) + ":filled"


async def test_a_malformed_invalidation_does_not_kill_the_listener(redis_client, namespace):
    near = NearCache(max_age_s=60)
    reader = Cache(redis_client, namespace=namespace, ttl=60, near=near, invalidation="pubsub")
    writer_client = cachelab.clone_client(redis_client)
    writer = Cache(writer_client, namespace=namespace, ttl=60, invalidation=None)
    try:
        await reader.set("k", "v1")
        assert await reader.get("k") == "v1"
        await redis_client.publish(f"{namespace}:invalidations", b"\xff\xfe not utf-8")
        await redis_client.publish(f"{namespace}:invalidations", b"")
        await writer.set("k", "v2")  # no announcement from this one: announce by hand below
        await redis_client.publish(f"{namespace}:invalidations", b"someone-else k")
        await until(lambda: "k" not in near)
        assert await reader.get("k") == "v2"
    finally:
        await reader.aclose()
        await writer_client.aclose()


class AlwaysStale(RefreshPolicy):
    """Every read of a cached value is served stale and revalidated in the background."""

    name = "always-stale"

    def verdict(self, entry, now):
        return Verdict.STALE


async def test_a_background_revalidation_that_cannot_reach_redis_is_counted_not_leaked(
    namespace,
):
    with private_redis() as url:
        client = await cachelab.connect(url, quiet=True, socket_timeout=0.5, connect_timeout=0.5)
        cache = Cache(client, namespace=namespace, ttl=60, refresh=AlwaysStale())
        await cache.set("k", "old")
        unretrieved = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
        try:
            found = await cache.lookup("k", returning("new"))
            assert found.outcome is Outcome.STALE
            stop_private_redis(url)  # before the background refresh has sent a command
            await until(lambda: cache.stats.background_errors == 1)
            await cache.aclose()
            gc.collect()
            await asyncio.sleep(0)
            assert not unretrieved, unretrieved
        finally:
            loop.set_exception_handler(None)
            await client.aclose()


# --- the fence survives what empties Redis ----------------------------------------------------


async def test_a_fill_that_began_before_a_flushall_and_a_write_cannot_land(namespace):
    with private_redis() as url:
        client = await cachelab.connect(url, quiet=True)
        try:
            for policy in POLICIES:
                cache = Cache(client, namespace=f"{namespace}:{policy}", ttl=60, policy=policy)
                await cache.set("k", "first")  # the fence exists and has moved
                await cache.delete("k")
                old = Held("old")
                loading = asyncio.create_task(cache.get_or_set("k", old))
                await old.started.wait()
                await client.flushall()  # the fence key is gone, as after a restart
                await cache.set("k", "new")  # a write after the flush
                old.release.set()
                await loading
                assert await cache.get("k") == "new", f"{policy}: an older fill overwrote a write"
        finally:
            await client.aclose()


async def test_fencing_tokens_keep_rising_across_a_flushall_and_a_restart(namespace):
    with private_redis() as url:
        client = await cachelab.connect(url, quiet=True)
        try:
            tokens = []
            for wipe in ("nothing", "flushall", "nothing"):
                if wipe == "flushall":
                    await client.flushall()
                lock = cachelab.RedisLock(client, f"{{{namespace}}}:lock")
                tokens.append(await lock.try_acquire())
                await lock.release()
            assert tokens == sorted(tokens) and len(set(tokens)) == 3, tokens
        finally:
            await client.aclose()


# --- a private server for tests that flush or kill it ----------------------------------------

_private: dict[str, subprocess.Popen] = {}


@contextlib.contextmanager
def private_redis():
    """A redis-server of this test's own (no persistence), stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server on PATH")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="cachelab-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            directory,
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}"
    _private[url] = process
    try:
        for _ in range(500):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            if process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            subprocess.run(["sleep", "0.01"], check=False)
        yield url
    finally:
        stop_private_redis(url)
        shutil.rmtree(directory, ignore_errors=True)


def stop_private_redis(url: str) -> None:
    process = _private.pop(url, None)
    if process is not None and process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


async def test_a_streams_listener_reads_its_log_on_a_resp3_client(namespace):
    """XREAD's reply is a list in RESP2 and a map in RESP3: the listener speaks RESP2 whatever
    the client does (on RESP3 it used to crash on every entry and restart, L1 flushed)."""
    resp3 = await cachelab.connect(f"{REAL_URL}?protocol=3", quiet=True)
    writer = await cachelab.connect(REAL_URL, quiet=True)
    near = NearCache(max_age_s=60)
    reader = Cache(resp3, namespace=namespace, ttl=60, near=near, invalidation="streams")
    other = Cache(writer, namespace=namespace, ttl=60, invalidation="streams")
    try:
        await reader.set("k", "v1")
        assert await reader.get("k") == "v1"
        await other.set("k", "v2")
        await until(lambda: reader.invalidator.stats.applied >= 1)
        assert await reader.get("k") == "v2"
        assert reader.invalidator.stats.restarts == 0 and reader.invalidator.stats.malformed == 0
    finally:
        await reader.clear()
        await reader.aclose()
        await resp3.aclose()
        await writer.aclose()
