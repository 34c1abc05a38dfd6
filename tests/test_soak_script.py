"""benchmarks/soak.py keeps working: a tiny soak runs clean, and its stale-read judge is right.

Plus the bug the soak found: a lookup that starts after another process's invalidation must not
join a load that began before the write (it received, and kept in L1, the superseded value).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REAL_URL

import cachelab
from cachelab.connection import clone_client

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "soak.py"


def load_soak(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports its sibling benchmarks
    spec = importlib.util.spec_from_file_location("soak_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.redis
@pytest.mark.timeout(180)
def test_a_tiny_soak_exits_0_with_zero_errors_and_a_complete_report(tmp_path):
    out = tmp_path / "soak.json"
    command = [
        sys.executable, str(SCRIPT), "--url", REAL_URL, "--processes", "2",
        "--concurrency", "10", "--duration", "3", "--warmup-s", "1", "--think-ms", "20",
        "--keys", "40", "--write-ratio", "0.2", "--loader-ms", "5", "--jitter-ms", "2",
        "--pool", "8", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report) >= {"setup", "summary", "stale", "workers", "checks", "ok"}
    summary, stale = report["summary"], report["stale"]
    assert report["ok"] is True
    assert summary["errors"] == 0
    assert summary["stale_beyond_bound"] == stale["beyond_bound"] == 0
    assert stale["phantom"] == 0
    assert summary["processes"] == 2 and summary["concurrency"] == 20
    for field in ("requests", "req_per_s", "duration_s", "max_tasks", "max_lock_table",
                  "peak_in_flight", "near_hit_ratio", "scale"):  # fmt: skip
        assert field in summary, field
    counts = summary["counts"]
    assert (
        summary["requests"]
        == counts["reads"] + counts["set"] + counts["write_through"] + (counts["delete"])
    )
    # the mix really ran: reads, every kind of write, and invalidations reaching the other worker
    assert counts["reads"] > 0 and counts["set"] > 0
    assert counts["write_through"] > 0 and counts["delete"] > 0
    assert stale["reads"] == counts["reads"] and stale["writes"] == summary["invalidator"]["sent"]
    assert summary["invalidator"]["applied"] > 0
    assert [w["worker"] for w in report["workers"]] == [0, 1]
    for worker in report["workers"]:
        assert worker["errors"] == 0
        assert len(worker["rss"]) == 2 and all(r > 0 for r in worker["rss"])
        before, _warm, _max, _deadline, after = worker["tasks"]
        assert after <= before
        assert len(worker["connections"]) == 4
        assert worker["lock_tables_after"]["writer_locks"] == 0
        assert worker["lock_tables_after"]["policy_loads"] == 0
    assert [ok for _what, ok, _got in report["checks"]] == [True] * 6
    assert "| req/s |" in done.stdout and "Checks: **all met**" in done.stdout


def test_bad_arguments_are_refused_before_anything_runs():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--processes", "0", "--write-ratio", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--processes must be >= 1" in done.stderr
    assert "--write-ratio must be in [0, 1]" in done.stderr


def write_logs(soak, directory: Path, writes: list[tuple], reads: list[tuple]) -> None:
    (directory / "writes-0.bin").write_bytes(b"".join(soak.WRITE.pack(*w) for w in writes))
    (directory / "reads-0.bin").write_bytes(b"".join(soak.READ.pack(*r) for r in reads))


def test_the_stale_judge_measures_lag_from_the_write_that_superseded_the_value(
    tmp_path, monkeypatch
):
    soak = load_soak(monkeypatch)
    hit, l1, stale = (soak.SOURCES.index(s) for s in ("hit", "l1", "stale"))
    # key 0: version 1 returned at t=10, version 2 at t=20 (a write's start is irrelevant)
    write_logs(
        soak,
        tmp_path,
        writes=[(0, 1, 9.9, 10.0, 0), (0, 2, 19.0, 20.0, 2)],
        reads=[
            (0, 0, 9.0, 9.1, hit),  # v0 before v1's write returned: fine
            (0, 0, 10.5, 10.6, l1),  # v0, 0.5 s after v1 returned: behind, within the bound
            (0, 0, 13.0, 13.1, l1),  # v0, 3 s after: beyond a 2 s bound
            (0, 1, 25.0, 25.2, hit),  # v1, 5 s after v2 returned: beyond
            (0, 2, 30.0, 30.1, l1),  # the latest version: fine
            (0, 0, 40.0, 40.1, stale),  # marked stale by the policy: counted apart
            (1, 0, 50.0, 50.1, hit),  # key 1 was never written: v0 is current
            (0, 3, 60.0, 60.1, hit),  # a version nobody committed
        ],
    )
    judged = soak.staleness(tmp_path, 1, {"k0": 2}, bound_s=2.0)
    assert judged["reads"] == 8 and judged["writes"] == 2
    assert judged["behind"] == 3
    assert judged["beyond_bound"] == 2
    assert judged["behind_by_source"] == {"l1": 2, "hit": 1}
    assert judged["beyond_by_source"] == {"l1": 1, "hit": 1}
    assert judged["marked_stale"] == 1
    assert judged["phantom"] == 1
    assert judged["lag_max_ms"] == pytest.approx(5000.0)
    assert sorted(e["lag_s"] for e in judged["examples"]) == [3.0, 5.0]
    # a bound above the largest lag accepts the same reads
    assert soak.staleness(tmp_path, 1, {"k0": 2}, bound_s=5.5)["beyond_bound"] == 0


@pytest.mark.parametrize("policy", ["local", "distributed", "lease"])
async def test_a_lookup_after_a_remote_invalidation_does_not_join_an_older_load(
    fake_redis, namespace, policy
):
    """Process B loads v1 (slowly); process A commits v2 and deletes the key; once B has applied
    the invalidation, a new lookup in B must load v2, not share the load that read v1."""
    other = clone_client(fake_redis)  # its own pool and subscriber: another process, in effect

    def cache(client) -> cachelab.Cache:
        return cachelab.Cache(
            client, namespace=namespace, ttl=60, policy=policy,
            near=cachelab.NearCache(), invalidation="pubsub",
        )  # fmt: skip

    a, b = cache(fake_redis), cache(other)
    database = {"version": 1}
    gate, loading = asyncio.Event(), asyncio.Event()
    loads: list[int] = []

    async def loader():
        version = database["version"]  # read when the query starts
        loads.append(version)
        loading.set()
        if len(loads) == 1:
            await gate.wait()  # the first load is slow
        return {"v": version}

    try:
        await a.get("start")
        await b.get("start")
        first = asyncio.create_task(b.get_or_set("k", loader))
        await asyncio.wait_for(loading.wait(), 5)
        database["version"] = 2
        await a.delete("k")
        async with asyncio.timeout(5):
            while b.invalidator.stats.applied < 1:  # noqa: ASYNC110 - a counter, not an event
                await asyncio.sleep(0.01)
        second = asyncio.create_task(b.get_or_set("k", loader))
        await asyncio.sleep(0.1)
        gate.set()
        async with asyncio.timeout(10):
            assert await first == {"v": 1}  # it started before the write: v1 is fair
            assert await second == {"v": 2}
        assert loads == [1, 2]
        assert b.near.get("k", count=False) in ((True, {"v": 2}), (False, None))
    finally:
        gate.set()
        await a.aclose()
        await b.aclose()
        await other.aclose()
