"""LockTable and SingleFlight: sharing, exclusion, errors, cancellation and bounded memory."""

from __future__ import annotations

import asyncio
import gc

import pytest

from cachelab import LockTable, SingleFlight
from cachelab.singleflight import InlineFlight


async def settle(rounds: int = 5) -> None:
    """Let callbacks scheduled with call_soon (done callbacks, wake-ups) run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- LockTable --------------------------------------------------------------------------------


async def test_lock_table_gives_the_same_lock_while_in_use():
    table = LockTable()
    seen = []
    holding = asyncio.Event()
    release = asyncio.Event()

    async def holder():
        async with table.lock("k") as lock:
            seen.append(lock)
            holding.set()
            await release.wait()

    async def waiter():
        async with table.lock("k") as lock:
            seen.append(lock)

    first = asyncio.create_task(holder())
    await holding.wait()
    second = asyncio.create_task(waiter())
    await settle()
    assert len(table) == 1
    assert table.statistics().holders_and_waiters == 2
    assert len(seen) == 1  # the waiter is blocked behind the holder
    release.set()
    await asyncio.gather(first, second)
    assert seen[0] is seen[1]
    assert len(table) == 0


async def test_lock_table_different_keys_do_not_block_each_other():
    table = LockTable()
    release = asyncio.Event()
    inside = []

    async def hold(key):
        async with table.lock(key):
            inside.append(key)
            await release.wait()

    tasks = [asyncio.create_task(hold(k)) for k in ("a", "b", "c")]
    await settle()
    assert sorted(inside) == ["a", "b", "c"]
    assert len(table) == 3
    release.set()
    await asyncio.gather(*tasks)
    assert len(table) == 0


async def test_lock_table_mutual_exclusion():
    table = LockTable()
    holders = 0
    peak = 0
    done = 0

    async def worker():
        nonlocal holders, peak, done
        async with table.lock("k"):
            holders += 1
            peak = max(peak, holders)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            holders -= 1
            done += 1

    await asyncio.gather(*(worker() for _ in range(200)))
    assert done == 200
    assert peak == 1
    assert len(table) == 0


async def test_lock_table_does_not_grow_with_the_key_space():
    table = LockTable()
    for i in range(100_000):
        async with table.lock(i):
            pass
    assert len(table) == 0
    assert table.statistics().keys == 0


async def test_lock_table_entry_removed_when_body_raises():
    table = LockTable()
    with pytest.raises(ZeroDivisionError):
        async with table.lock("k"):
            assert len(table) == 1
            1 / 0  # noqa: B018
    assert len(table) == 0
    assert "k" not in table


async def test_lock_table_entry_removed_when_holder_and_waiter_are_cancelled():
    table = LockTable()
    holding = asyncio.Event()

    async def hold():
        async with table.lock("k"):
            holding.set()
            await asyncio.sleep(3600)

    holder = asyncio.create_task(hold())
    await holding.wait()
    waiter = asyncio.create_task(hold())
    await settle()
    assert table.statistics().holders_and_waiters == 2

    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert table.statistics().holders_and_waiters == 1
    assert "k" in table

    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert len(table) == 0

    async with table.lock("k"):  # the key is usable again afterwards
        assert len(table) == 1
    assert len(table) == 0


# --- SingleFlight -----------------------------------------------------------------------------


class Work:
    """A call that blocks until released, counts executions and records cancellation."""

    def __init__(self, value="v", error: BaseException | None = None):
        self.value = value
        self.error = error
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

    async def __call__(self):
        self.calls += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        return self.value


async def test_single_flight_one_execution_for_many_callers():
    sf = SingleFlight()
    work = Work(value={"answer": 42})
    tasks = [asyncio.create_task(sf.do("k", work)) for _ in range(50)]
    await work.started.wait()
    await settle()
    assert work.calls == 1
    assert sf.statistics().in_flight == 1
    assert sf.statistics().callers == 50
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.calls == 1
    values = [value for value, _shared in results]
    assert all(v is values[0] for v in values)
    assert values[0] == {"answer": 42}
    assert all(shared for _value, shared in results)
    assert len(sf) == 0


async def test_single_flight_lone_caller_is_not_shared():
    sf = SingleFlight()

    async def fn():
        return 7

    assert await sf.do("k", fn) == (7, False)
    assert len(sf) == 0


async def test_single_flight_same_exception_reaches_every_caller():
    sf = SingleFlight()
    error = LookupError("backend down")
    work = Work(error=error)
    tasks = [asyncio.create_task(sf.do("k", work)) for _ in range(20)]
    await work.started.wait()
    work.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert work.calls == 1
    assert all(r is error for r in results)
    assert len(sf) == 0


async def test_single_flight_caches_nothing():
    sf = SingleFlight()
    calls = 0

    async def fn():
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return calls

    first = await asyncio.gather(*(sf.do("k", fn) for _ in range(10)))
    second = await asyncio.gather(*(sf.do("k", fn) for _ in range(10)))
    assert calls == 2
    assert {v for v, _ in first} == {1}
    assert {v for v, _ in second} == {2}


async def test_single_flight_keys_are_independent():
    sf = SingleFlight()
    calls = []

    async def fn_for(key):
        calls.append(key)
        await asyncio.sleep(0)
        return key.upper()

    results = await asyncio.gather(*(sf.do(k, lambda k=k: fn_for(k)) for k in "aabbc"))
    assert sorted(calls) == ["a", "b", "c"]
    assert [v for v, _ in results] == ["A", "A", "B", "B", "C"]
    assert [s for _, s in results] == [True, True, True, True, False]


async def test_cancelling_the_first_caller_does_not_cancel_the_work():
    sf = SingleFlight()
    work = Work(value="shared value")
    first = asyncio.create_task(sf.do("k", work))
    await work.started.wait()
    others = [asyncio.create_task(sf.do("k", work)) for _ in range(5)]
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await settle()
    assert not work.cancelled
    assert sf.statistics().callers == 5
    work.release.set()
    results = await asyncio.gather(*others)
    assert [v for v, _ in results] == ["shared value"] * 5
    assert work.calls == 1
    assert not work.cancelled
    assert len(sf) == 0


async def test_cancelling_every_caller_cancels_the_work():
    sf = SingleFlight()
    work = Work()
    callers = [asyncio.create_task(sf.do("k", work)) for _ in range(3)]
    await work.started.wait()
    for task in callers:
        task.cancel()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    await settle()
    assert work.cancelled
    assert len(sf) == 0
    assert "k" not in sf
    # and the next caller starts afresh
    fresh = Work(value="again")
    fresh.release.set()
    assert await sf.do("k", fresh) == ("again", False)


async def test_forget_starts_a_new_execution():
    sf = SingleFlight()
    old = Work(value="old")
    new = Work(value="new")
    first = asyncio.create_task(sf.do("k", old))
    await old.started.wait()
    sf.forget("k")
    assert "k" not in sf
    second = asyncio.create_task(sf.do("k", new))
    await new.started.wait()
    assert old.calls == 1
    assert new.calls == 1
    old.release.set()
    assert await first == ("old", False)
    await settle()
    # the old call finishing must not remove the new call's entry
    assert "k" in sf
    new.release.set()
    assert await second == ("new", False)
    assert len(sf) == 0


async def test_forget_of_an_unknown_key_is_harmless():
    sf = SingleFlight()
    sf.forget("never-used")
    assert len(sf) == 0


async def test_single_flight_statistics():
    sf = SingleFlight()
    a, b = Work(), Work()
    tasks = [asyncio.create_task(sf.do("a", a)) for _ in range(3)]
    tasks.append(asyncio.create_task(sf.do("b", b)))
    await settle()
    stats = sf.statistics()
    assert (stats.in_flight, stats.callers) == (2, 4)
    a.release.set()
    b.release.set()
    await asyncio.gather(*tasks)
    stats = sf.statistics()
    assert (stats.in_flight, stats.callers) == (0, 0)


async def test_no_unretrieved_task_exceptions():
    loop = asyncio.get_running_loop()
    reports = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        # the detector works: a dropped failed task is reported when collected
        async def boom():
            raise RuntimeError("dropped")

        dropped = asyncio.ensure_future(boom())
        await settle()
        del dropped
        gc.collect()
        assert any("never retrieved" in c.get("message", "") for c in reports)
        reports.clear()

        sf = SingleFlight()
        # 1) an error shared by several callers
        work = Work(error=ValueError("shared"))
        tasks = [asyncio.create_task(sf.do("k", work)) for _ in range(3)]
        await work.started.wait()
        work.release.set()
        await asyncio.gather(*tasks, return_exceptions=True)

        # 2) every caller cancelled, and the work fails while handling the cancellation
        async def fails_on_cancel():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                raise RuntimeError("cleanup failed") from None

        tasks = [asyncio.create_task(sf.do("j", fails_on_cancel)) for _ in range(2)]
        await settle()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await settle()

        # 3) the only caller is cancelled after the work already failed
        async def fails_now():
            raise KeyError("late")

        lone = asyncio.create_task(sf.do("m", fails_now))
        await asyncio.sleep(0)
        lone.cancel()
        await asyncio.gather(lone, return_exceptions=True)
        await settle()

        del tasks, lone, work
        gc.collect()
        await settle()
        assert [c.get("message") for c in reports] == []
        assert len(sf) == 0
    finally:
        loop.set_exception_handler(previous)


# --- InlineFlight (the shared hit-path read of the "local" policy) -----------------------------


async def test_inline_flight_shares_one_call():
    flight = InlineFlight()
    work = Work(value="read")
    tasks = [asyncio.create_task(flight.do("k", work)) for _ in range(10)]
    await work.started.wait()
    await settle()
    assert len(flight) == 1
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.calls == 1
    assert [v for v, _ in results] == ["read"] * 10
    assert [leader for _, leader in results].count(True) == 1
    assert len(flight) == 0


async def test_inline_flight_shares_the_error():
    flight = InlineFlight()
    error = OSError("connection reset")
    work = Work(error=error)
    tasks = [asyncio.create_task(flight.do("k", work)) for _ in range(5)]
    await work.started.wait()
    work.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert work.calls == 1
    assert all(r is error for r in results)
    assert len(flight) == 0


async def test_inline_flight_waiters_retry_when_the_leader_is_cancelled():
    flight = InlineFlight()
    work = Work(value="again")
    leader = asyncio.create_task(flight.do("k", work))
    await work.started.wait()
    waiters = [asyncio.create_task(flight.do("k", work)) for _ in range(4)]
    await settle()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    await settle()
    assert work.calls == 2  # one waiter took over and ran the work again
    work.release.set()
    results = await asyncio.gather(*waiters)
    assert [v for v, _ in results] == ["again"] * 4
    assert [is_leader for _, is_leader in results].count(True) == 1
    assert len(flight) == 0


async def test_inline_flight_forget():
    flight = InlineFlight()
    old, new = Work(value="old"), Work(value="new")
    first = asyncio.create_task(flight.do("k", old))
    await old.started.wait()
    flight.forget("k")
    second = asyncio.create_task(flight.do("k", new))
    await new.started.wait()
    old.release.set()
    assert await first == ("old", True)
    assert "k" in flight  # the old call finishing leaves the new one in place
    new.release.set()
    assert await second == ("new", True)
    assert len(flight) == 0


async def test_work_that_swallows_a_cancellation_still_ends_when_every_caller_leaves():
    # redis-py on Python 3.11 can swallow a cancellation that lands as a command completes; work
    # cancelled only once would then run on (a waiter that later loads and stores, unwanted)
    sf = SingleFlight()
    swallowed, finished = asyncio.Event(), asyncio.Event()

    async def stubborn():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.set()  # the first cancellation is swallowed, as redis-py can
        try:
            await asyncio.sleep(3600)
        finally:
            finished.set()

    caller = asyncio.create_task(sf.do("k", stubborn))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(swallowed.wait(), 1)
    await asyncio.wait_for(finished.wait(), 2)  # cancelled again: it did not run on
    assert len(sf) == 0


async def test_an_alias_joins_the_call_in_flight_and_ends_with_it():
    flight = SingleFlight()
    release = asyncio.Event()
    calls = 0

    async def work():
        nonlocal calls
        calls += 1
        mine = calls
        await release.wait()
        return mine

    first = asyncio.create_task(flight.do("a", work))
    await asyncio.sleep(0)
    flight.alias("a", "b")
    flight.alias("missing", "c")  # nothing in flight for it: no alias
    joined = asyncio.create_task(flight.do("b", work))
    alone = asyncio.create_task(flight.do("c", work))
    await asyncio.sleep(0)
    assert len(flight) == 2  # "a" (alias "b") and "c": an alias is no second call
    assert flight.statistics().callers == 3
    release.set()
    assert await first == (1, True)
    assert await joined == (1, True)  # joined the call for "a"
    assert await alone == (2, False)  # "c" was not an alias: a call of its own
    assert len(flight) == 0  # the alias went with the call
