"""The "build it yourself" exercises: reference solutions pass, the notebooks' stubs do not, and
answers that are wrong in the usual ways are caught with a verdict that says why."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from pathlib import Path

import pytest
from helpers import REAL_URL

import cachelab
from cachelab.exercises import EXERCISES, Verdict, check

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECKER = re.compile(r"await check\(\s*\"(\w+)\",\s*(\w+)")

pytestmark = pytest.mark.redis


@pytest.fixture
async def redis():
    client = await cachelab.connect(REAL_URL, quiet=True)
    yield client
    await client.aclose()


def load_solution(path: Path) -> dict:
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def stubs() -> list[tuple[str, str, str, str]]:
    """(notebook, exercise, answer name, stub source) for every stub cell of every notebook."""
    found = []
    for path in NOTEBOOKS:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        for i, cell in enumerate(cells):
            if "exercise-stub" not in cell["metadata"].get("tags", []):
                continue
            checker = "".join(cells[i + 1]["source"])
            match = CHECKER.search(checker)
            assert match, f"{path.name}: the cell after a stub must call check(name, answer)"
            found.append((path.stem, match.group(1), match.group(2), "".join(cell["source"])))
    return found


SOLVED = {
    "single_flight": ("01_single_flight.py", "MySingleFlight"),
    "tick_batcher": ("01b_tick_batcher.py", "MyBatcher"),
    "lock_release": ("02_lock_release.py", "RELEASE_SCRIPT"),
    "xfetch_verdict": ("03_xfetch_verdict.py", "refresh_early"),
    "fenced_fill": ("03b_fenced_fill.py", "FENCED_FILL"),
    "near_cache": ("04_near_cache.py", "MyNearCache"),
    "catch_up": ("05_catch_up.py", "catch_up"),
    "take_over": ("05b_take_over.py", "take_over"),
    "breaker": ("06_breaker.py", "MyBreaker"),
    "stock_cache": ("07_stock_cache.py", "make_cache"),
}


def test_every_exercise_has_a_solution_and_a_stub():
    assert set(SOLVED) == set(EXERCISES)
    assert {name for _nb, name, _answer, _src in stubs()} == set(EXERCISES)
    for file, answer in SOLVED.values():
        assert answer in load_solution(SOLUTIONS / file), f"{file} defines no {answer}"


@pytest.mark.parametrize("name", sorted(SOLVED))
async def test_the_reference_solution_passes(name, redis):
    file, answer = SOLVED[name]
    verdict = await check(name, load_solution(SOLUTIONS / file)[answer], redis=redis)
    assert verdict.passed, str(verdict)
    assert all(o.passed for o in verdict.outcomes), str(verdict)  # the bonus checks too


@pytest.mark.parametrize(
    ("notebook", "name", "answer", "source"), stubs(), ids=lambda v: v if "\n" not in v else ""
)
async def test_the_notebook_stub_does_not_pass(notebook, name, answer, source, redis):
    namespace: dict = {}
    exec(compile(source, f"{notebook} stub", "exec"), namespace)
    verdict = await check(name, namespace[answer], redis=redis)
    assert not verdict.passed
    assert verdict.not_started, f"{notebook}: a blank stub should read as 'not started': {verdict}"
    assert "not started yet" in str(verdict)


# --- wrong answers are caught, and the verdict says why ------------------------------------------


class CachingFlight:
    """Single-flight that also caches: the mistake of keeping the result after the call."""

    def __init__(self):
        self.results = {}

    async def do(self, key, fn):
        if key not in self.results:
            self.results[key] = await fn()
        return self.results[key]


async def test_a_flight_that_caches_fails_with_a_reason(redis):
    verdict = await check("single_flight", CachingFlight, redis=redis)
    assert not verdict.passed and not verdict.not_started
    failed = [o for o in verdict.outcomes if not o.passed and not o.bonus]
    assert any("not a cache" in o.detail for o in failed), str(verdict)
    assert "expected" in str(verdict) and "✘" in str(verdict)


class OneMgetPerKey:
    """A "batcher" that sends every key on its own: correct answers, no batching."""

    def __init__(self, mget):
        self.mget = mget

    async def get(self, key):
        return (await self.mget([key]))[0]


class TrustingBatcher:
    """Batches per tick, but resolves every future it holds, a cancelled caller's too."""

    def __init__(self, mget):
        self.mget, self.waiting, self.sending = mget, [], set()

    async def get(self, key):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.waiting:
            loop.call_soon(self.flush)
        self.waiting.append((key, future))
        return await future

    def flush(self):
        batch, self.waiting = self.waiting, []
        task = asyncio.ensure_future(self.send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def send(self, batch):
        try:
            values = await self.mget([key for key, _future in batch])
        except Exception as exc:
            for _key, future in batch:
                future.set_exception(exc)
            return
        for (_key, future), value in zip(batch, values, strict=True):
            future.set_result(value)  # InvalidStateError on a cancelled caller's future


async def test_a_batcher_that_sends_one_mget_per_key_fails_with_a_reason(redis):
    verdict = await check("tick_batcher", OneMgetPerKey, redis=redis)
    assert not verdict.passed and not verdict.not_started
    failed = {o.description: o.detail for o in verdict.outcomes if not o.passed}
    assert set(failed) == {
        "callers in one tick share one mget, each gets its own value",
        "a key asked for twice in one tick is sent once",  # bonus
    }, str(verdict)
    detail = failed["callers in one tick share one mget, each gets its own value"]
    assert "expected 1 mget call for 20 callers in one tick, saw 20 calls" in detail
    assert "loop.call_soon" in detail


async def test_a_batcher_that_answers_a_cancelled_caller_fails_the_cancel_check(redis):
    verdict = await check("tick_batcher", TrustingBatcher, redis=redis)
    failed = {o.description: o.detail for o in verdict.outcomes if not o.passed and not o.bonus}
    reason = failed.pop("a caller that gives up does not break the batch for the others")
    assert failed == {}, str(verdict)
    assert "InvalidStateError" in reason and "callers still waiting after 2 s" in reason


async def test_a_plain_del_release_fails_on_someone_elses_lock(redis):
    verdict = await check("lock_release", "return redis.call('del', KEYS[1])", redis=redis)
    failed = {o.description: o.detail for o in verdict.outcomes if not o.passed}
    assert list(failed) == ["leaves a lock that holds someone else's token alone"], str(verdict)
    assert (
        "a plain DEL would delete *their* lock"
        in failed["leaves a lock that holds someone else's token alone"]
    )


async def test_a_fill_that_refuses_only_older_tokens_fails_the_equality_check(redis):
    kleppmann = """
    if tonumber(redis.call('get', KEYS[2]) or '0') <= tonumber(ARGV[3]) then
      redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
      return 1
    end
    return 0
    """
    verdict = await check("fenced_fill", kleppmann, redis=redis)
    failed = [o.description for o in verdict.outcomes if not o.passed]
    assert failed == ["refuses a token the fence never held (equality, not 'not older')"]


async def test_a_stuck_answer_is_failed_not_waited_for(redis, monkeypatch):
    monkeypatch.setattr("cachelab.exercises.CHECK_TIMEOUT_S", 0.2)

    class Forever:
        async def do(self, key, fn):
            await __import__("asyncio").Event().wait()

    verdict = await check("single_flight", Forever, redis=redis)
    assert not verdict.passed
    assert all("did not finish within 0.2 s" in o.detail for o in verdict.outcomes if not o.bonus)


async def test_a_cache_without_fences_or_leases_fails_the_stock_exercise(redis):
    def make_cache(client, namespace):
        return cachelab.Cache(client, namespace=namespace, ttl=60, policy="local")

    verdict = await check("stock_cache", make_cache, redis=redis)
    failed = [o.description for o in verdict.outcomes if not o.passed]
    assert "a cold key costs one load across instances" in failed
    assert "during a reload the other readers are answered at once" in failed


def test_a_verdict_renders_for_jupyter():
    verdict = Verdict("x", "An exercise", not_started=True)
    assert not verdict and "not started yet" in verdict._repr_markdown_()


async def test_unknown_exercises_and_a_missing_client_are_configuration_errors():
    with pytest.raises(cachelab.ConfigurationError, match="no exercise 'nope'"):
        await check("nope", object())
    with pytest.raises(cachelab.ConfigurationError, match="pass redis=redis"):
        await check("lock_release", "return 1")
