"""The "lease" herd policy on the real server: one load per cold key, revoked leases cannot fill,
stale values served while one reload runs, and the wait timeout."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

import cachelab
from cachelab import Cache, ConfigurationError, Lookup, Outcome
from cachelab.errors import LockTimeoutError
from cachelab.herd import Lease
from cachelab.testing import Gate

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

KEY = "hot"


class CountingLoader:
    """Counts calls; with ``gated()`` each call waits for ``release`` before returning."""

    def __init__(self, value, delay: float = 0.0):
        self.value = value
        self.delay = delay
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
        return self.value


@pytest.fixture
async def clients(real_redis):
    made = []

    def make(n: int):
        more = [cachelab.clone_client(real_redis) for _ in range(n - 1)]
        made.extend(more)
        return [real_redis, *more]

    yield make
    for client in made:
        await client.aclose()


def caches_on(clients, namespace, **options) -> list[Cache]:
    return [Cache(c, namespace=namespace, ttl=60, policy=Lease(**options)) for c in clients]


async def released_together(calls):
    gate = Gate()

    async def one(call):
        await gate.wait()
        return await call()

    tasks = [asyncio.ensure_future(one(call)) for call in calls]
    await gate.arrivals(len(calls))
    gate.open()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def stored(cache: Cache) -> bool:
    return bool(await cache.redis.exists(cache.redis_key(KEY)))


async def test_cold_key_with_many_callers_on_four_clients_loads_once(clients, namespace):
    caches = caches_on(clients(4), namespace)
    loader = CountingLoader({"v": 1}, delay=0.2)
    results = await asyncio.wait_for(
        released_together([lambda c=c: c.lookup(KEY, loader) for c in caches for _ in range(25)]),
        10,
    )
    assert loader.calls == 1
    assert Counter(r.outcome for r in results) == {Outcome.LOAD: 1, Outcome.SHARED: 99}
    assert all(r.value == {"v": 1} for r in results)
    # the fill consumed the lease
    assert not await caches[0].redis.exists(caches[0].keyspace.helper(KEY, "lease"))


async def test_a_lease_whose_key_was_deleted_during_the_load_cannot_fill(clients, namespace):
    mine, theirs = caches_on(clients(2), namespace)
    loader = CountingLoader("old row").gated()
    task = asyncio.create_task(mine.lookup(KEY, loader))
    await asyncio.wait_for(loader.started.wait(), 5)
    assert await mine.redis.exists(mine.keyspace.helper(KEY, "lease"))  # the holder's lease

    await theirs.delete(KEY)  # the row changed: invalidate (and revoke the lease)
    loader.release.set()
    assert await asyncio.wait_for(task, 5) == Lookup("old row", Outcome.LOAD)
    assert not await stored(mine)  # the stale fill was refused
    assert mine.stats.rejected == 1

    fresh = CountingLoader("new row")
    assert await mine.lookup(KEY, fresh) == Lookup("new row", Outcome.LOAD)
    assert await theirs.get(KEY) == "new row"
    assert mine.stats.rejected == 1


async def test_a_write_during_the_load_wins(clients, namespace):
    mine, theirs = caches_on(clients(2), namespace)
    loader = CountingLoader("loaded").gated()
    task = asyncio.create_task(mine.lookup(KEY, loader))
    await asyncio.wait_for(loader.started.wait(), 5)
    await theirs.set(KEY, "written")
    loader.release.set()
    assert await asyncio.wait_for(task, 5) == Lookup("loaded", Outcome.LOAD)
    assert await theirs.get(KEY) == "written"
    assert mine.stats.rejected == 1


async def test_after_a_delete_readers_get_the_old_value_as_stale_during_one_reload(
    clients, namespace
):
    caches = caches_on(clients(4), namespace, keep_stale_s=10)
    first = CountingLoader("v1")
    assert await caches[0].lookup(KEY, first) == Lookup("v1", Outcome.LOAD)
    assert await caches[1].delete(KEY) is True
    assert not await stored(caches[0])

    before = [c.stats.loads for c in caches]
    reload = CountingLoader("v2").gated()
    calls = [lambda c=c: c.lookup(KEY, reload) for c in caches for _ in range(10)]
    run = asyncio.create_task(released_together(calls))
    await asyncio.wait_for(reload.started.wait(), 5)
    # give the other instances time to ask; they must not wait for the gated load
    for _ in range(200):
        if sum(c.stats.stale for c in caches) == 30:
            break
        await asyncio.sleep(0.01)
    assert sum(c.stats.stale for c in caches) == 30
    reload.release.set()
    results = await asyncio.wait_for(run, 10)

    assert reload.calls == 1
    (holder,) = [i for i, c in enumerate(caches) if c.stats.loads - before[i] == 1]
    for i, result in enumerate(results):
        if i // 10 == holder:
            assert result.outcome in (Outcome.LOAD, Outcome.SHARED) and result.value == "v2"
        else:
            assert result == Lookup("v1", Outcome.STALE)
    assert Counter(r.outcome for r in results) == {
        Outcome.LOAD: 1,
        Outcome.SHARED: 9,
        Outcome.STALE: 30,
    }
    assert await caches[2].get(KEY) == "v2"
    assert caches[0].stats.rejected + caches[1].stats.rejected == 0


async def test_without_a_stale_window_readers_wait_for_the_reload(clients, namespace):
    caches = caches_on(clients(4), namespace, keep_stale_s=0)
    assert (await caches[0].lookup(KEY, CountingLoader("v1"))).outcome is Outcome.LOAD
    await caches[1].delete(KEY)
    assert not await caches[0].redis.exists(caches[0].keyspace.helper(KEY, "stale"))

    reload = CountingLoader("v2", delay=0.2)
    results = await asyncio.wait_for(
        released_together([lambda c=c: c.lookup(KEY, reload) for c in caches for _ in range(10)]),
        10,
    )
    assert reload.calls == 1
    assert Counter(r.outcome for r in results) == {Outcome.LOAD: 1, Outcome.SHARED: 39}
    assert all(r.value == "v2" for r in results)


async def test_waiting_for_a_lease_longer_than_wait_timeout_raises(clients, namespace):
    mine, theirs = clients(2)
    holder = Cache(mine, namespace=namespace, ttl=60, policy=Lease())
    waiter = Cache(theirs, namespace=namespace, ttl=60, policy=Lease(wait_timeout=0.3))
    slow = CountingLoader("slow").gated()
    task = asyncio.create_task(holder.get_or_set(KEY, slow))
    await asyncio.wait_for(slow.started.wait(), 5)
    never = CountingLoader("never")
    started = time.monotonic()
    with pytest.raises(LockTimeoutError) as caught:
        await waiter.get_or_set(KEY, never)
    assert 0.25 <= time.monotonic() - started < 2.0
    assert repr(KEY) in str(caught.value) and "wait_timeout" in str(caught.value)
    assert never.calls == 0
    slow.release.set()
    assert await asyncio.wait_for(task, 5) == "slow"
    assert await waiter.lookup(KEY, never) == Lookup("slow", Outcome.HIT)


@pytest.mark.parametrize(
    "options",
    [{"lease_ttl": 0}, {"lease_ttl": -1}, {"retry_s": 0}, {"retry_s": True}, {"keep_stale_s": -1}],
)
def test_bad_lease_options_are_rejected(options):
    with pytest.raises(ConfigurationError):
        Lease(**options)


async def test_a_failed_filler_gives_its_lease_back(clients, namespace):
    """Without the give-back, the other instance would poll until the 10 s lease expired."""
    holder, other = caches_on(clients(2), namespace, lease_ttl=10.0)

    async def failing():
        await asyncio.sleep(0.1)
        raise RuntimeError("database down")

    second = CountingLoader("fresh")
    first = asyncio.create_task(holder.get_or_set(KEY, failing))
    await asyncio.sleep(0.02)  # the holder has the lease now
    started = time.monotonic()
    value = await other.get_or_set(KEY, second)
    with pytest.raises(RuntimeError, match="database down"):
        await first
    assert value == "fresh" and second.calls == 1
    assert time.monotonic() - started < 5.0  # well before the 10 s lease would have expired
    assert await other.redis.exists(other.keyspace.helper(KEY, "lease")) == 0
