"""The hit-path experiment: its frame, the turns its contenders take, what it counts, when it
leaves redis-benchmark out and why, what it refuses, and that it leaves no key behind.

Counts and shapes only: no test here asserts a rate.
"""

from __future__ import annotations

import asyncio
import math

import pandas as pd
import pytest
import redis.asyncio as aioredis
from helpers import REAL_URL, scan_keys

import cachelab
from cachelab import Cache, ConfigurationError, ExperimentError
from cachelab.experiments import HIT_PATH_COLUMNS, hitpath, measure_hit_path
from cachelab.experiments.hitpath import (
    BATCHING_OFF,
    BATCHING_ON,
    CONTENDERS,
    RAW,
    REDIS_BENCHMARK,
    count_mgets,
    redis_benchmark_skip_reason,
    redis_usec_per_call,
    summarize_hit_path,
)

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis(namespace):
    client = await cachelab.connect(REAL_URL, quiet=True)
    yield client
    await client.aclose()


@pytest.fixture
def launched(monkeypatch):
    """The argument lists of every process the experiment starts (they still run)."""
    seen: list[list[str]] = []
    start = asyncio.create_subprocess_exec

    async def recorded(*args, **options):
        seen.append([str(a) for a in args])
        return await start(*args, **options)

    monkeypatch.setattr(hitpath.asyncio, "create_subprocess_exec", recorded)
    return seen


def rotated(names: list[str], by: int) -> list[str]:
    return names[by % len(names) :] + names[: by % len(names)]


async def test_one_row_per_contender_concurrency_and_round_in_rotating_turns(
    redis, namespace, launched
):
    if redis_benchmark_skip_reason(redis, hitpath.shutil.which("redis-benchmark")):
        pytest.skip("this test runs redis-benchmark: it needs the binary and a plain TCP server")
    frame = await measure_hit_path(
        redis, concurrency=[3, 1], reads=60, rounds=3, namespace=namespace
    )
    assert list(frame.columns) == HIT_PATH_COLUMNS
    assert len(frame) == 4 * 2 * 3
    assert frame.attrs["skipped"] == {}
    assert (frame.attrs["keys"], frame.attrs["pool_size"]) == (200, 64)
    benchmark = frame["contender"] == REDIS_BENCHMARK
    assert set(frame.loc[~benchmark, "reads"]) == {60}
    assert set(frame.loc[benchmark, "reads"]) == {hitpath.REDIS_BENCHMARK_READS}  # timed in ms
    for (round_, _level), rows in frame.groupby(["round", "concurrency"]):
        assert list(rows.sort_values("position")["contender"]) == rotated(list(CONTENDERS), round_)
    assert list(frame["concurrency"].drop_duplicates()) == [1, 3]  # ascending
    assert (frame["seconds"] > 0).all()
    assert frame["reads_per_s"].to_numpy() == pytest.approx(frame["reads"] / frame["seconds"])
    python = frame[frame["contender"] != REDIS_BENCHMARK]
    assert python["cpu_s"].notna().all() and (python["cpu_s"] >= 0).all()
    assert frame.loc[frame["contender"] == REDIS_BENCHMARK, "cpu_s"].isna().all()
    # one redis-benchmark per concurrency and round, with the concurrency, the reads and our keys
    assert len(launched) == 2 * 3
    for args in launched:
        assert args[args.index("-n") + 1] == "10000" and args[args.index("-r") + 1] == "200"
        assert args[-2:] == ["GET", f"{namespace}:raw:__rand_int__"]
        assert "-a" not in args and "--user" not in args and "--pass" not in args
    assert sorted(int(a[a.index("-c") + 1]) for a in launched) == [1, 1, 1, 3, 3, 3]


async def test_what_each_contender_sends_per_read(redis, namespace):
    frame = await measure_hit_path(
        redis, concurrency=[1, 3, 10], reads=90, rounds=2, redis_benchmark=False,
        namespace=namespace,
    )  # fmt: skip
    sent = frame.groupby(["contender", "concurrency"])[["reads", "commands", "batches"]].sum()
    for level in (1, 3, 10):
        assert sent.loc[(RAW, level), "commands"] == 180  # one GET per read
        assert sent.loc[(BATCHING_OFF, level), "commands"] == 180  # one MGET per read
        assert sent.loc[(BATCHING_OFF, level), "batches"] == 0
    assert sent.loc[(BATCHING_ON, 1), "commands"] == 180  # a lone read goes at once
    assert sent.loc[(BATCHING_ON, 1), "batches"] == 0
    for level in (3, 10):  # the first tick's reads after the first leave together
        assert sent.loc[(BATCHING_ON, level), "commands"] < 180
        assert sent.loc[(BATCHING_ON, level), "batches"] >= 2
    summary = summarize_hit_path(frame)
    on = summary[summary["contender"] == BATCHING_ON].set_index("concurrency")
    assert on.loc[1, "reads_per_command"] == 1.0
    assert on.loc[10, "reads_per_command"] > 1.0


