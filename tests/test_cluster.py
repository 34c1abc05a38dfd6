"""cachelab on a real 3-master Redis Cluster that this module starts (and stops) itself.

What must hold on a cluster: a key's value and helper keys share one hash slot (so no script is
refused with CROSSSLOT); every herd policy works on keys spread over all masters; stampedes load
once; locks and pub/sub invalidation work across nodes (a PUBLISH on one node reaches subscribers
on the others); connect() and the CLI find the cluster; experiments can start worker processes
against it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from helpers import free_port, pid_alive
from redis.asyncio.cluster import RedisCluster
from typer.testing import CliRunner

import cachelab
from cachelab import Cache, NearCache, Outcome, RedisLock
from cachelab.cli import app
from cachelab.cluster import is_cluster, key_slot, parse_cluster_url
from cachelab.connection import ClientSpec, clone_client, portable_spec, source_of
from cachelab.errors import ConfigurationError, InvalidURLError, RedisUnavailableError
from cachelab.experiments import run_stampede
from cachelab.herd import HERD_POLICIES
from cachelab.l1 import kill_connections
from cachelab.refresh import StaleWhileRevalidate, XFetch
from cachelab.streams import StreamConsumer, add, read_from_last
from cachelab.subscriber import Subscriber
from cachelab.testing import Gate

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --- the cluster ------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    ports: list[int]
    processes: list[subprocess.Popen]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(self.nodes)

    def node_url(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.ports[index]}"

    def node(self, index: int) -> aioredis.Redis:
        """A plain client to one node (it sees only the keys that node holds)."""
        return aioredis.Redis(host="127.0.0.1", port=self.ports[index])


def _cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port in taken or port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _ask(port: int, *command: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10
    ).stdout


def _wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test cluster did not come up: {what}")
        time.sleep(0.05)


def _node_command(port: int, directory: Path) -> list[str]:
    options = {
        "port": str(port), "bind": "127.0.0.1", "cluster-enabled": "yes",
        "cluster-config-file": f"nodes-{port}.conf", "save": "", "appendonly": "no",
        "dir": str(directory), "daemonize": "no", "loglevel": "warning",
    }  # fmt: skip
    return ["redis-server", *(part for k, v in options.items() for part in (f"--{k}", v))]


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    directory: Path = tmp_path_factory.mktemp("cluster")
    ports: list[int] = []
    for _ in range(3):
        ports.append(_cluster_port(set(ports)))
    processes = [
        subprocess.Popen(
            _node_command(port, directory),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    addresses = [f"127.0.0.1:{port}" for port in ports]
    try:
        for port in ports:
            _wait_until(lambda p=port: _ask(p, "PING").strip() == "PONG", f"port {port} PING")
        create = ["--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(["redis-cli", *create], capture_output=True, check=True, timeout=60)
        for port in ports:
            _wait_until(
                lambda p=port: "cluster_state:ok" in _ask(p, "CLUSTER", "INFO"),
                f"port {port} cluster_state:ok",
            )
        yield LocalCluster(ports, processes)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        assert not any(pid_alive(p.pid) for p in processes), "a cluster node outlived the tests"


@pytest.fixture
async def cluster_client(local_cluster):
    client = await cachelab.connect(local_cluster.url, quiet=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def ns() -> str:
    return f"cachelab-test:{uuid.uuid4().hex[:12]}"


async def keys_per_node(cluster: LocalCluster, pattern: str) -> list[set[bytes]]:
    """The keys matching ``pattern`` that each node holds, asked of each node directly."""
    found = []
    for index in range(len(cluster.ports)):
        node = cluster.node(index)
        try:
            found.append({k async for k in node.scan_iter(match=pattern, count=1000)})
        finally:
            await node.aclose()
    return found


async def server_slot(client, key: str | bytes) -> int:
    return int(await client.cluster_keyslot(key))


# --- connect() --------------------------------------------------------------------------------


async def test_connect_with_a_cluster_url_says_it_chose_a_cluster(local_cluster, caplog):
    caplog.set_level(logging.INFO, logger="cachelab")
    client = await cachelab.connect(local_cluster.url)
    try:
        line = caplog.text
        assert is_cluster(client)
        version = re.search(r"redis_version:(\S+)", _ask(local_cluster.ports[0], "INFO")).group(1)
        assert f"Redis Cluster {version} (3 masters)" in line, line
        assert local_cluster.url in line
        assert source_of(client).is_real_server
        assert await client.ping()
    finally:
        await client.aclose()


async def test_connect_with_a_node_list_or_one_node_url(local_cluster, caplog):
    caplog.set_level(logging.INFO, logger="cachelab")
    by_list = await cachelab.connect(cluster_nodes=local_cluster.nodes[:2])
    by_node = await cachelab.connect(local_cluster.node_url(1))
    try:
        out = [record.getMessage() for record in caplog.records if record.name == "cachelab"]
        assert all("(3 masters)" in line for line in out), out
        assert "cluster_enabled:1" in out[1] and local_cluster.node_url(1) in out[1]
        assert is_cluster(by_list) and is_cluster(by_node)
        # both reach every master: a key written through one is read through the other
        key = f"cachelab-test:{uuid.uuid4().hex}"
        await by_list.set(key, b"v", px=30_000)
        assert await by_node.get(key) == b"v"
        await by_node.delete(key)
    finally:
        await by_list.aclose()
        await by_node.aclose()


async def test_connect_errors_name_the_fix_and_hide_the_password(local_cluster):
    with pytest.raises(ConfigurationError, match="either url or cluster_nodes"):
        await cachelab.connect(local_cluster.url, cluster_nodes=local_cluster.nodes, quiet=True)
    with pytest.raises(ConfigurationError, match="host:port"):
        await cachelab.connect(cluster_nodes=["127.0.0.1"], quiet=True)
    with pytest.raises(InvalidURLError, match=r"only\s+database 0"):
        await cachelab.connect(local_cluster.url + "/3", quiet=True)
    with pytest.raises(InvalidURLError, match="not host:port") as bad:
        await cachelab.connect("redis+cluster://:hunter22@127.0.0.1:x", quiet=True)
    assert "hunter22" not in str(bad.value)
    dead = free_port()
    with pytest.raises(RedisUnavailableError, match="cluster_state:ok") as down:
        await cachelab.connect(f"redis+cluster://:hunter22@127.0.0.1:{dead}", quiet=True)
    assert "hunter22" not in str(down.value)


def test_cluster_urls_parse_into_nodes_and_connection_options():
    nodes, options = parse_cluster_url(
        "rediss+cluster://alice:p%40ss@10.0.0.1:7000,10.0.0.2:7001/0?socket_timeout=3"
    )
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert options["ssl"] is True
    assert (options["username"], options["password"]) == ("alice", "p@ss")
    assert options["socket_timeout"] == 3.0
    assert not {"host", "port", "db", "connection_class"} & set(options)


async def test_a_cluster_client_not_made_by_connect_cannot_be_cloned(local_cluster):
    plain = RedisCluster(host="127.0.0.1", port=local_cluster.ports[0])
    try:
        for copy in (clone_client, portable_spec):
            with pytest.raises(ConfigurationError, match=r"cachelab\.connect"):
                copy(plain)
    finally:
        await plain.aclose()


# --- hash slots -------------------------------------------------------------------------------


TRICKY_KEYS = ["report", "user:42", "a}b", "{x}", "x{y}z", "{", "é-ü", "k" * 200]


@pytest.mark.parametrize("policy", ["distributed", "lease"])
async def test_every_key_a_cache_writes_shares_its_values_slot(cluster_client, ns, policy):
    """Asked of the server (CLUSTER KEYSLOT), for every key the cache actually created."""
    cache = Cache(cluster_client, namespace=ns, ttl=60, policy=policy)
    for key in TRICKY_KEYS:
        assert await cache.get_or_set(key, _const(key)) == key
        await cache.delete(key)  # leaves the fence (and, for leases, the stale copy)
        lock = RedisLock(
            cluster_client,
            cache.keyspace.helper(key, "lock"),
            ttl=5,
            fence_key=cache.keyspace.helper(key, "fence"),
        )
        async with lock:  # the lock key exists while held
            written = {k async for k in cluster_client.scan_iter(match="*", count=1000)}
        mine = [k for k in written if k.startswith(cache.redis_key(key).encode())]
        assert len(mine) >= 2, mine  # the lock and the fence at least
        slots = {await server_slot(cluster_client, k) for k in mine}
        assert slots == {await server_slot(cluster_client, cache.redis_key(key))}, mine
        assert slots == {key_slot(cache.redis_key(key))}  # our computation agrees
        for role in ("lock", "fence", "lease", "stale", "filled"):
            assert key_slot(cache.keyspace.helper(key, role)) == key_slot(cache.redis_key(key))
    await cache.clear()


async def test_a_key_that_would_empty_the_hash_tag_is_refused(cluster_client, ns):
    cache = Cache(cluster_client, namespace=ns, ttl=60)
    with pytest.raises(ConfigurationError, match="hash tag"):
        await cache.set("}oops", 1)


async def _until(condition, timeout: float = 10.0) -> None:
    """Wait for ``condition()`` (state another task changes, e.g. on a pub/sub message)."""
    deadline = time.monotonic() + timeout
    while not condition():  # polling our own objects: there is no event to await
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


def _const(value):
    async def loader():
        return value

    return loader


# --- every herd policy on keys over all masters -----------------------------------------------


@pytest.mark.parametrize("policy", sorted(HERD_POLICIES))
async def test_every_policy_reads_writes_and_deletes_across_masters(
    local_cluster, cluster_client, ns, policy
):
    cache = Cache(cluster_client, namespace=ns, ttl=60, policy=policy)
    keys = [f"item:{i}" for i in range(60)]
    loads = Counter()

    def loader(key):
        async def load():
            loads[key] += 1
            return {"key": key}

        return load

    assert [await cache.get_or_set(k, loader(k)) for k in keys] == [{"key": k} for k in keys]
    assert [await cache.get_or_set(k, loader(k)) for k in keys] == [{"key": k} for k in keys]
    assert loads == Counter(keys)  # the second round hit
    assert cache.stats.hits == 60

    per_node = await keys_per_node(local_cluster, f"{ns}:*")
    values = [{k for k in held if k.endswith(b"}")} for held in per_node]
    assert sum(map(len, values)) == 60
    assert all(values), f"values per node: {list(map(len, values))}"  # all three masters

    written = []

    async def writer(value):
        written.append(value)

    for i, key in enumerate(keys):
        if i % 3 == 0:
            await cache.set(key, i)
        elif i % 3 == 1:
            await cache.write_through(key, i, writer)
        else:
            assert await cache.delete(key) is True
    assert len(written) == 20
    for i, key in enumerate(keys):
        assert await cache.get(key, "gone") == (i if i % 3 != 2 else "gone")
    assert await cache.clear() == 40
    assert not any(await keys_per_node(local_cluster, f"{ns}:*"))


@pytest.mark.parametrize("policy", ["distributed", "lease"])
async def test_early_and_background_refreshes_on_a_cluster(cluster_client, ns, policy):
    versions = iter(range(1, 100))

    async def loader():
        await asyncio.sleep(0.01)  # a measurable load time, which XFetch weighs
        return next(versions)

    swr = Cache(cluster_client, namespace=ns, ttl=60, policy=policy,
                refresh=StaleWhileRevalidate(soft_ttl_s=0.2))  # fmt: skip
    assert (await swr.lookup("a", loader)).value == 1
    await asyncio.sleep(0.3)  # past the soft expiry
    stale = await swr.lookup("a", loader)
    assert (stale.value, stale.outcome) == (1, Outcome.STALE)
    await swr.aclose()  # waits for the background refresh (under the key's lock)
    assert swr.stats.background_refreshes == 1 and swr.stats.background_errors == 0
    assert await swr.get("a") == 2

    eager = Cache(cluster_client, namespace=ns, ttl=60, policy=policy, refresh=XFetch(beta=1e9))
    refreshed = await eager.lookup("a", loader)  # beta this large always refreshes early
    assert (refreshed.value, refreshed.outcome) == (3, Outcome.REFRESH)
    assert await eager.get("a") == 3 and eager.stats.rejected == 0
    await swr.clear()


# --- stampedes --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["distributed", "lease"])
async def test_200_concurrent_callers_in_4_instances_load_once(cluster_client, policy):
    result = await run_stampede(200, 4, policy, loader_ms=50, redis=cluster_client)
    summary = result.summary
    assert summary["backend_calls"] == 1
    assert summary["errors"] == 0
    assert (result.requests["outcome"] == str(Outcome.LOAD)).sum() == 1


async def test_a_stampede_of_worker_processes_loads_once(cluster_client):
    """Workers get the cluster through portable_spec and open their own cluster clients."""
    result = await run_stampede(
        40, 2, "distributed", loader_ms=100, redis=cluster_client, processes=True
    )
    assert result.summary["backend_calls"] == 1
    assert result.summary["errors"] == 0
    assert set(result.requests["instance"]) == {0, 1}


async def test_gate_of_200_callers_on_one_cache(cluster_client, ns):
    cache = Cache(cluster_client, namespace=ns, ttl=60, policy="distributed")
    gate, calls = Gate(), []

    async def loader():
        calls.append(1)
        await asyncio.sleep(0.05)
        return "v"

    async def caller():
        await gate.wait()
        return await cache.lookup("hot", loader)

    tasks = [asyncio.create_task(caller()) for _ in range(200)]
    await gate.arrivals(200)
    gate.open()
    outcomes = Counter(r.outcome for r in await asyncio.gather(*tasks))
    assert len(calls) == 1
    assert outcomes[Outcome.LOAD] == 1 and sum(outcomes.values()) == 200
    await cache.clear()


# --- locks and pub/sub across nodes -----------------------------------------------------------


def _names_on_each_master(client, ns: str) -> list[str]:
    """One lock name (with a hash tag) per master."""
    names, masters = [], set()
    for i in range(1000):
        name = f"{{{ns}:lock:{i}}}"
        node = client.get_node_from_key(name)
        if node.name not in masters:
            masters.add(node.name)
            names.append(name)
    assert len(names) == 3
    return names


async def test_lock_waiters_are_woken_by_a_release_on_any_master(cluster_client, ns):
    subscriber_node = None
    for name in _names_on_each_master(cluster_client, ns):
        holder = RedisLock(cluster_client, name, ttl=30)
        first = await holder.acquire(timeout=5)
        waiter = RedisLock(cluster_client, name, ttl=30)
        waiting = asyncio.create_task(waiter.acquire(timeout=20))
        while waiter.attempts < 1 or Subscriber.of(cluster_client).channels < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # polling our own objects' counters: no event to await
        pubsub = Subscriber.of(cluster_client)._pubsub
        subscriber_node = pubsub.connection.port if pubsub.connection else subscriber_node
        assert not waiting.done()
        await holder.release()
        second = await waiting
        assert second > first
        # woken by the message, not by the 30 s ttl: one failed try, one after the wake-up
        assert waiter.attempts == 2
        await waiter.release()
    assert subscriber_node is not None  # one subscriber connection heard all three masters


async def test_a_lock_whose_fence_would_land_elsewhere_is_refused(cluster_client, ns):
    name = next(
        n for n in (f"{ns}:lock:{i}" for i in range(100)) if key_slot(n) != key_slot(f"{n}:fence")
    )
    with pytest.raises(ConfigurationError, match="hash tag"):
        RedisLock(cluster_client, name)
    RedisLock(cluster_client, f"{{{name}}}")  # with a hash tag it is fine


async def test_pubsub_invalidation_between_clients_on_different_nodes(local_cluster, ns):
    a = await cachelab.connect(local_cluster.node_url(0), quiet=True)
    b = await cachelab.connect(local_cluster.node_url(2), quiet=True)
    primaries = sorted(a.get_primaries(), key=lambda n: n.port)
    a.set_default_node(primaries[0])
    b.set_default_node(b.get_node(host=primaries[2].host, port=primaries[2].port))
    ca = Cache(a, namespace=ns, ttl=60, near=NearCache(max_age_s=60), invalidation="pubsub")
    cb = Cache(b, namespace=ns, ttl=60, near=NearCache(max_age_s=60), invalidation="pubsub")
    try:
        keys = [f"k{i}" for i in range(12)]  # spread over the masters
        assert await cb.get("absent") is None  # b's first lookup starts its listener
        for key in keys:
            await ca.set(key, "old")
        await _until(lambda: cb.invalidator.stats.received >= len(keys))  # b has heard them all
        assert [await cb.get(key) for key in keys] == ["old"] * len(keys)
        assert all(key in cb.near for key in keys)
        ports = {
            Subscriber.of(a)._pubsub.connection.port,
            Subscriber.of(b)._pubsub.connection.port,
        }
        assert ports == {primaries[0].port, primaries[2].port}  # two different nodes
        for key in keys:
            await ca.set(key, "new")
        await _until(lambda: not any(k in cb.near for k in keys))
        assert [await cb.get(k) for k in keys] == ["new"] * len(keys)
        assert cb.invalidator.stats.applied >= len(keys)
        killed = await kill_connections(a, ca.invalidator.connection_names())
        assert killed == 1  # found on its node, among all three
    finally:
        for cache in (ca, cb):
            await cache.clear()
            await cache.aclose()
        await a.aclose()
        await b.aclose()


async def test_streams_invalidation_works_and_tracking_refuses_clearly(cluster_client, ns):
    writer = Cache(cluster_client, namespace=ns, ttl=60, near=NearCache(), invalidation="streams")
    reader_client = clone_client(cluster_client)
    reader = Cache(reader_client, namespace=ns, ttl=60, near=NearCache(), invalidation="streams")
    try:
        await writer.set("k", 1)
        assert await reader.get("k") == 1
        await writer.set("k", 2)
        await _until(lambda: "k" not in reader.near)
        assert await reader.get("k") == 2
        assert reader.invalidator.stats.applied >= 1
    finally:
        for cache in (writer, reader):
            await cache.clear()
            await cache.aclose()
        await reader_client.aclose()
    tracked = Cache(cluster_client, namespace=ns, ttl=60, near=NearCache(), invalidation="tracking")
    with pytest.raises(ConfigurationError, match="does not span a Redis Cluster"):
        await tracked.get("k")
    await tracked.aclose()


async def test_stream_helpers_on_a_cluster(cluster_client, ns):
    stream = f"{ns}:events"
    for i in range(5):
        await add(cluster_client, stream, {"n": str(i)})
    assert [e.fields["n"] for e in await read_from_last(cluster_client, stream, count=3)] == [
        "0", "1", "2"
    ]  # fmt: skip
    assert [e.fields["n"] for e in await read_from_last(cluster_client, stream)] == ["3", "4"]
    consumer = StreamConsumer(cluster_client, stream, "g", "c1")
    assert await consumer.create_group()
    entries = await consumer.read(count=10)
    assert await consumer.ack([e.id for e in entries]) == 5
    await cluster_client.delete(stream, f"{stream}:cachelab:last-read:cli")


# --- clients for other instances and processes ------------------------------------------------


async def test_clone_and_portable_spec_reach_the_same_cluster(local_cluster, cluster_client, ns):
    clone = clone_client(cluster_client, max_connections=3, client_name="cachelab-clone")
    spec = ClientSpec.from_json(json.loads(json.dumps(portable_spec(cluster_client).to_json())))
    worker = spec.client(max_connections=2)
    try:
        assert is_cluster(clone) and is_cluster(worker)
        assert sorted(spec.cluster_nodes) == sorted(local_cluster.nodes)
        key = f"{ns}:probe"
        await cluster_client.set(key, b"1")
        assert await clone.get(key) == b"1" and await worker.get(key) == b"1"
        # the clone's queue: 50 commands at once through 3 connections per node, none refused
        assert len(await asyncio.gather(*(clone.get(key) for _ in range(50)))) == 50
        assert all(len(node._connections) <= 3 for node in clone.get_nodes())
        node = clone.get_node_from_key(key)
        names = [c["name"] for c in await clone.client_list(target_nodes=node)]
        assert "cachelab-clone" in names
        await cluster_client.delete(key)
    finally:
        await clone.aclose()
        await worker.aclose()


def test_cli_stampede_on_the_cluster(local_cluster):
    policies = "local,distributed,lease"
    args = ["stampede", "--clients", "60", "--instances", "2", "--policy", policies]
    args += ["--loader-ms", "50", "--json", "--url", local_cluster.url]
    result = CliRunner().invoke(app, args, env={"REDIS_URL": None})
    assert result.exit_code == 0, result.output
    assert "Redis Cluster" in ANSI.sub("", result.stderr)
    rows = {row["policy"]: row for row in json.loads(ANSI.sub("", result.stdout))}
    assert rows["local"]["backend_calls"] == 2  # one per instance
    assert rows["distributed"]["backend_calls"] == 1
    assert rows["lease"]["backend_calls"] == 1
    assert all(row["errors"] == 0 for row in rows.values())
