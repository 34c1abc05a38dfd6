"""Bad input gets a clear error before anything reaches Redis; corrupt entries are misses.

Every test runs on the real Redis and then scans its namespace: "nothing was written" is checked
on the server, not inferred. Where a refusal can happen before Redis is touched at all, a spy on
the client proves that no command was sent.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import glob_escape, scan_keys

import cachelab
from cachelab import (
    HERD_POLICIES,
    Cache,
    CachelabError,
    ConfigurationError,
    Distributed,
    Lease,
    Outcome,
    SerializationError,
    ValueTooLargeError,
)
from cachelab.cache import DEFAULT_MAX_VALUE_BYTES

pytestmark = pytest.mark.redis

POLICIES = list(HERD_POLICIES)
PACKAGE = Path(cachelab.__file__).resolve().parent


@contextlib.contextmanager
def commands_sent(client):
    """Record the name of every command ``client`` sends (scripts arrive as EVALSHA)."""
    sent: list[str] = []
    original = client.execute_command

    async def spy(*args, **options):
        sent.append(str(args[0]).split()[0].upper())
        return await original(*args, **options)

    client.execute_command = spy
    try:
        yield sent
    finally:
        del client.execute_command


async def stored(cache: Cache) -> set[str]:
    """Every Redis key in the cache's namespace (values and helper keys), found with SCAN."""
    keys = await scan_keys(cache.redis, glob_escape(cache.namespace) + "*")
    return {k.decode() for k in keys}


def traces_of_a_refused_fill(cache: Cache, key: str) -> set[str]:
    """What a fill refused *after* the loader ran may leave: policies that grant a lock or lease
    moved the key's fence (a version number, never a value)."""
    granted = cache.policy.name in ("distributed", "lease")
    return {cache.redis_key(key) + ":fence"} if granted else set()


async def loaded():
    return "loaded"