async def test_without_redis_benchmark_three_contenders_take_turns(redis, namespace, monkeypatch):
    monkeypatch.setattr(hitpath.shutil, "which", lambda name: None)
    frame = await measure_hit_path(redis, concurrency=[2], reads=20, rounds=4, namespace=namespace)
    assert frame.attrs["skipped"] == {
        REDIS_BENCHMARK: "redis-benchmark was not found on the PATH (it comes with the "
        "redis-tools package)"
    }
    assert REDIS_BENCHMARK not in set(frame["contender"]) and len(frame) == 3 * 4
    names = [RAW, BATCHING_OFF, BATCHING_ON]
    for round_, rows in frame.groupby("round"):
        assert list(rows.sort_values("position")["contender"]) == rotated(names, round_)


async def test_redis_benchmark_false_is_a_reason_too(redis, namespace, launched):
    frame = await measure_hit_path(
        redis, concurrency=[1], reads=10, rounds=1, redis_benchmark=False, namespace=namespace
    )
    assert frame.attrs["skipped"] == {
        REDIS_BENCHMARK: "it was not asked for (redis_benchmark=False)"
    }
    assert launched == []


async def test_the_keys_are_removed_and_the_caller_client_left_open(redis, namespace):
    await measure_hit_path(
        redis, concurrency=[1, 5], reads=20, rounds=1, keys=7, redis_benchmark=False,
        namespace=namespace,
    )  # fmt: skip
    assert await scan_keys(redis, f"{namespace}*") == set()
    assert await redis.ping()  # the caller's client is the caller's to close
    assert "mget" not in vars(redis)


async def test_a_failed_run_still_removes_its_keys(redis, namespace, monkeypatch):
    if redis_benchmark_skip_reason(redis, hitpath.shutil.which("redis-benchmark")):
        pytest.skip("this test runs redis-benchmark: it needs the binary and a plain TCP server")
    monkeypatch.setattr(hitpath, "_rps", lambda output: None)  # as if it printed no GET line
    with pytest.raises(
        ExperimentError, match="redis-benchmark exited with code 0 and no usable GET rate"
    ):
        await measure_hit_path(redis, concurrency=[1], reads=10, rounds=1, namespace=namespace)
    assert await scan_keys(redis, f"{namespace}*") == set()


async def test_a_missing_warm_key_is_an_experiment_error_not_a_load(redis, namespace, monkeypatch):
    written = hitpath._warm

    async def then_lost(client, cache, raw_keys, cache_keys):
        await written(client, cache, raw_keys, cache_keys)
        await cache.delete(cache_keys[0])

    monkeypatch.setattr(hitpath, "_warm", then_lost)
    with pytest.raises(ExperimentError, match="measures hits only"):
        await measure_hit_path(
            redis, concurrency=[1], reads=10, rounds=1, redis_benchmark=False, namespace=namespace
        )
    assert await scan_keys(redis, f"{namespace}*") == set()


# --- when redis-benchmark is left out, and why --------------------------------------------------


def test_the_skip_reasons_are_one_sentence_each():
    binary = "/usr/bin/redis-benchmark"
    unix = aioredis.Redis(unix_socket_path="/tmp/nowhere.sock")
    tls = aioredis.Redis(host="127.0.0.1", port=6380, ssl=True)
    secret = aioredis.Redis(host="127.0.0.1", port=6379, password="s3cret-pw")
    user = aioredis.Redis(host="127.0.0.1", port=6379, username="reader")
    plain = aioredis.Redis(host="127.0.0.1", port=6379)
    assert redis_benchmark_skip_reason(plain, None).startswith("redis-benchmark was not found")
    for client in (unix, tls):
        assert "plain TCP port" in redis_benchmark_skip_reason(client, binary)
    for client in (secret, user):
        reason = redis_benchmark_skip_reason(client, binary)
        assert reason.startswith("the server needs a password") and "s3cret" not in reason
    assert redis_benchmark_skip_reason(plain, binary) is None
    for client in (unix, tls, secret, user, plain):
        reason = redis_benchmark_skip_reason(client, None)
        assert "\n" not in reason and ". " not in reason


