"""Streams helpers and the ``cachelab stream`` commands, against the real server.

Every stream lives under this test's namespace; the conftest fixture removes it (and the
``<stream>:cachelab:last-read:<reader>`` cursors, which share the prefix) afterwards.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from helpers import REAL_URL
from test_cli import error_lines, run

import cachelab
from cachelab import ConfigurationError, streams
from cachelab.errors import StreamError
from cachelab.streams import StreamConsumer

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


@pytest.fixture
def stream(namespace) -> str:
    return f"{namespace}:events"


async def fill(redis, stream: str, n: int, start: int = 0) -> list[str]:
    return [await streams.add(redis, stream, {"n": str(i)}) for i in range(start, start + n)]


def id_key(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def numbers(entries) -> list[str]:
    return [e.fields["n"] for e in entries]


# --- add, trim ----------------------------------------------------------------------------------


async def test_add_returns_increasing_ids_and_keeps_the_fields(real_redis, stream):
    first = await streams.add(real_redis, stream, {"event": "created", "user": "7"})
    second = await streams.add(real_redis, stream, {"event": "deleted"})
    assert id_key(first) < id_key(second)
    raw = await real_redis.xrange(stream)
    assert [entry_id.decode() for entry_id, _ in raw] == [first, second]
    assert raw[0][1] == {b"event": b"created", b"user": b"7"}


async def test_add_with_maxlen_trims_to_about_that_many(real_redis, stream):
    for i in range(500):
        await streams.add(real_redis, stream, {"n": str(i)}, maxlen=10)
    length = await real_redis.xlen(stream)
    assert 10 <= length < 500  # "about": whole nodes go, so a few more may stay


async def test_add_needs_a_field_and_a_name(real_redis, stream):
    with pytest.raises(ConfigurationError, match="at least one field"):
        await streams.add(real_redis, stream, {})
    with pytest.raises(ConfigurationError, match="stream"):
        await streams.add(real_redis, "", {"a": "b"})
    assert await real_redis.exists(stream) == 0


async def test_trim_exactly_and_report_how_many_went(real_redis, stream):
    ids = await fill(real_redis, stream, 10)
    assert await streams.trim(real_redis, stream, 3) == 7
    raw = await real_redis.xrange(stream)
    assert [entry_id.decode() for entry_id, _ in raw] == ids[-3:]  # the newest stay
    assert await streams.trim(real_redis, stream, 3) == 0
    assert await streams.trim(real_redis, stream, 0) == 3
    assert await real_redis.xlen(stream) == 0


async def test_trim_errors(real_redis, stream):
    with pytest.raises(StreamError, match="does not exist"):
        await streams.trim(real_redis, stream, 3)
    await fill(real_redis, stream, 1)
    for bad in (-1, 1.5, "3"):
        with pytest.raises(ConfigurationError, match="maxlen"):
            await streams.trim(real_redis, stream, bad)


# --- read_from_last -----------------------------------------------------------------------------


async def test_read_from_last_resumes_after_what_the_last_call_returned(real_redis, stream):
    await fill(real_redis, stream, 3)
    assert numbers(await streams.read_from_last(real_redis, stream)) == ["0", "1", "2"]
    assert await streams.read_from_last(real_redis, stream) == []
    await fill(real_redis, stream, 2, start=3)
    assert numbers(await streams.read_from_last(real_redis, stream)) == ["3", "4"]
    assert await streams.read_from_last(real_redis, stream) == []


async def test_read_from_last_respects_count(real_redis, stream):
    await fill(real_redis, stream, 5)
    assert numbers(await streams.read_from_last(real_redis, stream, count=2)) == ["0", "1"]
    assert numbers(await streams.read_from_last(real_redis, stream, count=2)) == ["2", "3"]
    assert numbers(await streams.read_from_last(real_redis, stream, count=2)) == ["4"]


async def test_the_position_is_kept_in_redis_for_any_client(real_redis, stream):
    await fill(real_redis, stream, 2)
    assert numbers(await streams.read_from_last(real_redis, stream)) == ["0", "1"]
    await fill(real_redis, stream, 1, start=2)
    other = await cachelab.connect(REAL_URL, quiet=True)  # another process, in effect
    try:
        assert numbers(await streams.read_from_last(other, stream)) == ["2"]
    finally:
        await other.aclose()
    assert await streams.read_from_last(real_redis, stream) == []
    cursor = await real_redis.get(f"{stream}:cachelab:last-read:cli")
    assert cursor is not None


async def test_readers_have_their_own_positions(real_redis, stream):
    await fill(real_redis, stream, 3)
    assert len(await streams.read_from_last(real_redis, stream, reader="a")) == 3
    assert len(await streams.read_from_last(real_redis, stream, reader="b", count=1)) == 1
    assert numbers(await streams.read_from_last(real_redis, stream, reader="b")) == ["1", "2"]
    assert await streams.read_from_last(real_redis, stream, reader="a") == []


async def test_resume_false_reads_from_the_start_without_moving_the_position(real_redis, stream):
    await fill(real_redis, stream, 3)
    assert numbers(await streams.read_from_last(real_redis, stream, count=1)) == ["0"]
    everything = await streams.read_from_last(real_redis, stream, resume=False)
    assert numbers(everything) == ["0", "1", "2"]
    assert numbers(await streams.read_from_last(real_redis, stream)) == ["1", "2"]


async def test_read_from_last_a_missing_stream_says_how_to_fix_it(real_redis, stream):
    with pytest.raises(StreamError) as caught:
        await streams.read_from_last(real_redis, stream)
    assert "does not exist" in str(caught.value)
    assert f"cachelab stream add {stream}" in str(caught.value)
    assert await real_redis.exists(f"{stream}:cachelab:last-read:cli") == 0


async def test_read_from_last_a_key_of_another_type(real_redis, stream):
    await real_redis.set(stream, "plain string")
    with pytest.raises(StreamError, match="holds a string, not a stream"):
        await streams.read_from_last(real_redis, stream)


# --- consumer groups ----------------------------------------------------------------------------


async def test_create_group_is_idempotent(real_redis, stream):
    worker = StreamConsumer(real_redis, stream, "g", "c1")
    assert await worker.create_group() is True  # MKSTREAM: the stream need not exist
    assert await worker.create_group() is False
    assert await real_redis.type(stream) == b"stream"
    groups = await real_redis.xinfo_groups(stream)
    assert [g["name"] for g in groups] == [b"g"]


async def test_read_pending_ack(real_redis, stream):
    worker = StreamConsumer(real_redis, stream, "g", "c1")
    await worker.create_group()
    ids = await fill(real_redis, stream, 3)
    got = await worker.read()
    assert [e.id for e in got] == ids
    assert await worker.read() == []  # ">" only delivers each entry once
    assert [e.id for e in await worker.pending()] == ids  # "0": delivered, not acknowledged
    assert [e.id for e in await worker.pending()] == ids  # until acked, every time
    assert await worker.ack(ids[:2]) == 2
    assert [e.id for e in await worker.pending()] == ids[2:]
    assert await worker.ack(ids[:2]) == 0  # no longer pending
    assert await worker.ack([]) == 0
    assert await worker.ack(ids[2:]) == 1
    assert await worker.pending() == []
    assert await worker.pending_summary() == []


async def test_pending_summary_shows_consumer_idle_time_and_deliveries(real_redis, stream):
    worker = StreamConsumer(real_redis, stream, "g", "c1")
    await worker.create_group()
    ids = await fill(real_redis, stream, 2)
    await worker.read(count=1)
    summary = await worker.pending_summary()
    assert [row["id"] for row in summary] == ids[:1]
    assert summary[0]["consumer"] == "c1"
    assert summary[0]["deliveries"] == 1
    assert summary[0]["idle_ms"] >= 0


async def test_claim_idle_lets_another_consumer_take_over(real_redis, stream):
    c1 = StreamConsumer(real_redis, stream, "g", "c1")
    c2 = StreamConsumer(real_redis, stream, "g", "c2")
    await c1.create_group()
    ids = await fill(real_redis, stream, 2)
    assert len(await c1.read()) == 2  # ... and c1 dies before acknowledging
    assert await c2.claim_idle(min_idle_ms=60_000) == []  # not idle long enough yet
    await asyncio.sleep(0.05)
    claimed = await c2.claim_idle(min_idle_ms=20)
    assert [e.id for e in claimed] == ids
    assert numbers(claimed) == ["0", "1"]
    summary = await c2.pending_summary()
    assert {row["consumer"] for row in summary} == {"c2"}
    assert [row["deliveries"] for row in summary] == [2, 2]
    assert await c1.pending() == []
    assert [e.id for e in await c2.pending()] == ids
    assert await c2.ack(ids) == 2


async def test_a_missing_group_says_how_to_create_it(real_redis, stream):
    worker = StreamConsumer(real_redis, stream, "nogroup", "c1")
    for call in (worker.read(), worker.pending(), worker.pending_summary()):
        with pytest.raises(StreamError, match="--create-group"):
            await call
    await fill(real_redis, stream, 1)  # the stream exists, the group still does not
    with pytest.raises(StreamError) as caught:
        await worker.read()
    assert "'nogroup'" in str(caught.value)


@pytest.mark.parametrize("names", [("", "g", "c"), ("s", "", "c"), ("s", "g", ""), ("s", 1, "c")])
def test_consumer_names_must_be_given(fake_redis, names):
    with pytest.raises(ConfigurationError, match="non-empty"):
        StreamConsumer(fake_redis, *names)


# --- the CLI ------------------------------------------------------------------------------------


def cli(*args: str):
    return run("stream", *args, "--url", REAL_URL)


def printed_ids(result) -> list[str]:
    return [line.split()[0] for line in result.clean_stdout.splitlines() if line.strip()]


async def _remove(prefix: str) -> None:
    client = await cachelab.connect(REAL_URL, quiet=True)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def cli_stream():
    """A stream name for CLI runs (each runs its own event loop, so this fixture is sync)."""
    name = f"cachelab-test:cli-stream:{uuid.uuid4().hex}"
    yield name
    asyncio.run(_remove(name))


def test_cli_add_trim_and_read_from_last(cli_stream):
    ids = []
    for i in range(4):
        result = cli("add", cli_stream, f"n={i}", "event=created")
        assert result.exit_code == 0, result.output
        ids.append(result.clean_stdout.strip())
    assert all("-" in entry_id for entry_id in ids)

    result = cli("read", cli_stream, "--from-last", "--count", "3")
    assert result.exit_code == 0, result.output
    assert printed_ids(result) == ids[:3]
    assert "n=0 event=created" in result.clean_stdout

    result = cli("read", cli_stream, "--from-last")  # resumes where the last call stopped
    assert result.exit_code == 0, result.output
    assert printed_ids(result) == ids[3:]

    result = cli("read", cli_stream, "--from-last")
    assert result.exit_code == 0, result.output
    assert printed_ids(result) == []
    assert "no entries" in result.clean_stderr

    result = cli("read", cli_stream)  # without --from-last: everything, position untouched
    assert printed_ids(result) == ids

    result = cli("trim", cli_stream, "--maxlen", "1")
    assert result.exit_code == 0, result.output
    assert "removed 3 entries" in result.clean_stdout
    assert printed_ids(cli("read", cli_stream)) == ids[3:]


def test_cli_consume_with_a_group_pending_and_claim(cli_stream):
    for i in range(3):
        assert cli("add", cli_stream, f"n={i}").exit_code == 0
    consume = ("consume", cli_stream, "--group", "workers")

    result = cli(*consume, "--consumer", "c1", "--create-group", "--no-ack", "--count", "2")
    assert result.exit_code == 0, result.output
    assert "created group 'workers'" in result.clean_stderr
    first = printed_ids(result)
    assert len(first) == 2
    assert "acknowledged" not in result.clean_stderr

    result = cli(*consume, "--consumer", "c1", "--pending", "--no-ack")
    assert result.exit_code == 0, result.output
    assert printed_ids(result) == first  # still pending: nothing was acknowledged

    result = cli(*consume, "--consumer", "c2", "--claim-idle-ms", "0")
    assert result.exit_code == 0, result.output
    assert printed_ids(result) == first  # c2 takes over c1's entries, and acknowledges them
    assert "acknowledged 2" in result.clean_stderr

    result = cli(*consume, "--consumer", "c1", "--pending")
    assert printed_ids(result) == []

    result = cli(*consume, "--consumer", "c1", "--create-group")  # exists: no "created"
    assert result.exit_code == 0, result.output
    assert "created group" not in result.clean_stderr
    assert len(printed_ids(result)) == 1  # the third entry, new to the group
    assert "acknowledged 1" in result.clean_stderr

    result = cli(*consume, "--consumer", "c1")
    assert printed_ids(result) == []
    assert "no entries" in result.clean_stderr


def one_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_errors_are_one_line(cli_stream):
    line = one_error(cli("read", cli_stream, "--from-last"))
    assert "does not exist" in line and "cachelab stream add" in line
    line = one_error(cli("trim", cli_stream, "--maxlen", "1"))
    assert "does not exist" in line
    line = one_error(cli("add", cli_stream, "novalue"))
    assert "'novalue' is not field=value" in line
    line = one_error(cli("add", cli_stream, "=value"))
    assert "field=value" in line
    line = one_error(cli("consume", cli_stream, "--group", "nogroup", "--consumer", "c1"))
    assert "--create-group" in line

    assert cli("add", cli_stream, "a=1").exit_code == 0
    line = one_error(cli("consume", cli_stream, "--group", "nogroup", "--consumer", "c1"))
    assert "'nogroup'" in line and "--create-group" in line
    line = one_error(cli("trim", cli_stream, "--maxlen", "-1"))
    assert "maxlen" in line
