"""RedisLock on the real server: fencing tokens, notification wake-up, expiry, timeouts, errors."""

from __future__ import annotations

import asyncio
import gc
import itertools
import time

import pytest

import cachelab
from cachelab.errors import ConfigurationError, LockLostError, LockTimeoutError
from cachelab.redis_lock import RedisLock
from cachelab.subscriber import Subscriber

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def lock_name(namespace) -> str:
    return f"{namespace}:lock"


async def settle(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def idle(client) -> bool:
    """The client's shared subscriber holds no channel, no reader task and no connection."""
    sub = Subscriber.of(client)
    await sub.settle()  # retire idle channels now, not after the grace
    return sub.channels == 0 and sub._reader is None and sub._pubsub is None


# --- grants and fencing tokens ----------------------------------------------------------------


async def test_every_grant_returns_a_larger_fencing_token(real_redis, lock_name):
    fences = []
    for _ in range(3):
        lock = RedisLock(real_redis, lock_name, ttl=5)
        fence = await lock.acquire(timeout=2)
        assert lock.held and lock.fence == fence
        assert await real_redis.get(lock_name) == lock.token.encode()
        fences.append(fence)
        assert await lock.release() is True
        assert not lock.held
        assert await real_redis.exists(lock_name) == 0
    assert fences == sorted(fences) and len(set(fences)) == 3
    # the fence counter lives beside the lock and outlives it
    assert int(await real_redis.get(f"{lock_name}:fence")) == fences[-1]


async def test_try_acquire_on_a_held_lock_reports_the_remaining_ttl(real_redis, lock_name):
    holder = RedisLock(real_redis, lock_name, ttl=5)
    await holder.acquire(timeout=2)
    other = RedisLock(real_redis, lock_name, ttl=5)
    assert await other.try_acquire() is None
    assert not other.held
    assert 3000 < other.remaining_ms <= 5000
    with pytest.raises(ConfigurationError, match="already held"):
        await holder.try_acquire()
    await holder.release()


# --- waiting: notification versus polling ----------------------------------------------------


async def test_second_acquirer_blocks_and_is_woken_by_the_release(real_redis, lock_name):
    holder = RedisLock(real_redis, lock_name, ttl=10)
    first = await holder.acquire(timeout=2)
    waiter = RedisLock(real_redis, lock_name, ttl=10)
    task = asyncio.create_task(waiter.acquire(timeout=20))
    await settle(0.3)
    assert not task.done()  # blocked behind the holder
    assert Subscriber.of(real_redis).channels == 1  # waiting on the lock's channel
    released_at = time.monotonic()
    assert await holder.release() is True
    second = await asyncio.wait_for(task, 5)
    woke_after = time.monotonic() - released_at
    assert second > first
    # one try before waiting, one after the message: no polling, no waiting out the 10 s TTL
    assert waiter.attempts <= 3
    assert woke_after < 2.0
    await waiter.release()
    assert await idle(real_redis)


async def test_polling_waiter_makes_many_attempts(real_redis, lock_name):
    holder = RedisLock(real_redis, lock_name, ttl=10)
    await holder.acquire(timeout=2)
    waiter = RedisLock(real_redis, lock_name, ttl=10, wait="poll", poll_interval=0.01)
    task = asyncio.create_task(waiter.acquire(timeout=20))
    await settle(0.3)
    assert not task.done()
    await holder.release()
    await asyncio.wait_for(task, 5)
    assert waiter.attempts >= 10  # ~30 polls in 0.3 s; the notified waiter above makes 2
    await waiter.release()
    assert Subscriber.of(real_redis).channels == 0  # polling never subscribes


# --- losing the lock --------------------------------------------------------------------------


async def test_release_after_expiry_does_not_delete_the_new_holders_lock(real_redis, lock_name):
    old = RedisLock(real_redis, lock_name, ttl=0.2)
    old_fence = await old.acquire(timeout=2)
    await settle(0.35)  # expired
    new = RedisLock(real_redis, lock_name, ttl=10)
    new_fence = await new.acquire(timeout=2)
    assert new_fence > old_fence
    assert await old.release() is False  # token mismatch: not ours any more
    assert await real_redis.get(lock_name) == new.token.encode()
    assert await old.release() is False  # and releasing twice is harmless
    assert await new.release() is True
    assert await real_redis.exists(lock_name) == 0


async def test_extend_while_held_pushes_the_expiry_out(real_redis, lock_name):
    lock = RedisLock(real_redis, lock_name, ttl=0.5)
    await lock.acquire(timeout=2)
    assert await real_redis.pttl(lock_name) <= 500
    await lock.extend(5)
    assert 4000 < await real_redis.pttl(lock_name) <= 5000
    await lock.extend()  # default: the lock's own ttl
    assert await real_redis.pttl(lock_name) <= 500
    await settle(0.2)
    assert lock.held  # 0.2 s into a 0.5 s lease
    assert await lock.release() is True


async def test_extend_after_expiry_raises_lock_lost(real_redis, lock_name):
    lock = RedisLock(real_redis, lock_name, ttl=0.2)
    await lock.acquire(timeout=2)
    await settle(0.35)
    with pytest.raises(LockLostError, match="was lost") as caught:
        await lock.extend()
    assert lock_name in str(caught.value)
    assert not lock.held
    assert await lock.release() is False


async def test_extend_after_takeover_raises_lock_lost_and_keeps_the_new_lock(real_redis, lock_name):
    lock = RedisLock(real_redis, lock_name, ttl=0.2)
    await lock.acquire(timeout=2)
    await settle(0.35)
    thief = RedisLock(real_redis, lock_name, ttl=10)
    await thief.acquire(timeout=2)
    with pytest.raises(LockLostError):
        await lock.extend(10)
    assert await real_redis.get(lock_name) == thief.token.encode()
    assert await real_redis.pttl(lock_name) > 9000  # the thief's TTL, not touched
    await thief.release()


# --- timeouts and crashed holders -------------------------------------------------------------


@pytest.mark.parametrize("wait", ["notify", "poll"])
async def test_acquire_timeout_raises_a_lock_timeout_naming_the_lock(real_redis, lock_name, wait):
    holder = RedisLock(real_redis, lock_name, ttl=10)
    await holder.acquire(timeout=2)
    waiter = RedisLock(real_redis, lock_name, ttl=10, wait=wait, poll_interval=0.05)
    started = time.monotonic()
    with pytest.raises(LockTimeoutError) as caught:
        await waiter.acquire(timeout=0.3)
    waited = time.monotonic() - started
    assert isinstance(caught.value, TimeoutError)
    assert lock_name in str(caught.value)
    assert 0.25 <= waited < 3.0
    assert not waiter.held
    assert await real_redis.get(lock_name) == holder.token.encode()  # holder unaffected
    await holder.release()
    assert await idle(real_redis)  # the timed-out waiter left its subscription


async def test_a_crashed_holder_delays_a_waiter_by_about_the_ttl(real_redis, lock_name):
    ttl = 1.0
    crashed = RedisLock(real_redis, lock_name, ttl=ttl)
    first = await crashed.acquire(timeout=2)
    started = time.monotonic()
    del crashed  # never released: its release message never comes
    gc.collect()
    waiter = RedisLock(real_redis, lock_name, ttl=ttl)
    second = await asyncio.wait_for(waiter.acquire(), 10)
    waited = time.monotonic() - started
    assert 0.8 * ttl <= waited < 3 * ttl
    assert second > first
    # woken by the TTL it read from the lock, not by polling
    assert waiter.attempts <= 3
    await waiter.release()
    assert await idle(real_redis)


async def test_many_waiters_on_two_clients_take_turns_with_increasing_fences(real_redis, lock_name):
    other = cachelab.clone_client(real_redis)
    clients = [real_redis, other]
    inside = 0
    overlaps = 0
    granted: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside, overlaps
        lock = RedisLock(clients[i % 2], lock_name, ttl=5)
        fence = await lock.acquire(timeout=30)
        inside += 1
        overlaps += inside > 1
        granted.append(fence)
        await asyncio.sleep(0.01)
        inside -= 1
        assert await lock.release() is True

    try:
        await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(20))), 40)
        assert len(granted) == 20
        assert overlaps == 0  # mutual exclusion
        assert all(a < b for a, b in itertools.pairwise(granted))
        assert await idle(real_redis) and await idle(other)
    finally:
        await other.aclose()


async def test_context_manager_acquires_and_releases(real_redis, lock_name):
    async with RedisLock(real_redis, lock_name, ttl=5) as lock:
        assert lock.held
        assert await real_redis.get(lock_name) == lock.token.encode()
        assert "held, fence" in repr(lock)
    assert not lock.held
    assert await real_redis.exists(lock_name) == 0
    assert await idle(real_redis)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [0, -1, True, "10", None])
async def test_bad_ttl_is_rejected(real_redis, lock_name, ttl):
    with pytest.raises(ConfigurationError, match="ttl"):
        RedisLock(real_redis, lock_name, ttl=ttl)


@pytest.mark.parametrize("name", ["", None, 7, b"lock"])
async def test_bad_name_is_rejected(real_redis, name):
    with pytest.raises(ConfigurationError, match="name"):
        RedisLock(real_redis, name)


@pytest.mark.parametrize("wait", ["spin", "", None])
async def test_bad_wait_mode_is_rejected(real_redis, lock_name, wait):
    with pytest.raises(ConfigurationError, match="wait"):
        RedisLock(real_redis, lock_name, wait=wait)