async def test_fakeredis_is_not_a_server_redis_benchmark_can_reach():
    fake = await cachelab.connect("fakeredis://", quiet=True)
    try:
        reason = redis_benchmark_skip_reason(fake, "/usr/bin/redis-benchmark")
        assert "plain TCP port" in reason
        assert await redis_usec_per_call(fake, "get") is None  # no INFO commandstats
    finally:
        await fake.aclose()


async def test_redis_reports_its_time_per_get(redis, namespace):
    await redis.get(f"{namespace}:probe")
    spent = await redis_usec_per_call(redis, "get")
    assert spent is not None and spent >= 0
    assert await redis_usec_per_call(redis, "no-such-command") is None


# --- counting what a cache sends ------------------------------------------------------------------


@pytest.mark.parametrize("batching", [False, True])
async def test_count_mgets_counts_every_read_and_puts_everything_back(redis, namespace, batching):
    cache = Cache(redis, namespace=namespace, ttl=60, batching=batching)
    await asyncio.gather(*(cache.set(f"k{i}", i) for i in range(20)))
    with count_mgets(cache) as outer:
        with count_mgets(cache) as inner:
            values = await asyncio.gather(*(cache.get(f"k{i}") for i in range(20)))
        await cache.get("k0")
    assert values == list(range(20))
    if batching:
        assert (inner.mgets, inner.batches) == (2, 1)  # the first alone, then the other 19
    else:
        assert (inner.mgets, inner.batches) == (20, 0)
    assert outer.mgets == inner.mgets + 1
    assert "mget" not in vars(redis)
    if batching:
        assert cache.store.reads._mget.func.__self__ is cache.store.reads.channel  # restored
    await cache.clear()
    await cache.aclose()


def test_summarize_takes_medians_and_counts_reads_per_command():
    frame = pd.DataFrame(
        [
            (BATCHING_ON, 10, 0, 0, 100, 0.01, 10_000.0, 20, 19, 0.005),
            (BATCHING_ON, 10, 1, 1, 100, 0.02, 5_000.0, 30, 29, 0.008),
            (BATCHING_ON, 10, 2, 2, 100, 0.04, 2_500.0, 50, 49, 0.016),
            (REDIS_BENCHMARK, 10, 0, 1, 100, 0.001, 100_000.0, 100, 0, math.nan),
        ],
        columns=HIT_PATH_COLUMNS,
    )
    summary = summarize_hit_path(frame).set_index("contender")
    on = summary.loc[BATCHING_ON]
    assert (on["reads_per_s"], on["slowest"], on["fastest"]) == (5_000.0, 2_500.0, 10_000.0)
    assert on["reads_per_command"] == 3.0  # 300 reads, 100 MGETs
    assert on["batches"] == 97
    assert on["cpu_us_per_read"] == pytest.approx(80.0)  # median of 50, 80, 160 µs
    assert on["cpu_share"] == pytest.approx(0.4)  # median of 0.5, 0.4, 0.4
    assert math.isnan(summary.loc[REDIS_BENCHMARK, "cpu_us_per_read"])


# --- bad arguments are refused before anything connects ------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"concurrency": []}, "concurrency is empty: give at least one count"),
        ({"concurrency": 50}, "concurrency must be a list of coroutine counts"),
        (
            {"concurrency": [0, 10]},
            "every value of concurrency must be a whole number of at least 1",
        ),
        ({"concurrency": [2.5]}, "every value of concurrency must be a whole number"),
        ({"concurrency": [20_000]}, "every value of concurrency must be at most 10,000"),
        ({"concurrency": [10, 10]}, "concurrency lists a count twice ([10, 10]): give each once"),
        ({"concurrency": [1, 50], "reads": 20}, "reads (20) must be at least the largest"),
        ({"rounds": 0}, "rounds must be a whole number of at least 1, got 0"),
        (
            {"concurrency": [1, 50], "keys": 10},
            "keys (10) must be at least the largest concurrency",
        ),
        ({"redis_benchmark": "yes"}, "redis_benchmark must be True or False, got 'yes'"),
        ({"namespace": ""}, "namespace must be a non-empty string or None"),
        ({"pool_size": 4}, "pool_size must be at least 8, got 4"),
    ],
)
async def test_bad_arguments_are_refused_in_one_sentence_before_anything_runs(
    arguments, message, monkeypatch
):
    async def no_connection(*args, **kwargs):
        raise AssertionError("connected before the arguments were checked")

    monkeypatch.setattr(hitpath, "connect", no_connection)
    with pytest.raises(ConfigurationError) as refused:
        await measure_hit_path(**arguments)
    text = str(refused.value)
    assert message in text
    assert "\n" not in text and ". " not in text
