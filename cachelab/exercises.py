"""Build it yourself: a student writes a mechanism, a checker runs hidden tests on it.

Each teaching notebook from 01 on has a *stub cell* (a class, a function or a Lua script whose
body is ``raise NotImplementedError`` or empty) and, below it, a checker cell::

    await check("single_flight", MySingleFlight)           # notebook 01
    await check("lock_release", RELEASE_SCRIPT, redis=redis)  # notebook 02

:func:`check` runs the exercise's tests (they live here, out of the student's sight, as in
otter-grader and nbgrader) and returns a :class:`Verdict` that Jupyter shows as a short list: what
passed, and for what failed, what was expected, what was seen and why it matters. It never
raises for a wrong answer, so a notebook with an unfinished stub still runs top to bottom.
Checks marked *bonus* are reported but not needed to pass. Reference solutions live in the
repository's ``solutions/`` folder, for instructors to hand out; ``tests/test_exercises.py``
checks that they pass and that the notebooks' stubs do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .testing import BackendError, SlowBackend

__all__ = ["EXERCISES", "Exercise", "Mismatch", "Verdict", "check"]

CHECK_TIMEOUT_S = 10.0
"""How long one hidden test may take before it is failed as stuck (a caller waiting forever)."""


class Mismatch(AssertionError):
    """A hidden test saw something other than what the exercise asks for."""

    def __init__(self, expected: str, saw: str, why: str) -> None:
        super().__init__(f"expected {expected}, saw {saw}: {why}")
        self.expected, self.saw, self.why = expected, saw, why


def expect(condition: bool, expected: str, saw: str, why: str) -> None:
    if not condition:
        raise Mismatch(expected, saw, why)


@dataclass(frozen=True)
class Outcome:
    """One hidden test: its description, whether it passed, and if not, what went wrong."""

    description: str
    passed: bool
    detail: str = ""
    bonus: bool = False


@dataclass
class Verdict:
    """What :func:`check` found. Truthy when every required test passed."""

    exercise: str
    title: str
    outcomes: list[Outcome] = field(default_factory=list)
    not_started: bool = False
    kind: str = "callable"

    @property
    def passed(self) -> bool:
        required = [o for o in self.outcomes if not o.bonus]
        return not self.not_started and bool(required) and all(o.passed for o in required)

    def __bool__(self) -> bool:
        return self.passed

    def _lines(self) -> list[str]:
        required = [o for o in self.outcomes if not o.bonus]
        good = sum(o.passed for o in required)
        if self.not_started:
            todo = (
                "write your Lua in place of the comment in the cell above"
                if self.kind == "script"
                else "replace `raise NotImplementedError` in the cell above with your code"
            )
            return [
                f"{self.title}: not started yet. To begin, {todo}, run that cell, then this one."
            ]
        if self.passed:
            head = f"{self.title}: all {len(required)} checks pass. Well done."
        else:
            head = f"{self.title}: {good} of {len(required)} checks pass. Keep going."
        lines = [head]
        for o in self.outcomes:
            mark = "✔" if o.passed else "✘"
            label = "bonus: " if o.bonus else ""
            lines.append(f"  {mark} {label}{o.description}" + ("" if o.passed else f": {o.detail}"))
        return lines

    def __str__(self) -> str:
        return "\n".join(self._lines())

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        head, *rest = self._lines()
        return "\n".join([f"**{head}**", "", *(f"- {line.strip()}" for line in rest)])


Test = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Exercise:
    """An exercise: its title, what the answer must be, and its hidden tests."""

    title: str
    answer: str
    """What the stub defines, e.g. "a class with async do(key, fn)"."""
    tests: list[tuple[str, Test]]
    bonus: list[tuple[str, Test]] = field(default_factory=list)
    needs_redis: bool = False
    kind: str = "callable"
    """"callable" (a class or function) or "script" (Lua source text)."""


class _Env:
    """What a hidden test may use: the student's Redis client and keys of its own."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.prefix = f"exercise:{uuid.uuid4().hex[:12]}"
        self._count = 0

    def key(self, name: str) -> str:
        self._count += 1
        return f"{self.prefix}:{self._count}:{name}"

    async def cleanup(self) -> None:
        if self.redis is None:
            return
        with contextlib.suppress(Exception):
            async for key in self.redis.scan_iter(match=f"{self.prefix}:*"):
                await self.redis.unlink(key)


# --- 01: single-flight ---------------------------------------------------------------------------


async def _gather_do(sf, key: str, fn, n: int) -> list[Any]:
    return await asyncio.gather(*(sf.do(key, fn) for _ in range(n)), return_exceptions=True)


