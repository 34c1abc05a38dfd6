"""Fuzz: random keys, values, TTLs and URLs thrown at the CLI, at connect() and at a Cache.

Whatever comes in, what comes out is an answer or one error line: never a traceback, never a
raw control character on the terminal, and never the password of a URL. The bulk runs the CLI
in-process (Typer's CliRunner); a few examples go through the real command in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import traceback
import uuid

import pytest
from helpers import REAL_URL, free_port, glob_escape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cachelab
from cachelab import CachelabError, cli

pytestmark = pytest.mark.redis

SECRET = "fz" + secrets.token_hex(6)
"""A password no output could contain by chance."""
PREFIX = f"cachelab-test:fuzz:{uuid.uuid4().hex}:"
DEAD_PORT = free_port()
REAL_PORT = int(REAL_URL.rsplit(":", 1)[1])
FUZZ = settings(
    deadline=None, max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# --- what to throw ----------------------------------------------------------------------------

NASTY = [
    "[bold]", "[/x]", "[/]", ":thumbs_up:", "\x1b[2J", "\x1b]0;t\x07", "\r", "\n", "\x00",
    "\u202e", "\u2028", "%s", "{}", "\\", "'", '"', "é", "🙂",
]  # fmt: skip
pieces = st.text(max_size=6) | st.sampled_from(NASTY)
texts = st.lists(pieces, max_size=5).map("".join)
surrogates = st.sampled_from(["\udcff", "k\udce9y", "\ud800"])

ttls = st.one_of(
    st.sampled_from(
        ["nan", "inf", "-inf", "0", "-1", "1e-9", "0.0005", "0.001", "1e300", "abc", ""]
    ),
    st.floats(min_value=-10, max_value=1e12, allow_nan=False).map(repr),
)

password_chars = st.sampled_from(["", "@", ":", "/", "?", "#", "%", "%40", "[", "]", " ", "&"])
passwords = st.tuples(password_chars, password_chars).map(lambda p: p[0] + SECRET + p[1])
users = st.sampled_from(["", "default", "user", "us:er", "u@"])
hosts = st.sampled_from(["127.0.0.1", "localhost", "[::1]", "", "h st", "::"])
ports = st.sampled_from([str(DEAD_PORT), str(REAL_PORT), "abc", "99999", "-1", ""])
paths = st.sampled_from(["", "/", "/0", "/abc", "/-1", "/0/1", "/%31"])
queries = st.sampled_from(
    ["", "?db=x", f"?password={SECRET}", "?socket_timeout=abc", "?ssl_cert_reqs=none"]
)
schemes = st.sampled_from(
    ["redis", "rediss", "unix", "http", "redis+cluster", "REDIS", "fakeredis"]
)


@st.composite
def urls(draw) -> str:
    scheme = draw(schemes)
    if scheme == "fakeredis":
        return f"{scheme}://"
    userinfo = f"{draw(users)}:{draw(passwords)}@"
    port = draw(ports)
    if scheme.startswith("rediss") and port == str(REAL_PORT):
        port = str(DEAD_PORT)  # a TLS handshake with a plain server only ends at its timeout
    netloc = f"{userinfo}{draw(hosts)}" + (f":{port}" if port else "")
    return f"{scheme}://{netloc}{draw(paths)}{draw(queries)}"


# --- what must hold ----------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(cli.app, list(args), env={"REDIS_URL": None})


def assert_clean(result) -> None:
    """An answer or one error line; no traceback, no raw control character, no secret."""
    output = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        shown = "".join(traceback.format_exception(result.exception))
        raise AssertionError(f"{result.exception!r} escaped the CLI:\n{shown}")
    assert result.exit_code in (0, 1, 2), output
    assert "Traceback" not in output
    assert SECRET not in output
    raw = [ch for ch in output if ch != "\n" and (ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0)]
    assert raw == [], f"raw control characters reached the terminal: {output!r}"
    assert "\u202e" not in output
    if result.exit_code:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr


@pytest.fixture(scope="module", autouse=True)
def no_keys_left():
    yield

    async def clean():
        client = await cachelab.connect(REAL_URL, quiet=True)
        try:
            keys = [k async for k in client.scan_iter(match=glob_escape(PREFIX) + "*")]
            if keys:
                await client.unlink(*keys)
        finally:
            await client.aclose()

    asyncio.run(clean())


async def stored(key: str) -> tuple[bytes | None, int]:
    client = await cachelab.connect(REAL_URL, quiet=True)
    try:
        return await client.get(key), await client.pttl(key)
    finally:
        await client.aclose()


# --- the CLI -------------------------------------------------------------------------------------


@FUZZ
@given(key=texts, value=texts, ttl=ttls)
def test_set_then_get_answers_or_refuses_in_one_line(key, value, ttl):
    key = f"{PREFIX}{uuid.uuid4().hex}:{key}" if key else ""  # a key of this example alone
    result = invoke("set", "--ttl", ttl, "--url", REAL_URL, "--", key, value)  # '--': '-k' is data
    assert_clean(result)
    if result.exit_code:
        assert key == "" or asyncio.run(stored(key))[0] is None  # refused: nothing written
        return
    reported = float(result.stdout.split("expires in ")[1].split(" s")[0])
    assert reported * 1000 == round(float(ttl) * 1000)  # what it says is what it stores
    if reported < 10:
        return  # it may be gone already: nothing left to read back
    value_stored, ms = asyncio.run(stored(key))
    assert value_stored == value.encode()
    assert 0 < ms <= reported * 1000

    got = invoke("get", "--url", REAL_URL, "--", key)
    assert_clean(got)
    assert got.exit_code == 0
    assert got.stdout == cli.visible(value) + "\n"
    assert_clean(invoke("delete", "--url", REAL_URL, "--", key))


@FUZZ
@given(key=texts | surrogates, namespace=texts | surrogates)
def test_namespace_reads_of_anything_answer_or_refuse(key, namespace):
    result = invoke("get", "--namespace", PREFIX + namespace, "--url", REAL_URL, "--", key)
    assert_clean(result)
    assert result.exit_code in (1, 2)  # nothing is cached there


@FUZZ
@given(url=urls())
def test_any_url_is_answered_or_refused_without_its_password(url):
    assert_clean(invoke("ping", "--url", url))


@settings(deadline=None, max_examples=2)
@given(value=texts.filter(lambda v: "\x00" not in v))  # no argv can hold a NUL
def test_the_real_command_prints_any_value_as_data(value):
    key = PREFIX + uuid.uuid4().hex
    environment = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cachelab.cli", args[0], "--url", REAL_URL, *args[1:]],
            capture_output=True, timeout=60, env=environment, check=False,
        )  # fmt: skip

    assert run("set", "--", key, value).returncode == 0
    done = run("get", "--", key)
    out = done.stdout.decode()
    assert done.returncode == 0
    assert out == cli.visible(value) + "\n"
    assert not [ch for ch in out[:-1] if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0]
    assert b"Traceback" not in done.stderr


# --- connect() and a Cache ----------------------------------------------------------------------


def assert_error_is_clean(error: BaseException) -> None:
    assert isinstance(error, CachelabError), f"{error!r} is not a cachelab error"
    seen = [error, error.__cause__, error.__context__]
    for link in filter(None, seen):
        assert SECRET not in str(link) and SECRET not in repr(link)
        assert SECRET not in "".join(traceback.format_exception(link, chain=False))


@FUZZ
@given(url=urls())
def test_connect_answers_or_raises_a_cachelab_error_without_the_password(url, caplog):
    async def attempt() -> None:
        client = await cachelab.connect(url, quiet=True, connect_timeout=0.5)
        await client.aclose()

    try:
        asyncio.run(attempt())
    except Exception as exc:
        assert_error_is_clean(exc)
    assert SECRET not in caplog.text


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
) | st.sampled_from([b"bytes", {1, 2}, object(), (1, 2)])
api_ttls = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e-9, 1e300, True, "10", None]),
    st.floats(min_value=0.0005, max_value=20 * 365 * 86_400),
)


@FUZZ
@given(key=texts | surrogates, value=values, ttl=api_ttls)
def test_a_cache_stores_what_it_can_and_refuses_the_rest(key, value, ttl):
    """Any key (lone surrogates too), any value, any TTL (beyond ten years too): stored and read
    back as JSON keeps it, or refused with a cachelab error that names the problem."""

    async def attempt():
        redis = await cachelab.connect("fakeredis://", quiet=True)
        cache = cachelab.Cache(redis, namespace="fuzz", ttl=60)
        try:
            try:
                await cache.set(key, value, ttl=ttl)
            except CachelabError as exc:
                return exc
            return await cache.get(key)
        finally:
            with contextlib.suppress(CachelabError):
                await cache.delete(key)
            await redis.aclose()

    result = asyncio.run(attempt())
    if isinstance(result, CachelabError):
        assert str(result)  # a message that names the problem
        return
    if ttl is not None and ttl < 10:
        return  # stored, but it may have expired before the read
    assert result == json.loads(json.dumps(value))  # what JSON keeps of the value