async def until(condition, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds (it looks at our own objects: there is no event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def inside_the_fill(cache: Cache) -> int:
    """How many callers are in the policy's fill: loading, or waiting for the one load."""
    if cache.policy.name == "none":
        return cache.stats.loads
    return cache.policy.statistics().callers


@pytest.fixture
def make(real_redis, namespace):
    def make_cache(**options) -> Cache:
        options.setdefault("namespace", namespace)
        options.setdefault("ttl", 60)
        return Cache(real_redis, **options)

    return make_cache


# --- refused before any command: keys, TTLs, loaders, values ----------------------------------


def _calls(cache: Cache, *, key="k", value="v", ttl=None, loader=loaded, writer=None):
    """Every cache call that takes the given arguments (the writer must never run)."""

    async def never(value):
        raise AssertionError("the writer ran for input that should have been refused")

    writer = writer or never
    return {
        "set": lambda: cache.set(key, value, ttl=ttl),
        "get_or_set": lambda: cache.get_or_set(key, loader, ttl=ttl),
        "lookup": lambda: cache.lookup(key, loader, ttl=ttl),
        "write_through": lambda: cache.write_through(key, value, writer, ttl=ttl),
    }


BAD_KEYS = ["", 7, None, b"k", ("k",)]
BAD_TTLS = [0, -1, -0.001, float("nan"), float("inf"), True, False, "10", [5]]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_send_no_command(make, policy, key):
    cache = make(policy=policy)
    calls = _calls(cache, key=key)
    calls |= {"get": lambda: cache.get(key), "delete": lambda: cache.delete(key)}
    with commands_sent(cache.redis) as sent:
        for name, call in calls.items():
            with pytest.raises(ConfigurationError, match="non-empty strings") as info:
                await call()
            assert "f'user:{user_id}'" in str(info.value), name  # names the fix
    assert sent == []
    assert await stored(cache) == set()


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
async def test_bad_ttls_send_no_command(make, policy, ttl):
    cache = make(policy=policy)
    with commands_sent(cache.redis) as sent:
        for name, call in _calls(cache, ttl=ttl).items():
            with pytest.raises(ConfigurationError, match="ttl must be a number of seconds") as info:
                await call()
            assert "delete()" in str(info.value), name
    assert sent == []
    assert cache.stats.loads == 0
    assert await stored(cache) == set()


async def _agen():
    yield "an async generator is not a loader"


def _coroutine_object():
    return loaded()  # a common slip: passing the call instead of the function


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "loader",
    [None, 42, "loader", _agen, _coroutine_object()],
    ids=["None", "int", "str", "agen", "coro"],
)
async def test_loaders_that_are_not_async_callables_send_no_command(make, policy, loader):
    cache = make(policy=policy)
    with commands_sent(cache.redis) as sent:
        for name in ("get_or_set", "lookup"):
            with pytest.raises(ConfigurationError, match="async callable") as info:
                await _calls(cache, loader=loader)[name]()
            if asyncio.iscoroutine(loader):
                assert "not fetch()" in str(info.value)
    if asyncio.iscoroutine(loader):
        loader.close()
    assert sent == []
    assert cache.stats.loads == 0
    assert await stored(cache) == set()


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_sync_loader_is_refused_before_anything_is_stored(make, policy):
    """A plain function cannot be told from one returning a coroutine until it is called, so it
    is refused right after the call: its result is never stored, locks and leases are given back.
    """
    cache = make(policy=policy)
    calls = []

    def sync_loader():
        calls.append(1)
        return "a value, not an awaitable"

    with pytest.raises(ConfigurationError, match="async def") as info:
        await cache.get_or_set("k", sync_loader)
    assert "str" in str(info.value)  # says what the call returned
    assert calls == [1]
    assert cache.stats.loads == 0
    assert cache.stats.errors == 1
    assert await stored(cache) == traces_of_a_refused_fill(cache, "k")
    # nothing is left locked: a correct loader fills the key at once
    assert await cache.lookup("k", loaded) == cachelab.Lookup("loaded", Outcome.LOAD)


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), b"bytes", {"x": 1j}])
async def test_unencodable_values_send_no_command(make, value):
    cache = make()
    with commands_sent(cache.redis) as sent:
        for name in ("set", "write_through"):
            with pytest.raises(SerializationError, match="as JSON") as info:
                await _calls(cache, value=value)[name]()
            assert "msgpack" in str(info.value)  # names an alternative
    assert sent == []
    assert await stored(cache) == set()


@pytest.mark.parametrize("policy", POLICIES)
async def test_unencodable_loaded_value_is_not_stored(make, policy):
    cache = make(policy=policy)

    async def loader():
        return {"when": {1, 2}}

    with pytest.raises(SerializationError, match="dict"):
        await cache.get_or_set("k", loader)
    assert cache.stats.loads == 1
    assert cache.stats.errors == 1
    assert await stored(cache) == traces_of_a_refused_fill(cache, "k")


# --- the size limit ---------------------------------------------------------------------------


def test_the_default_limit_is_one_mebibyte(real_redis, namespace):
    assert DEFAULT_MAX_VALUE_BYTES == 1024 * 1024
    assert Cache(real_redis, namespace=namespace, ttl=1).max_value_bytes == 1024 * 1024


async def test_the_limit_is_inclusive_and_the_error_says_size_limit_and_fix(make):
    cache = make(max_value_bytes=100)
    await cache.set("fits", "x" * 98)  # '"' + 98 + '"' = 100 bytes
    assert await cache.get("fits") == "x" * 98

    with commands_sent(cache.redis) as sent, pytest.raises(ValueTooLargeError) as info:
        await cache.set("big", "x" * 99)
    assert sent == []
    message = str(info.value)
    assert "101 bytes" in message
    assert "max_value_bytes=100" in message
    assert "Cache(..., max_value_bytes=...)" in message
    assert "smaller" in message
    assert isinstance(info.value, SerializationError | ValueError | CachelabError)
    fits = cache.redis_key("fits")
    assert await stored(cache) == {fits, fits + ":fence"}  # the write moved the key's fence


