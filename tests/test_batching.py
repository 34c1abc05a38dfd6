"""Auto-batching in the store: what concurrent callers send in one tick travels together.

Counts, not timings: how many commands reached the client, and what each caller got back.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from helpers import REAL_URL
from redis.exceptions import ConnectionError as RedisConnectionError

import cachelab
from cachelab import Cache, CacheUnavailableError, Outcome

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def sent(cache: Cache):
    """What ``cache`` sends: command names (its reads, whichever way they travel, and anything
    else through redis-py) and the sizes of its pipelines."""
    client, reads = cache.redis, cache.store.reads
    commands: list[str] = []
    pipelines: list[int] = []
    execute, pipeline = client.execute_command, client.pipeline
    mget = reads._mget if reads is not None else None

    async def spy(*args, **options):
        commands.append(str(args[0]).upper())
        return await execute(*args, **options)

    async def spied_mget(*keys):
        commands.append("MGET")
        return await mget(*keys)

    def counted_pipeline(*args, **options):
        pipe = pipeline(*args, **options)
        run = pipe.execute

        async def execute_counted(*a, **o):
            pipelines.append(len(pipe.command_stack))
            return await run(*a, **o)

        pipe.execute = execute_counted
        return pipe

    client.execute_command, client.pipeline = spy, counted_pipeline
    if reads is not None:
        reads._mget = spied_mget
    try:
        yield commands, pipelines
    finally:
        del client.execute_command, client.pipeline
        if reads is not None:
            reads._mget = mget


@pytest.fixture
async def cache(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none")
    for i in range(50):
        await cache.set(f"k{i}", {"i": i})
    yield cache
    await cache.aclose()


async def test_reads_issued_in_one_tick_go_out_as_one_mget(cache):
    async def loader():
        raise AssertionError("every key is cached")

    with sent(cache) as (commands, _pipelines):
        values = await asyncio.gather(*(cache.get_or_set(f"k{i}", loader) for i in range(50)))
    assert values == [{"i": i} for i in range(50)]  # each caller its own key's value
    # the first caller found nothing in flight and went alone; the other 49 went together
    assert commands == ["MGET", "MGET"]
    assert cache.store.reads.batches == 1


async def test_a_lone_caller_goes_out_at_once(cache):
    with sent(cache) as (commands, _pipelines):
        for i in range(5):
            assert await cache.get(f"k{i}") == {"i": i}
    assert commands == ["MGET"] * 5
    assert cache.store.reads.batches == 0


async def test_without_batching_every_read_is_its_own_redis_py_command(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none", batching=False)
    await cache.set("k", 1)
    with sent(cache) as (commands, _pipelines):
        await asyncio.gather(*(cache.get("k") for _ in range(20)))
    assert commands == ["MGET"] * 20  # each through redis-py's execute_command


async def test_batched_reads_travel_on_one_pipelined_connection_of_the_pool(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none")
    await cache.set("k", 1)
    assert await cache.get("k") == 1
    channel = cache.store.reads.channel
    assert channel is not None
    link = channel._link
    assert link.connection in real_redis.connection_pool._in_use_connections  # counted
    assert await asyncio.gather(*(cache.get("k") for _ in range(300))) == [1] * 300
    assert channel._link is link  # every read since went on that one connection


async def test_closing_the_client_closes_the_channel_and_its_reader(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True)
    cache = Cache(client, namespace=namespace, ttl=60)
    await cache.get("k")
    assert [t for t in asyncio.all_tasks() if t.get_name() == "cachelab-reads"]
    await client.aclose()
    for _ in range(200):  # the reader sees its connection closed and ends
        if not [t for t in asyncio.all_tasks() if t.get_name() == "cachelab-reads"]:
            break
        await asyncio.sleep(0.01)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "cachelab-reads"]


async def test_a_small_pool_keeps_its_connections_for_commands(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True, max_connections=4)
    cache = Cache(client, namespace=namespace, ttl=60)
    assert cache.store.reads.channel is None  # reads go through redis-py, batched all the same
    await cache.set("k", 1)
    assert await asyncio.gather(*(cache.get("k") for _ in range(20))) == [1] * 20
    await cache.clear()
    await client.aclose()


async def test_the_same_key_twice_in_a_batch_is_read_once(cache):
    mget = cache.store.reads._mget
    key_counts = []

    async def counting(*keys):
        key_counts.append(len(keys))
        return await mget(*keys)

    cache.store.reads._mget = counting
    try:
        values = await asyncio.gather(*(cache.get("k1") for _ in range(11)))
    finally:
        cache.store.reads._mget = mget
    assert values == [{"i": 1}] * 11
    assert key_counts == [2, 2]  # alone: k1 + fence; batch of 10 reads of k1: k1 + fence once


async def test_a_batch_holds_at_most_256_reads(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none")
    with sent(cache) as (commands, _pipelines):
        await asyncio.gather(*(cache.get(f"missing{i}") for i in range(600)))
    assert commands == ["MGET"] * 4  # 1 alone + 599 in batches of 256, 256 and 87


async def test_fills_in_one_tick_go_out_as_one_pipeline(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none")
    release, all_loading = asyncio.Event(), asyncio.Event()
    loading = 0

    async def loader():
        nonlocal loading
        loading += 1
        if loading == 40:
            all_loading.set()
        await release.wait()
        return "v"

    with sent(cache) as (commands, pipelines):
        lookups = [asyncio.create_task(cache.lookup(f"cold{i}", loader)) for i in range(40)]
        await all_loading.wait()  # every lookup missed and is loading
        release.set()  # the loads end in one tick: their fills are issued together
        results = await asyncio.gather(*lookups)
    assert [r.outcome for r in results] == [Outcome.LOAD] * 40
    assert commands.count("EVALSHA") == 1  # the first fill, alone
    assert pipelines == [39]  # the rest, in one pipeline
    assert [await cache.get(f"cold{i}") for i in range(40)] == ["v"] * 40


async def test_writes_in_one_tick_land_in_the_order_they_were_issued(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60)
    await asyncio.gather(*(cache.set("k", i) for i in range(30)))
    assert await cache.get("k") == 29


async def test_a_forgotten_script_in_a_batch_is_loaded_again(real_redis, namespace):
    cache = Cache(real_redis, namespace=namespace, ttl=60, policy="none")
    await cache.set("warm", 1)
    await real_redis.script_flush()  # as after a restart: every script must be loaded again
    await asyncio.gather(*(cache.set(f"k{i}", i) for i in range(10)))
    assert [await cache.get(f"k{i}") for i in range(10)] == list(range(10))


async def test_a_cancelled_caller_leaves_the_batch_to_the_others(cache):
    gate = asyncio.Event()
    mget = cache.store.reads._mget

    async def slow(*keys):
        await gate.wait()
        return await mget(*keys)

    cache.store.reads._mget = slow
    first = asyncio.create_task(cache.get("k0"))  # alone: holds the door open
    await asyncio.sleep(0)
    batch = [asyncio.create_task(cache.get(f"k{i}")) for i in range(1, 6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the batch is on its way
    batch[2].cancel()
    gate.set()
    assert await first == {"i": 0}
    results = await asyncio.gather(*batch, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [results[i] for i in (0, 1, 3, 4)] == [{"i": i} for i in (1, 2, 4, 5)]


async def test_a_failed_batch_gives_every_caller_the_error(cache):
    gate = asyncio.Event()
    mget = cache.store.reads._mget

    async def failing(*keys):
        await gate.wait()
        if len(keys) > 2:  # the batch, not the lone read
            raise RedisConnectionError("Connection reset by peer")
        return await mget(*keys)

    cache.store.reads._mget = failing
    first = asyncio.create_task(cache.get("k0"))
    await asyncio.sleep(0)
    batch = [asyncio.create_task(cache.get(f"k{i}")) for i in range(1, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == {"i": 0}
    for task in batch:
        with pytest.raises(CacheUnavailableError, match="Connection reset"):
            await task
    assert cache.stats.redis_errors == 1  # one command failed, not three
