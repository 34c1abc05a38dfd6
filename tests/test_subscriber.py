"""Subscriber: one shared pub/sub connection per client, confirmed subscriptions, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import socket
import subprocess
import time
import weakref

import pytest
from helpers import free_port

import cachelab
from cachelab.subscriber import LOST, RESUMED, Subscriber

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


async def idle(sub: Subscriber) -> bool:
    """Nothing left once the subscriber retired its idle channels (at once, without the grace
    it gives a channel whose last listener just left)."""
    await sub.settle()
    return sub.channels == 0 and sub._reader is None and sub._pubsub is None


@pytest.fixture
def private_url(tmp_path):
    """A redis-server of this test alone, so it can count and kill pub/sub connections freely."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs redis-server on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the private redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def private_redis(private_url):
    client = await cachelab.connect(private_url, quiet=True)
    try:
        yield client
    finally:
        await client.aclose()


async def pubsub_clients(client) -> list[str]:
    listing = await client.execute_command("CLIENT LIST TYPE pubsub")
    if isinstance(listing, bytes):
        listing = listing.decode()
    return [line for line in listing.splitlines() if line.strip()]


# --- delivery ---------------------------------------------------------------------------------


async def test_listen_receives_a_message_published_right_after_entry(real_redis, namespace):
    sub = Subscriber.of(real_redis)
    assert Subscriber.of(real_redis) is sub  # one per client
    channel = f"{namespace}:ch"
    async with sub.listen(channel) as inbox:
        # the subscription is confirmed before the body runs: nothing published now is lost
        assert await real_redis.publish(channel, "hello") == 1
        assert await inbox.get(timeout=5) == b"hello"
        assert await real_redis.publish(channel, "again") == 1
        assert await inbox.get(timeout=5) == b"again"
        assert inbox.get_nowait() is None
    assert sub.messages == 2
    assert await idle(sub)


async def test_two_listeners_on_one_channel_both_receive(real_redis, namespace):
    sub = Subscriber.of(real_redis)
    channel = f"{namespace}:ch"
    async with sub.listen(channel) as first, sub.listen(channel) as second:
        assert sub.channels == 1
        await real_redis.publish(channel, "m")
        assert await first.get(timeout=5) == b"m"
        assert await second.get(timeout=5) == b"m"
        async with sub.listen(channel) as third:
            await real_redis.publish(channel, "n")
            assert [await i.get(timeout=5) for i in (first, second, third)] == [b"n"] * 3
        # the third left; the others still listen on the same subscription
        await real_redis.publish(channel, "o")
        assert await first.get(timeout=5) == b"o"
        assert await second.get(timeout=5) == b"o"
    assert await idle(sub)


async def test_channels_are_kept_apart(real_redis, namespace):
    sub = Subscriber.of(real_redis)
    one, two = f"{namespace}:one", f"{namespace}:two"
    async with sub.listen(one) as first, sub.listen(two) as second:
        assert sub.channels == 2
        await real_redis.publish(one, "a")
        await real_redis.publish(two, "b")
        # both arrive on one connection in order: once "b" is in, "a" has been routed too
        assert await second.get(timeout=5) == b"b"
        assert second.get_nowait() is None
        assert first.get_nowait() == b"a"
        assert first.get_nowait() is None
    assert await idle(sub)


async def test_a_listener_that_left_gets_nothing_and_others_keep_their_channel(
    real_redis, namespace
):
    sub = Subscriber.of(real_redis)
    one, two = f"{namespace}:one", f"{namespace}:two"
    async with sub.listen(two) as staying:
        async with sub.listen(one) as leaving:
            pass
        assert sub.channels == 1
        await sub.settle()  # what the grace would do a moment later
        assert await real_redis.publish(one, "gone") == 0  # unsubscribed on the server too
        assert await real_redis.publish(two, "here") == 1
        assert await staying.get(timeout=5) == b"here"
        assert leaving.get_nowait() is None
    assert await idle(sub)


async def test_inbox_get_times_out_with_none(real_redis, namespace):
    async with Subscriber.of(real_redis).listen(f"{namespace}:quiet") as inbox:
        assert await inbox.get(timeout=0.05) is None


# --- one connection, opened only while needed -------------------------------------------------


async def test_many_listeners_share_one_pubsub_connection(private_redis):
    sub = Subscriber.of(private_redis)
    assert await pubsub_clients(private_redis) == []
    async with contextlib.AsyncExitStack() as stack:
        inboxes = [await stack.enter_async_context(sub.listen(f"ch{i % 5}")) for i in range(50)]
        assert sub.channels == 5
        clients = await pubsub_clients(private_redis)
        assert len(clients) == 1
        assert "sub=5" in clients[0]
        # one subscribed connection per client, however many inboxes
        assert await private_redis.publish("ch3", "x") == 1
        got = [await inbox.get(timeout=5) for inbox in inboxes[3::5]]
        assert got == [b"x"] * 10
        assert all(inbox.get_nowait() is None for inbox in inboxes)
    # the last listener left: connection closed, reader task gone
    assert await idle(sub)
    for _ in range(100):
        if not await pubsub_clients(private_redis):
            break
        await asyncio.sleep(0.02)
    assert await pubsub_clients(private_redis) == []


async def test_two_clients_have_one_pubsub_connection_each(private_redis):
    other = cachelab.clone_client(private_redis)
    try:
        async with (
            Subscriber.of(private_redis).listen("c") as first,
            Subscriber.of(other).listen("c") as second,
        ):
            assert Subscriber.of(private_redis) is not Subscriber.of(other)
            assert len(await pubsub_clients(private_redis)) == 2
            assert await private_redis.publish("c", "y") == 2
            assert await first.get(timeout=5) == b"y"
            assert await second.get(timeout=5) == b"y"
    finally:
        await other.aclose()