async def test_default_limit_refuses_one_byte_over_a_mebibyte(make):
    cache = make()
    limit = 1024 * 1024
    with pytest.raises(ValueTooLargeError, match=f"{limit + 1:,} bytes"):
        await cache.set("k", "x" * (limit - 1))
    await cache.set("k", "x" * (limit - 2))
    assert len(await cache.get("k")) == limit - 2


async def test_write_through_checks_the_size_before_the_writer_runs(make):
    cache = make(max_value_bytes=64)
    await cache.set("k", "old")
    writes = []

    async def writer(value):
        writes.append(value)

    with (
        commands_sent(cache.redis) as sent,
        pytest.raises(ValueTooLargeError, match="max_value_bytes=64"),
    ):
        await cache.write_through("k", {"blob": "y" * 100}, writer)
    assert writes == []
    assert sent == []
    assert await cache.get("k") == "old"


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_loaded_value_too_large_reaches_the_caller_and_is_not_stored(make, policy):
    cache = make(policy=policy, max_value_bytes=1000)
    huge = {"rows": ["r" * 100] * 20}

    async def loader():
        return huge

    with pytest.raises(ValueTooLargeError, match="max_value_bytes=1,000"):
        await cache.get_or_set("k", loader)
    assert cache.stats.loads == 1
    assert cache.stats.errors == 1
    assert await stored(cache) == traces_of_a_refused_fill(cache, "k")
    # the lock or lease was given back: a value that fits is loaded and stored at once
    assert await cache.lookup("k", loaded) == cachelab.Lookup("loaded", Outcome.LOAD)
    assert await cache.get("k") == "loaded"


@pytest.mark.parametrize("policy", ["local", "distributed", "lease"])
async def test_every_coalesced_caller_gets_the_size_error(make, policy):
    cache = make(policy=policy, max_value_bytes=10)
    release = asyncio.Event()

    async def loader():
        await release.wait()
        return "far too long for ten bytes"

    callers = [asyncio.ensure_future(cache.get_or_set("k", loader)) for _ in range(20)]
    await until(lambda: inside_the_fill(cache) == 20)
    release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, ValueTooLargeError) for r in results), results
    assert cache.stats.loads == 1
    assert await stored(cache) == traces_of_a_refused_fill(cache, "k")


async def test_no_limit_with_none(make):
    cache = make(max_value_bytes=None)
    value = "z" * (2 * 1024 * 1024)
    await cache.set("k", value)
    assert await cache.get("k") == value


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "1M", 2**20 + 0.0])
def test_bad_limits_are_refused(real_redis, namespace, limit):
    with pytest.raises(ConfigurationError, match="max_value_bytes must be a positive int") as info:
        Cache(real_redis, namespace=namespace, ttl=1, max_value_bytes=limit)
    assert "None for no limit" in str(info.value)


# --- constructor arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem", "fix"),
    [
        ({"policy": "distribued"}, "'distribued'", "lock_table"),
        ({"policy": None}, "None", "HerdPolicy instance"),
        ({"serializer": "yaml"}, "'yaml'", "json"),
        ({"serializer": "pickle"}, "off by default", "PickleSerializer(secret_key="),
        ({"ttl": 0}, "got 0", "delete()"),
        ({"namespace": ""}, "got ''", "namespace='users'"),
        ({"ttl_jitter": 1}, "got 1", "±10%"),
    ],
)
def test_bad_cache_options_name_the_problem_and_the_fix(
    real_redis, namespace, options, problem, fix
):
    options = {"namespace": namespace, "ttl": 10, **options}
    with pytest.raises(ConfigurationError) as info:
        Cache(real_redis, **options)
    assert problem in str(info.value)
    assert fix in str(info.value)


# --- corrupt entries: a miss, overwritten, for every herd policy ------------------------------

