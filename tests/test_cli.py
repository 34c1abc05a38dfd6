"""The cachelab command, run in-process with Typer's CliRunner against the real Redis.

With Click >= 8.2, ``result.stdout`` and ``result.stderr`` are separate and ``result.output`` is
both, interleaved as a terminal would show them.
"""

from __future__ import annotations

import asyncio
import csv
import json
import re
import uuid

import pytest
from helpers import REAL_URL, free_port
from typer.testing import CliRunner

import cachelab
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
        (["--clients", "0"], "positive"),
        (["--instances", "0"], "at least 1"),
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