async def _sf_one_call(answer, env) -> None:
    sf, backend = answer(), SlowBackend(20)
    results = await _gather_do(sf, "user:1", lambda: backend.fetch("user:1"), 50)
    expect(
        backend.calls == 1,
        "1 backend call",
        f"{backend.calls}",
        "callers that arrive while a call for the key is in flight must wait for it",
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    expect(
        not errors,
        "no errors",
        f"{type(errors[0]).__name__ if errors else ''}: {errors[0] if errors else ''}",
        "the loader succeeded, so every caller gets its value",
    )
    row = {"key": "user:1", "version": 0}
    expect(
        all(r == row for r in results),
        f"every caller to get {row}",
        f"{results[0]!r}",
        "do() returns the loader's value itself",
    )


async def _sf_keys_apart(answer, env) -> None:
    sf, backend = answer(), SlowBackend(50)
    await asyncio.gather(
        sf.do("a", lambda: backend.fetch("a")), sf.do("b", lambda: backend.fetch("b"))
    )
    expect(
        backend.calls == 2 and backend.peak_in_flight == 2,
        "2 calls running at the same time",
        f"{backend.calls} calls, at most {backend.peak_in_flight} at once",
        "a call for one key must not hold up another key",
    )


async def _sf_error_shared(answer, env) -> None:
    sf, backend = answer(), SlowBackend(20)
    backend.fail_next = 1
    results = await _gather_do(sf, "k", lambda: backend.fetch("k"), 10)
    failed = sum(isinstance(r, BackendError) for r in results)
    expect(
        backend.calls == 1 and failed == 10,
        "1 call and 10 callers getting BackendError",
        f"{backend.calls} call(s) and {failed} BackendError(s)",
        "a failed call is shared like a successful one: one failure, told to everyone",
    )


async def _sf_not_cached(answer, env) -> None:
    sf, backend = answer(), SlowBackend(5)
    await _gather_do(sf, "k", lambda: backend.fetch("k"), 3)
    await sf.do("k", lambda: backend.fetch("k"))
    expect(
        backend.calls == 2,
        "2 calls (one for the crowd, one for the later caller)",
        f"{backend.calls}",
        "single-flight shares calls in flight; it is not a cache, so a "
        "caller that comes after the call ended starts a new one",
    )


async def _sf_failure_forgotten(answer, env) -> None:
    sf, backend = answer(), SlowBackend(5)
    backend.fail_next = 1
    with contextlib.suppress(BackendError):
        await sf.do("k", lambda: backend.fetch("k"))
    value = await sf.do("k", lambda: backend.fetch("k"))
    expect(
        backend.calls == 2 and value == {"key": "k", "version": 0},
        "the next caller to try again and get the value",
        f"{backend.calls} call(s), {value!r}",
        "remove the key when the call ends, whether it succeeded or failed",
    )


async def _sf_cancel_one(answer, env) -> None:
    sf, backend = answer(), SlowBackend(50)
    first = asyncio.ensure_future(sf.do("k", lambda: backend.fetch("k")))
    await asyncio.sleep(0.005)
    others = [asyncio.ensure_future(sf.do("k", lambda: backend.fetch("k"))) for _ in range(3)]
    await asyncio.sleep(0.005)
    first.cancel()
    try:
        async with asyncio.timeout(2.0):
            results = await asyncio.gather(*others, return_exceptions=True)
    except TimeoutError:
        results = ["still waiting after 2 s"] * len(others)
        for other in others:
            other.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    ok = all(r == {"key": "k", "version": 0} for r in results)
    expect(
        ok and backend.calls == 1,
        "the other 3 callers to get the value from the 1 call",
        f"{[type(r).__name__ for r in results]} and {backend.calls} call(s)",
        "the first caller gave up, the others did not: run the call in its own task "
        "(asyncio.ensure_future) and await it through asyncio.shield",
    )


# --- 01b: a per-tick batcher ---------------------------------------------------------------------


class _FakeMget:
    """An ``mget(keys)`` that records every call and answers ``"value of <key>"`` per key. Each
    call gives the event loop a turn first (a round trip); it then waits for ``gate``, if given,
    and raises ``fail``, if given."""

    def __init__(self, *, fail: BaseException | None = None, gate: asyncio.Event | None = None):
        self.calls: list[list[Any]] = []
        self.fail, self.gate = fail, gate
        self.called = asyncio.Event()

    async def __call__(self, keys) -> list[str]:
        keys = list(keys)
        self.calls.append(keys)
        self.called.set()
        await asyncio.sleep(0)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [f"value of {key}" for key in keys]


async def _answered(awaitable: Awaitable[Any], expected: str, why: str) -> Any:
    """``awaitable``'s result, or a Mismatch when its callers are still waiting after 2 s."""
    try:
        async with asyncio.timeout(2.0):
            return await awaitable
    except TimeoutError:
        raise Mismatch(expected, "callers still waiting after 2 s", why) from None


async def _tb_one(answer, env) -> None:
    mget = _FakeMget()
    value = await _answered(
        answer(mget).get("a"), "an answer", "flush what waits at the end of the tick"
    )
    expect(
        value == "value of a" and len(mget.calls) == 1,
        "'value of a' from 1 mget call",
        f"{value!r} from {len(mget.calls)} call(s)",
        "get(key) returns the value mget gave for that key",
    )


async def _tb_one_tick(answer, env) -> None:
    mget, keys = _FakeMget(), [f"user:{i}" for i in range(20)]
    batcher = answer(mget)
    results = await _answered(
        asyncio.gather(*(batcher.get(key) for key in keys)),
        "every caller answered",
        "the first caller of a tick schedules one flush (loop.call_soon), and the flush resolves "
        "every caller's future",
    )
    expect(
        len(mget.calls) == 1,
        "1 mget call for 20 callers in one tick",
        f"{len(mget.calls)} calls",
        "callers that ask in the same tick share one mget: queue each key with a future, and "
        "send the whole queue when the tick ends (loop.call_soon)",
    )
    expect(
        sorted(mget.calls[0]) == sorted(keys),
        "the 20 keys in that call",
        f"{mget.calls[0][:4]}...",
        "the batch carries every key asked for in the tick",
    )
    expect(
        list(results) == [f"value of {key}" for key in keys],
        "each caller to get its own key's value",
        f"{list(results)[:3]}...",
        "mget answers in the order of the keys it was given: the i-th value is the i-th key's",
    )


async def _tb_next_tick(answer, env) -> None:
    mget = _FakeMget()
    batcher = answer(mget)
    why = "a caller that comes after a batch was sent goes into the next one"
    first = await _answered(batcher.get("a"), "an answer", why)
    second = await _answered(batcher.get("b"), "an answer", why)
    expect(
        mget.calls == [["a"], ["b"]] and (first, second) == ("value of a", "value of b"),
        "2 calls, [['a'], ['b']], and each its own value",
        f"{mget.calls} and {first!r}, {second!r}",
        "start a new queue for every tick: a sent key must not be sent again, and nothing is "
        "cached",
    )


async def _tb_error(answer, env) -> None:
    failure = BackendError("Redis went away")
    mget = _FakeMget(fail=failure)
    batcher = answer(mget)
    results = await _answered(
        asyncio.gather(batcher.get("a"), batcher.get("b"), return_exceptions=True),
        "both callers to hear of the failure",
        "when mget raises, give its exception to every caller of the batch (set_exception)",
    )
    expect(
        all(result is failure for result in results),
        "both callers to get mget's BackendError",
        f"{[type(r).__name__ for r in results]}",
        "one failed mget fails every read in it, and each caller must hear so",
    )
    mget.fail = None
    value = await _answered(
        batcher.get("c"), "an answer", "a failed batch must not stop the batcher"
    )
    expect(
        value == "value of c",
        "the next batch to work after a failed one",
        f"{value!r}",
        "a failed batch must leave the batcher ready for the next tick",
    )


async def _tb_cancel(answer, env) -> None:
    gate = asyncio.Event()
    mget = _FakeMget(gate=gate)
    batcher = answer(mget)
    callers = [asyncio.ensure_future(batcher.get(key)) for key in ("a", "b", "c")]
    try:
        await _answered(
            mget.called.wait(), "a batch on its way", "send the queue when the tick ends"
        )
        callers[0].cancel()  # the first caller gives up while its batch is on its way
        await asyncio.sleep(0)
        gate.set()
        results = await _answered(
            asyncio.gather(*callers[1:], return_exceptions=True),
            "the other 2 callers answered",
            "skip a caller that gave up (its future is done: cancelled): set_result on it raises "
            "InvalidStateError, and the callers after it never hear back",
        )
    finally:
        for caller in callers:
            caller.cancel()
    expect(
        list(results) == ["value of b", "value of c"],
        "'value of b' and 'value of c' for the callers that stayed",
        f"{results}",
        "one caller giving up must not take the batch from the others",
    )


async def _tb_same_key(answer, env) -> None:
    mget = _FakeMget()
    batcher = answer(mget)
    results = await _answered(
        asyncio.gather(*(batcher.get(key) for key in ("a", "b", "a", "a"))),
        "every caller answered",
        "callers of the same key each need an answer",
    )
    expect(
        len(mget.calls) == 1 and sorted(mget.calls[0]) == ["a", "b"]
        and list(results) == ["value of a", "value of b", "value of a", "value of a"],
        "one call for the keys ['a', 'b'], and every caller its key's value",
        f"{mget.calls} and {results}",
        "a key asked for twice in one tick is worth sending once",
    )  # fmt: skip


# --- 02: releasing a lock ------------------------------------------------------------------------


async def _eval(env, script: str, keys: list[str], args: list[Any]) -> Any:
    return await env.redis.eval(script, len(keys), *keys, *args)


async def _release_own(script, env) -> None:
    lock = env.key("lock")
    await env.redis.set(lock, "my-token", px=10_000)
    result = await _eval(env, script, [lock], ["my-token"])
    left = await env.redis.exists(lock)
    expect(
        int(result or 0) == 1 and left == 0,
        "the script to return 1 and the lock to be gone",
        f"it returned {result!r} and the lock is {'still there' if left else 'gone'}",
        "the lock holds your token, so releasing it must delete it",
    )


async def _release_other(script, env) -> None:
    lock = env.key("lock")
    await env.redis.set(lock, "their-token", px=10_000)
    result = await _eval(env, script, [lock], ["my-token"])
    value = await env.redis.get(lock)
    expect(
        int(result or 0) == 0 and value == b"their-token",
        "the script to return 0 and leave their lock in place",
        f"it returned {result!r} and the lock holds {value!r}",
        "your lock expired and someone else took it: a plain DEL would delete *their* lock, "
        "so compare the token first (GET, then DEL only if equal), in the one script",
    )


async def _release_missing(script, env) -> None:
    result = await _eval(env, script, [env.key("lock")], ["my-token"])
    expect(
        int(result or 0) == 0,
        "0 for a lock that no longer exists",
        f"{result!r}",
        "a lock that expired before the release is not yours to release",
    )


# --- 03: the XFetch verdict ----------------------------------------------------------------------


def _verdict(fn, now, expiry, delta, beta, rand) -> bool:
    result = fn(now, expiry, delta, beta, rand)
    expect(
        isinstance(result, bool),
        "True or False",
        f"{result!r}",
        "refresh_early answers a yes/no question",
    )
    return result


async def _xf_far(fn, env) -> None:
    expiry = 1000.0
    got = _verdict(fn, expiry - 10.0, expiry, 0.05, 1.0, 0.5)
    expect(
        got is False,
        "False 10 s before expiry (delta 50 ms, rand 0.5)",
        f"{got}",
        "-delta * beta * ln(rand) is about 35 ms here, far short of 10 s",
    )


async def _xf_expired(fn, env) -> None:
    at = _verdict(fn, 1000.0, 1000.0, 0.05, 1.0, 1.0)
    after = _verdict(fn, 1001.0, 1000.0, 0.05, 1.0, 0.9)
    expect(
        at and after,
        "True at and after expiry",
        f"{at} at expiry, {after} a second after",
        "ln(1) = 0, so even the luckiest draw refreshes once now >= expiry",
    )


async def _xf_formula(fn, env) -> None:
    # 0.1 s before expiry, delta 50 ms, beta 1: refresh iff -0.05 * ln(rand) >= 0.1, rand <= e^-2
    yes = _verdict(fn, 999.9, 1000.0, 0.05, 1.0, 0.13)
    no = _verdict(fn, 999.9, 1000.0, 0.05, 1.0, 0.14)
    expect(
        yes and not no,
        "True for rand 0.13 and False for 0.14 (the line is e^-2 ≈ 0.135)",
        f"{yes} and {no}",
        "refresh when now - delta * beta * ln(rand) >= expiry",
    )


async def _xf_beta(fn, env) -> None:
    # beta 2 doubles the gap: the line moves to rand <= e^-1 ≈ 0.368
    yes = _verdict(fn, 999.9, 1000.0, 0.05, 2.0, 0.36)
    no = _verdict(fn, 999.9, 1000.0, 0.05, 2.0, 0.37)
    expect(
        yes and not no,
        "True for rand 0.36 and False for 0.37 at beta 2",
        f"{yes} and {no}",
        "beta multiplies delta: a larger beta refreshes earlier",
    )


async def _xf_chance(fn, env) -> None:
    rng, draws, delta, beta, before = random.Random(7), 20_000, 0.05, 1.0, 0.05
    early = (
        sum(
            _verdict(fn, 1000.0 - before, 1000.0, delta, beta, 1.0 - rng.random())
            for _ in range(draws)
        )
        / draws
    )
    formula = math.exp(-before / (beta * delta))
    expect(
        abs(early - formula) < 0.02,
        f"about {formula:.3f} of reads refreshing 50 ms before expiry",
        f"{early:.3f}",
        "P(-delta * beta * ln(rand) >= t) = e^(-t / (beta * delta))",
    )


# --- 03b: a fenced fill --------------------------------------------------------------------------

FENCE = 1_765_000_000_000_001  # a fence as the server's clock in microseconds would make it


async def _fill(script, env, fence_now: int | None, token: int, px: int = 60_000):
    value, fence = env.key("value"), env.key("fence")
    await env.redis.set(value, "old", px=60_000)
    if fence_now is not None:
        await env.redis.set(fence, fence_now)
    result = await _eval(env, script, [value, fence], ["new", px, token])
    return result, await env.redis.get(value), await env.redis.pttl(value)


async def _ff_current(script, env) -> None:
    result, stored, _pttl = await _fill(script, env, FENCE, FENCE)
    expect(
        int(result or 0) == 1 and stored == b"new",
        "1, and the new value stored",
        f"{result!r}, and the value is {stored!r}",
        "the fence still holds the token this filler got: nothing was written since",
    )


async def _ff_moved(script, env) -> None:
    result, stored, _pttl = await _fill(script, env, FENCE + 1, FENCE)
    expect(
        int(result or 0) == 0 and stored == b"old",
        "0, and the value left as it was",
        f"{result!r}, and the value is {stored!r}",
        "a write moved the fence after this filler read: its value is older than the write",
    )


async def _ff_unknown(script, env) -> None:
    result, stored, _pttl = await _fill(script, env, FENCE, FENCE + 5)
    expect(
        int(result or 0) == 0 and stored == b"old",
        "0 for a token the fence never had",
        f"{result!r}, and the value is {stored!r}",
        "cachelab's fence check is equality: any token other than the current fence is "
        "refused (stricter than refusing only older tokens)",
    )


async def _ff_ttl(script, env) -> None:
    result, _stored, pttl = await _fill(script, env, FENCE, FENCE, px=5_000)
    expect(
        int(result or 0) == 1 and 0 < pttl <= 5_000,
        "the value stored with a TTL of 5 s",
        f"a TTL of {pttl} ms",
        "store with SET ... PX ARGV[2], or the value never expires",
    )


# --- 04: an L1 kept true by invalidations --------------------------------------------------------


def _l1(answer):
    l1 = answer()
    for method in ("start_fill", "fill", "get", "on_invalidate", "on_disconnect", "on_subscribed"):
        expect(
            callable(getattr(l1, method, None)),
            f"a method {method}()",
            "none",
            "the checker drives the L1 through these methods",
        )
    return l1


def _filled(l1, key: str, value: Any) -> None:
    l1.fill(key, value, l1.start_fill(key))


async def _l1_fill(answer, env) -> None:
    l1 = _l1(answer)
    _filled(l1, "a", 1)
    expect(
        l1.get("a") == 1,
        "get('a') == 1 after a fill",
        f"{l1.get('a')!r}",
        "a fill with nothing in between is stored",
    )


async def _l1_invalidate(answer, env) -> None:
    l1 = _l1(answer)
    _filled(l1, "a", 1)
    _filled(l1, "b", 2)
    l1.on_invalidate("a")
    l1.on_invalidate("never-filled")
    got = (l1.get("a"), l1.get("b"))
    expect(
        got == (None, 2),
        "a dropped, b kept",
        f"a={got[0]!r}, b={got[1]!r}",
        "an invalidation names one key: drop it, keep the rest (and ignore unknown keys)",
    )


async def _l1_late_fill(answer, env) -> None:
    l1 = _l1(answer)
    ticket = l1.start_fill("a")  # the read of Redis starts...
    l1.on_invalidate("a")  # ...a write elsewhere invalidates a...
    l1.fill("a", "old", ticket)  # ...and the read, which may hold the old value, ends
    other = l1.start_fill("b")
    l1.on_invalidate("a")
    l1.fill("b", 2, other)
    got = (l1.get("a"), l1.get("b"))
    expect(
        got == (None, 2),
        "the late fill of a refused, the fill of b stored",
        f"a={got[0]!r}, b={got[1]!r}",
        "a read that began before an invalidation of its key "
        "may carry the old value; remember per key what happened since start_fill",
    )


async def _l1_disconnect(answer, env) -> None:
    l1 = _l1(answer)
    _filled(l1, "a", 1)
    ticket = l1.start_fill("b")
    l1.on_disconnect()
    l1.fill("b", 2, ticket)
    got = (l1.get("a"), l1.get("b"))
    expect(
        got == (None, None),
        "everything flushed, and the fill begun before the drop refused",
        f"a={got[0]!r}, b={got[1]!r}",
        "while the connection is down invalidations are lost: "
        "no entry, and no read begun before the drop, can be trusted",
    )


async def _l1_resubscribed(answer, env) -> None:
    l1 = _l1(answer)
    l1.on_disconnect()
    _filled(l1, "c", 3)  # filled while the subscription was down
    l1.on_subscribed()
    expect(
        l1.get("c") is None,
        "c flushed when the subscription is back",
        f"{l1.get('c')!r}",
        "a fill made while the subscriber was away may have missed its invalidation",
    )


# --- 05: replay or flush -------------------------------------------------------------------------


async def _stream(env, n: int) -> tuple[str, list[str]]:
    stream = env.key("log")
    ids = [(await env.redis.xadd(stream, {"k": f"key:{i}"})).decode() for i in range(n)]
    return stream, ids


def _ids(entries: Any) -> list[str]:
    expect(
        isinstance(entries, list),
        "a list of entries",
        f"{type(entries).__name__}",
        "return the entries XRANGE or XREAD gave you, oldest first",
    )
    out = []
    for entry in entries:
        entry_id = entry[0] if isinstance(entry, list | tuple) else entry
        out.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return out


async def _catch(fn, env, stream, last_id):
    result = await fn(env.redis, stream, last_id)
    expect(
        isinstance(result, tuple) and len(result) == 2,
        "a pair (entries, must_flush)",
        f"{result!r}"[:80],
        "the caller needs both what to replay and whether to flush",
    )
    return result


async def _cu_replay(fn, env) -> None:
    stream, ids = await _stream(env, 5)
    entries, flush = await _catch(fn, env, stream, ids[1])
    expect(
        _ids(entries) == ids[2:] and flush is False,
        f"entries {ids[2:]} and no flush",
        f"{_ids(entries)} and must_flush={flush!r}",
        "nothing was trimmed: replay the entries after the last id you applied",
    )


async def _cu_current(fn, env) -> None:
    stream, ids = await _stream(env, 3)
    entries, flush = await _catch(fn, env, stream, ids[-1])
    expect(
        _ids(entries) == [] and flush is False,
        "no entries and no flush",
        f"{_ids(entries)} and must_flush={flush!r}",
        "you are up to date",
    )


async def _cu_trimmed_past(fn, env) -> None:
    stream, ids = await _stream(env, 6)
    await env.redis.xtrim(stream, maxlen=2, approximate=False)
    _entries, flush = await _catch(fn, env, stream, ids[1])
    expect(
        flush is True,
        "must_flush=True",
        f"must_flush={flush!r}",
        "the entries after your last id that a trim removed are gone, and XREAD does not say "
        "so: check whether anything at or before your last id is still there",
    )


async def _cu_trimmed_behind(fn, env) -> None:
    stream, ids = await _stream(env, 10)
    await env.redis.xtrim(stream, maxlen=5, approximate=False)
    entries, flush = await _catch(fn, env, stream, ids[7])
    expect(
        _ids(entries) == ids[8:] and flush is False,
        f"entries {ids[8:]} and no flush",
        f"{_ids(entries)} and must_flush={flush!r}",
        "the trim removed only entries you had already applied",
    )


# --- 05b: take over a dead consumer's entries ----------------------------------------------------


async def _group(env, n: int) -> tuple[str, list[str]]:
    stream, ids = await _stream(env, n)
    await env.redis.xgroup_create(stream, "workers", id="0")
    return stream, ids


async def _pending_owners(env, stream: str) -> dict[str, str]:
    rows = await env.redis.xpending_range(stream, "workers", min="-", max="+", count=100)
    return {r["message_id"].decode(): r["consumer"].decode() for r in rows}


async def _claimed(fn, env, stream: str, min_idle_ms: int) -> list[str]:
    return sorted(_ids(await fn(env.redis, stream, "workers", "rescuer", min_idle_ms)))


async def _to_dead_only(fn, env) -> None:
    stream, ids = await _group(env, 5)
    await env.redis.xreadgroup("workers", "dead", {stream: ">"}, count=3)
    await asyncio.sleep(0.15)
    await env.redis.xreadgroup("workers", "alive", {stream: ">"}, count=2)
    claimed = await _claimed(fn, env, stream, 100)
    owners = await _pending_owners(env, stream)
    expect(
        claimed == sorted(ids[:3]),
        f"the dead consumer's {ids[:3]}",
        f"{claimed}",
        "only entries idle for at least min_idle_ms are taken over",
    )
    expect(
        all(owners[i] == "rescuer" for i in ids[:3]) and all(owners[i] == "alive" for i in ids[3:]),
        "the dead's entries pending with rescuer, alive's with alive",
        f"{owners}",
        "XAUTOCLAIM moves ownership in the group's pending list",
    )


async def _to_nothing_fresh(fn, env) -> None:
    stream, _entries = await _group(env, 3)
    await env.redis.xreadgroup("workers", "busy", {stream: ">"}, count=3)
    claimed = await _claimed(fn, env, stream, 60_000)
    expect(
        claimed == [],
        "nothing claimed",
        f"{claimed}",
        "entries delivered a moment ago belong to a consumer that may still be working",
    )


# --- 06: a circuit breaker -----------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _breaker(answer, failures: int = 3, reset_after: float = 1.0):
    clock = _Clock()
    return answer(failures=failures, reset_after=reset_after, clock=clock), clock


def _states(breaker, clock) -> str:
    return f"state {getattr(breaker, 'state', '?')!r} at t={clock.now:g} s"


async def _br_closed(answer, env) -> None:
    breaker, clock = _breaker(answer)
    allowed = [breaker.allow() for _ in range(5)]
    expect(
        all(allowed) and breaker.state == "closed",
        "5 calls allowed, state 'closed'",
        f"{allowed}, {_states(breaker, clock)}",
        "a new breaker trusts Redis",
    )


async def _br_opens(answer, env) -> None:
    breaker, clock = _breaker(answer, failures=3)
    for _ in range(3):
        breaker.allow()
        breaker.failure()
    expect(
        breaker.state == "open" and breaker.allow() is False,
        "state 'open' and allow() False after 3 failures",
        _states(breaker, clock),
        "after `failures` consecutive failures, stop trying Redis",
    )


async def _br_success_resets(answer, env) -> None:
    breaker, clock = _breaker(answer, failures=3)
    for step in ("failure", "failure", "success", "failure", "failure"):
        breaker.allow()
        getattr(breaker, step)()
    expect(
        breaker.state == "closed",
        "still 'closed'",
        _states(breaker, clock),
        "the failures must be consecutive: a success in between starts the count again",
    )


async def _br_probe(answer, env) -> None:
    breaker, clock = _breaker(answer, failures=1, reset_after=1.0)
    breaker.allow()
    breaker.failure()
    clock.now = 0.5
    early = breaker.allow()
    clock.now = 1.0
    first, second = breaker.allow(), breaker.allow()
    expect(
        (early, first, second) == (False, True, False) and breaker.state == "half_open",
        "False before reset_after, then exactly one probe (True, False), state 'half_open'",
        f"{early}, then {first}, {second}; {_states(breaker, clock)}",
        "after reset_after, one call may find out whether Redis is back",
    )


async def _br_probe_result(answer, env) -> None:
    breaker, clock = _breaker(answer, failures=1, reset_after=1.0)
    breaker.allow()
    breaker.failure()
    clock.now = 1.0
    breaker.allow()
    breaker.failure()  # the probe failed: open for another reset_after
    clock.now = 1.5
    still = breaker.allow()
    clock.now = 2.0
    probe = breaker.allow()
    breaker.success()  # this probe succeeded: closed
    after = [breaker.allow() for _ in range(3)]
    expect(
        still is False and probe is True and all(after) and breaker.state == "closed",
        "a failed probe opens it for another reset_after; a good one closes it",
        f"allow() {still} at 1.5 s, {probe} at 2 s, then {after}; {_states(breaker, clock)}",
        "the probe's result decides the next state",
    )


# --- 07: choose a configuration -----------------------------------------------------------------


async def _caches(make, env, n: int = 2):
    from .cache import Cache
    from .connection import clone_client

    clients = [clone_client(env.redis) for _ in range(n)]
    caches = [make(c, env.prefix + ":stock") for c in clients]
    for cache in caches:
        expect(
            isinstance(cache, Cache),
            "make_cache to return a cachelab.Cache",
            f"{type(cache).__name__}",
            "the checker reads and writes through it",
        )
    return clients, caches


async def _closing(clients, caches) -> None:
    for cache in caches:
        with contextlib.suppress(Exception):
            await cache.aclose()
    for client in clients:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _stock_one_load(make, env) -> None:
    clients, caches = await _caches(make, env)
    try:
        backend = SlowBackend(30)
        await asyncio.gather(
            *(
                caches[i % 2].get_or_set("stock:1", lambda: backend.fetch("stock:1"))
                for i in range(20)
            )
        )
        expect(
            backend.calls == 1,
            "1 backend load for 20 lookups over 2 instances",
            f"{backend.calls}",
            "a cold key after a deploy must not cost one load per request "
            "or per instance: coordinate through Redis",
        )
    finally:
        await _closing(clients, caches)


async def _stock_no_stale_set(make, env) -> None:
    clients, caches = await _caches(make, env)
    try:
        backend, read, release = SlowBackend(0), asyncio.Event(), asyncio.Event()

        async def slow_old_row():
            row = await backend.fetch("stock:2")  # the old row, read before the write
            read.set()
            await release.wait()
            return row

        reader = asyncio.ensure_future(caches[0].get_or_set("stock:2", slow_old_row))
        await read.wait()
        backend.rows["stock:2"] = {"key": "stock:2", "version": 1}  # commit the write...
        await caches[1].delete("stock:2")  # ...then invalidate
        release.set()
        await reader
        entry = await caches[1].entry("stock:2")
        held = None if entry is None else entry.value
        expect(
            held != {"key": "stock:2", "version": 0},
            "no version-0 row left in the cache",
            f"{held!r}",
            "a load that read the row before the write must not store it after "
            "the delete (a stale set): fills must be fenced",
        )
    finally:
        await _closing(clients, caches)


async def _stock_no_waiting(make, env) -> None:
    clients, caches = await _caches(make, env)
    try:
        backend, reloading, release = SlowBackend(0), asyncio.Event(), asyncio.Event()
        await caches[0].get_or_set("stock:3", lambda: backend.fetch("stock:3"))
        await caches[0].delete("stock:3")

        async def slow_reload():
            row = await backend.fetch("stock:3")
            reloading.set()
            await release.wait()
            return row

        first = asyncio.ensure_future(caches[0].lookup("stock:3", slow_reload))
        await reloading.wait()
        try:
            async with asyncio.timeout(1.0):
                others = await asyncio.gather(
                    *(caches[1].lookup("stock:3", slow_reload) for _ in range(5))
                )
            outcomes = sorted({str(o.outcome) for o in others})
        except TimeoutError:
            outcomes = ["still waiting after 1 s"]
        release.set()
        await first
        expect(
            outcomes == ["stale"],
            "the other readers answered at once, marked stale",
            f"{outcomes}",
            "while one reader reloads, the previous value (marked stale) "
            "keeps the others from waiting on the database",
        )
    finally:
        release.set()
        await _closing(clients, caches)


EXERCISES: dict[str, Exercise] = {
    "single_flight": Exercise(
        "Single-flight",
        "a class whose async do(key, fn) runs fn() once for all concurrent callers of key",
        [
            ("50 concurrent callers of one key share one call and its value", _sf_one_call),
            ("calls for different keys run side by side", _sf_keys_apart),
            ("every caller gets the shared call's error", _sf_error_shared),
            ("nothing is cached: a caller after the call ended starts a new one", _sf_not_cached),
            ("a failed call is not remembered: the next caller tries again", _sf_failure_forgotten),
        ],
        bonus=[("one caller giving up does not cancel the call for the others", _sf_cancel_one)],
    ),
    "tick_batcher": Exercise(
        "A per-tick batcher",
        "a class MyBatcher(mget) with async get(key); mget(keys) returns their values in order",
        [
            ("one caller gets its key's value", _tb_one),
            ("callers in one tick share one mget, each gets its own value", _tb_one_tick),
            ("a caller in a later tick goes into the next batch", _tb_next_tick),
            ("a failed mget reaches every caller in its batch; the next batch works", _tb_error),
            ("a caller that gives up does not break the batch for the others", _tb_cancel),
        ],
        bonus=[("a key asked for twice in one tick is sent once", _tb_same_key)],
    ),
    "lock_release": Exercise(
        "Releasing a Redis lock",
        "a Lua script: KEYS[1] the lock, ARGV[1] your token; returns 1 if released, else 0",
        [
            ("releases a lock that holds your token", _release_own),
            ("leaves a lock that holds someone else's token alone", _release_other),
            ("answers 0 for a lock that has already expired", _release_missing),
        ],
        needs_redis=True,
        kind="script",
    ),
    "xfetch_verdict": Exercise(
        "The XFetch verdict",
        "a function refresh_early(now, expiry, delta, beta, rand) -> bool",
        [
            ("far from expiry it does not refresh", _xf_far),
            ("at and after expiry it always refreshes", _xf_expired),
            ("it follows now - delta * beta * ln(rand) >= expiry", _xf_formula),
            ("beta stretches the gap", _xf_beta),
            ("50 ms before expiry, about e^(-t / (beta * delta)) of reads refresh", _xf_chance),
        ],
    ),
    "fenced_fill": Exercise(
        "A fenced fill",
        "a Lua script: KEYS[1] value, KEYS[2] fence; ARGV[1] data, ARGV[2] px, ARGV[3] token; "
        "returns 1 if stored, else 0",
        [
            ("stores when the fence still holds the filler's token", _ff_current),
            ("refuses when a write moved the fence since", _ff_moved),
            ("refuses a token the fence never held (equality, not 'not older')", _ff_unknown),
            ("stores with the TTL it is given", _ff_ttl),
        ],
        needs_redis=True,
        kind="script",
    ),
    "near_cache": Exercise(
        "An L1 that invalidations keep true",
        "a class with start_fill(key), fill(key, value, ticket), get(key), on_invalidate(key), "
        "on_disconnect() and on_subscribed()",
        [
            ("a fill with nothing in between is stored", _l1_fill),
            ("an invalidation drops its key and only its key", _l1_invalidate),
            ("a fill whose read began before an invalidation of its key is refused", _l1_late_fill),
            ("losing the connection flushes everything, fills in flight too", _l1_disconnect),
            ("the subscription coming back flushes again", _l1_resubscribed),
        ],
    ),
    "catch_up": Exercise(
        "Replay, or flush",
        "an async function catch_up(redis, stream, last_id) -> (entries, must_flush)",
        [
            ("replays the entries after the last id when nothing was trimmed", _cu_replay),
            ("returns nothing to replay when up to date", _cu_current),
            ("asks for a flush when a trim passed the last id", _cu_trimmed_past),
            ("does not flush when the trim removed only applied entries", _cu_trimmed_behind),
        ],
        needs_redis=True,
    ),
    "take_over": Exercise(
        "Take over a dead consumer's entries",
        "an async function take_over(redis, stream, group, consumer, min_idle_ms) -> entries",
        [
            ("claims the idle entries of a dead consumer, not a live one's", _to_dead_only),
            ("claims nothing that was delivered a moment ago", _to_nothing_fresh),
        ],
        needs_redis=True,
    ),
    "breaker": Exercise(
        "A circuit breaker",
        "a class Breaker(failures, reset_after, clock) with allow(), success(), failure() and "
        "state ('closed', 'open' or 'half_open')",
        [
            ("a new breaker lets every call through", _br_closed),
            ("consecutive failures open it", _br_opens),
            ("a success in between resets the count", _br_success_resets),
            ("after reset_after it lets exactly one probe through", _br_probe),
            ("the probe's result closes or reopens it", _br_probe_result),
        ],
    ),
    "stock_cache": Exercise(
        "A cache for a stock level",
        "a function make_cache(redis, namespace) -> cachelab.Cache",
        [
            ("a cold key costs one load across instances", _stock_one_load),
            ("a load that overlapped a delete leaves no old value behind", _stock_no_stale_set),
            ("during a reload the other readers are answered at once", _stock_no_waiting),
        ],
        needs_redis=True,
    ),
}
"""Every exercise, by the name the notebooks pass to :func:`check`."""


def _blank(answer: Any, kind: str) -> bool:
    """A stub nobody has filled in yet: no answer, or a script of comments only."""
    if kind == "script":
        if not isinstance(answer, str):
            return answer is None
        code = [line for line in answer.splitlines() if line.strip()]
        return all(line.strip().startswith("--") for line in code)
    return answer is None


async def _run(test: Test, answer: Any, env: _Env) -> tuple[bool, str, bool]:
    """(passed, detail, not_started) for one hidden test."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await test(answer, env)
    except NotImplementedError:
        return False, "not implemented yet", True
    except Mismatch as exc:
        return False, str(exc), False
    except TimeoutError:
        return (
            False,
            (
                f"it did not finish within {CHECK_TIMEOUT_S:g} s: is a caller waiting "
                "for something that never happens?"
            ),
            False,
        )
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return False, f"it raised {type(exc).__name__}: {text}"[:300], False
    return True, "", False


async def check(name: str, answer: Any, *, redis: Any = None) -> Verdict:
    """Run exercise ``name``'s hidden tests on ``answer`` and say how it went.

    ``answer`` is what the stub cell defines (a class, a function, or Lua source text); exercises
    that talk to Redis need the notebook's client as ``redis``. Never raises for a wrong answer.
    """
    try:
        exercise = EXERCISES[name]
    except KeyError:
        raise ConfigurationError(
            f"no exercise {name!r}; the exercises are {', '.join(EXERCISES)}"
        ) from None
    if exercise.needs_redis and redis is None:
        raise ConfigurationError(f"exercise {name!r} talks to Redis: pass redis=redis")
    verdict = Verdict(name, exercise.title, kind=exercise.kind)
    if _blank(answer, exercise.kind):
        verdict.not_started = True
        return verdict
    if exercise.kind == "script" and not isinstance(answer, str):
        verdict.outcomes.append(
            Outcome(f"the answer is {exercise.answer}", False, f"got {type(answer).__name__}")
        )
        return verdict
    if exercise.kind == "callable" and not callable(answer):
        verdict.outcomes.append(
            Outcome(f"the answer is {exercise.answer}", False, f"got {type(answer).__name__}")
        )
        return verdict
    env = _Env(redis)
    try:
        for tests, bonus in ((exercise.tests, False), (exercise.bonus, True)):
            for description, test in tests:
                passed, detail, not_started = await _run(test, answer, env)
                if not_started and not bonus:
                    verdict.not_started = True
                    verdict.outcomes.clear()
                    return verdict
                verdict.outcomes.append(Outcome(description, passed, detail, bonus))
    finally:
        await env.cleanup()
    return verdict