GARBAGE = {
    "not-an-envelope": b"garbage",
    "empty": b"",
    "binary": b"\xff\xfe\x00\x01",
    "bad-header": b"cl1 d=x x=2\n1",
    "no-newline": b"cl1 d=1 x=2",
    "payload-not-json": b"cl1 d=1 x=9999999999\n{not json",
    "payload-too-deep": b"cl1 d=1 x=9999999999\n" + b"[" * 100_000,
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
async def test_corrupt_entry_is_a_miss_and_is_overwritten(make, policy, garbage):
    cache = make(policy=policy)
    rkey = cache.redis_key("k")
    await cache.redis.set(rkey, garbage, px=60_000)

    assert await cache.get("k", default="MISS") == "MISS"
    assert (cache.stats.corrupt, cache.stats.misses) == (1, 1)

    assert await cache.lookup("k", loaded) == cachelab.Lookup("loaded", Outcome.LOAD)
    assert cache.stats.loads == 1
    assert cache.stats.errors == 0
    assert (await cache.entry("k")).value == "loaded"  # overwritten
    corrupt_seen = cache.stats.corrupt
    assert await cache.get("k") == "loaded"
    assert cache.stats.corrupt == corrupt_seen  # the new entry reads clean


@pytest.mark.parametrize("policy", POLICIES)
async def test_a_herd_on_a_corrupt_entry_loads_once_per_policy(make, policy):
    cache = make(policy=policy)
    await cache.redis.set(cache.redis_key("k"), b"cl1 d=1 x=9999999999\n{not json", px=60_000)
    release = asyncio.Event()

    async def loader():
        await release.wait()
        return "fixed"

    callers = [asyncio.ensure_future(cache.get_or_set("k", loader)) for _ in range(20)]
    await until(lambda: inside_the_fill(cache) == 20)  # every caller saw the corrupt entry
    release.set()
    assert await asyncio.gather(*callers) == ["fixed"] * 20
    assert cache.stats.loads == (20 if policy == "none" else 1)
    assert await cache.get("k") == "fixed"


@pytest.mark.parametrize("make_policy", [Distributed, Lease], ids=["distributed", "lease"])
async def test_two_processes_on_a_corrupt_entry_load_it_once(real_redis, namespace, make_policy):
    """Two caches with their own policies stand for two processes: the first claims the key in
    spite of the corrupt bytes, the second waits for its fill instead of loading too."""
    first, second = (
        Cache(real_redis, namespace=namespace, ttl=60, policy=make_policy()) for _ in range(2)
    )
    await real_redis.set(first.redis_key("k"), b"not an entry", px=60_000)
    release = asyncio.Event()

    async def loader():
        await release.wait()
        return "fixed"

    leader = asyncio.ensure_future(first.lookup("k", loader))
    await until(lambda: first.stats.loads == 1)
    follower = asyncio.ensure_future(second.lookup("k", loader))
    await until(lambda: second.stats.corrupt >= 1)  # its read saw the bytes ...
    await until(lambda: second.policy.statistics().callers == 1)  # ... and it waits in its load
    assert not follower.done()  # waiting for the holder, not loading, not failing
    assert second.stats.loads == 0
    release.set()
    assert await leader == cachelab.Lookup("fixed", Outcome.LOAD)
    assert (await follower).value == "fixed"
    assert (await follower).outcome in (Outcome.SHARED, Outcome.HIT)
    assert (first.stats.loads, second.stats.loads) == (1, 0)
    assert second.stats.corrupt >= 1


# --- a shared server: namespaced keys only, SCAN never KEYS -----------------------------------

FORBIDDEN_METHODS = {"flushdb", "flushall"}
FORBIDDEN_COMMANDS = {"KEYS", "FLUSHDB", "FLUSHALL"}
CLIENT_NAMES = ("redis", "client", "conn", "pipe")
LUA_CALL = re.compile(r"redis\.p?call\(\s*['\"](keys|flushdb|flushall)['\"]", re.IGNORECASE)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _looks_like_a_client(expr: ast.expr) -> bool:
    name = ast.unparse(expr).lower()
    return name.rsplit(".", 1)[-1] == "r" or any(part in name for part in CLIENT_NAMES)


def keyspace_wide_commands(source: str) -> list[str]:
    """Calls in ``source`` that would read or wipe the whole keyspace: ``<client>.keys(...)``,
    ``.flushdb()``/``.flushall()``, ``execute_command("KEYS", ...)`` and the same from Lua."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr.lower()
            first = node.args[0] if node.args else None
            command = first.value if isinstance(first, ast.Constant) else None
            if (
                method in FORBIDDEN_METHODS
                or (method == "keys" and _looks_like_a_client(node.func.value))
                or (method == "execute_command" and str(command).upper() in FORBIDDEN_COMMANDS)
            ):
                found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        ):
            found.extend(match.group(0) for match in LUA_CALL.finditer(node.value))
    return found


@pytest.mark.parametrize(
    "source",
    [
        "await redis.keys('ns:*')",
        "await self.redis.keys()",
        "await r.keys('*')",
        "await client.flushdb()",
        "await r.flushall(asynchronous=True)",
        "await r.execute_command('KEYS', 'ns:*')",
        "await r.execute_command('FLUSHDB')",
        "SCRIPT = \"local ks = redis.call('keys', ARGV[1])\"",
    ],
)
def test_the_keyspace_check_catches_each_form(source):
    assert keyspace_wide_commands(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "d = {}.keys()",
        "for k in self._entries.keys(): pass",
        "async for k in cache.keys(): pass",
        "batch = list(self.invalidator.keys(self))",
        "row = {'keys': keys, 'KEYS': 1}",
        "await r.execute_command('SCAN', 0, 'MATCH', 'ns:*')",
        'def f():\n    """SCAN + UNLINK, never KEYS or FLUSHDB."""',
        "await redis.scan_iter(match='ns:*')",
    ],
)
def test_the_keyspace_check_lets_harmless_code_pass(source):
    assert keyspace_wide_commands(source) == []


def test_the_package_never_lists_or_wipes_the_whole_keyspace():
    """Parsed in a fresh interpreter: CPython 3.11.7's ast module can report a false "AST
    constructor recursion depth mismatch" (a SystemError) in a process where deep recursion has
    run before, as this file's too-deep JSON payloads make it run."""
    script = (
        "import json, pathlib, sys; sys.path.insert(0, sys.argv[1]); "
        "from test_bad_input import PACKAGE, keyspace_wide_commands; "
        "sources = sorted(PACKAGE.rglob('*.py')); "
        "print(json.dumps([len(sources), {str(p.relative_to(PACKAGE)): f for p in sources "
        "if (f := keyspace_wide_commands(p.read_text()))}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    count, offenders = json.loads(done.stdout.strip().splitlines()[-1])
    assert count > 10  # the package, not an empty glob
    assert offenders == {}


async def test_clear_leaves_lookalike_namespaces_alone(real_redis, namespace):
    """``ns*x``'s clear must not touch ``ns`` (a glob prefix of it), ``nsAx`` (what ``*`` would
    match unescaped), ``ns*x2`` (a longer name) or keys that are not cache entries."""
    mine = Cache(real_redis, namespace=namespace + "*x", ttl=60, policy="distributed")
    neighbours = [
        Cache(real_redis, namespace=namespace + suffix, ttl=60) for suffix in ("", "Ax", "*x2")
    ]
    await mine.set("k", 1)
    await mine.get_or_set("loaded", loaded)  # also creates helper keys (:fence)
    for i, cache in enumerate(neighbours):
        await cache.set("k", i)
    bare = [namespace + "*x", namespace + "*x:other", namespace + "*x{k}"]
    for key in bare:
        await real_redis.set(key, b"not a cache entry", px=60_000)
    everything = glob_escape(namespace) + "*"
    before = await scan_keys(real_redis, everything)
    mine_before = {k for k in before if k.startswith(mine.keyspace.prefix.encode())}
    assert len(mine_before) >= 3  # two values and at least one helper key

    with commands_sent(real_redis) as sent:
        assert await mine.clear() == 2
    assert set(sent) <= {"SCAN", "UNLINK"}
    assert "SCAN" in sent

    assert await scan_keys(real_redis, everything) == before - mine_before
    for i, cache in enumerate(neighbours):
        assert await cache.get("k") == i
    # and the other way round: clearing the prefix namespace leaves ours
    await mine.set("k", 1)
    assert await neighbours[0].clear() == 1
    assert await mine.get("k") == 1