async def test_concurrent_first_listeners_all_get_confirmed_subscriptions(private_redis):
    sub = Subscriber.of(private_redis)
    entered = asyncio.Event()
    ready = 0

    async def listener(i: int) -> bytes:
        nonlocal ready
        async with sub.listen(f"ch{i % 3}") as inbox:
            ready += 1
            if ready == 30:
                entered.set()
            await entered.wait()
            return await inbox.get(timeout=5)

    tasks = [asyncio.create_task(listener(i)) for i in range(30)]
    await asyncio.wait_for(entered.wait(), 10)
    for c in range(3):
        assert await private_redis.publish(f"ch{c}", f"m{c}") == 1
    results = await asyncio.gather(*tasks)
    assert results == [f"m{i % 3}".encode() for i in range(30)]
    assert await idle(sub)


async def test_a_subscriber_does_not_keep_its_client_alive(real_redis, namespace):
    client = cachelab.clone_client(real_redis)
    async with Subscriber.of(client).listen(f"{namespace}:ch"):
        pass
    await Subscriber.of(client).settle()  # its idle channel retired: no task holds it any more
    alive = weakref.ref(client)
    subscriber = weakref.ref(Subscriber._by_client[client])
    await client.aclose()
    del client
    gc.collect()
    assert alive() is None
    # its Subscriber went with it (other tests' clients may be collected here too, so no counting)
    assert subscriber() is None


# --- losing the connection --------------------------------------------------------------------


async def test_a_killed_connection_puts_lost_in_every_inbox_and_reconnects(private_redis):
    sub = Subscriber.of(private_redis)
    async with (
        sub.listen("a") as a1,
        sub.listen("a") as a2,
        sub.listen("b") as b1,
    ):
        assert await private_redis.publish("a", "before") == 1
        assert await a1.get(timeout=5) == b"before"
        assert await a2.get(timeout=5) == b"before"
        assert sub.reconnects == 0

        killed = await private_redis.execute_command("CLIENT KILL TYPE pubsub")
        assert int(killed) == 1  # private server: only our subscriber connection

        for inbox in (a1, a2, b1):
            assert await inbox.get(timeout=5) is LOST
        assert sub.reconnects == 1

        # redis-py reconnects and re-subscribes both channels; publish until it is back
        for channel, inbox in (("a", a1), ("b", b1)):
            for _ in range(100):
                if await private_redis.publish(channel, "after") >= 1:
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"never re-subscribed to {channel!r} after the connection was killed")
            # the server confirmed the subscription again before it delivered "after"
            assert await inbox.get(timeout=5) is RESUMED
            assert await inbox.get(timeout=5) == b"after"
        assert await a2.get(timeout=5) is RESUMED
        assert await a2.get(timeout=5) == b"after"
        assert len(await pubsub_clients(private_redis)) == 1
    assert await idle(sub)


async def test_reconnects_counts_each_loss(private_redis):
    sub = Subscriber.of(private_redis)
    async with sub.listen("a") as inbox:
        for round_ in range(1, 3):
            await private_redis.execute_command("CLIENT KILL TYPE pubsub")
            assert await inbox.get(timeout=5) is LOST
            assert sub.reconnects == round_
            for _ in range(100):
                if await private_redis.publish("a", f"r{round_}") >= 1:
                    break
                await asyncio.sleep(0.05)
            assert await inbox.get(timeout=5) is RESUMED
            assert await inbox.get(timeout=5) == f"r{round_}".encode()
    assert await idle(sub)


async def test_a_killed_connection_found_by_id_on_the_shared_server(real_redis, namespace):
    """On the shared server, kill only this subscriber's connection (matched by its local port)."""
    sub = Subscriber.of(real_redis)
    channel = f"{namespace}:ch"
    async with sub.listen(channel) as inbox:
        conn = sub._pubsub.connection
        host, port = conn._writer.get_extra_info("sockname")[:2]
        ours = [
            line
            for line in await pubsub_clients(real_redis)
            if f" addr={host}:{port} " in f" {line} "
        ]
        assert len(ours) == 1
        client_id = next(f.split("=", 1)[1] for f in ours[0].split() if f.startswith("id="))
        assert int(await real_redis.execute_command("CLIENT KILL", "ID", client_id)) == 1
        assert await inbox.get(timeout=5) is LOST
        assert sub.reconnects == 1
        for _ in range(100):
            if await real_redis.publish(channel, "back") >= 1:
                break
            await asyncio.sleep(0.05)
        assert await inbox.get(timeout=5) is RESUMED
        assert await inbox.get(timeout=5) == b"back"
    assert await idle(sub)


async def test_a_channel_stays_subscribed_for_a_moment_and_the_next_listener_reuses_it(real_redis):
    sub = Subscriber.of(real_redis)
    async with sub.listen("cachelab-test:grace") as first:
        await real_redis.publish("cachelab-test:grace", b"1")
        assert await first.get(timeout=5) == b"1"
    assert sub.channels == 0 and sub._pubsub is not None  # within the grace: still subscribed
    connection = sub._pubsub.connection
    async with sub.listen("cachelab-test:grace") as second:  # no new SUBSCRIBE round trip
        assert sub._pubsub.connection is connection
        await real_redis.publish("cachelab-test:grace", b"2")
        assert await second.get(timeout=5) == b"2"
    assert await idle(sub)
