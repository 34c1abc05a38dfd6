"""Cache-hit throughput: cachelab (batching on and off) against raw redis-py and redis-benchmark.

Everything runs in one process and one run, against the same server, through
:func:`cachelab.experiments.measure_hit_path`: every contender reads warm keys with the same pool
size, contenders alternate within each round (ABCD, BCDA, ...) so the machine's drift touches all
alike, and the figures are medians over rounds of reads/s and of ratios taken within a round.

- *raw redis-py GET + json.loads*: the baseline, with hiredis (as cachelab has it);
- *cachelab, batching off*: ``Cache(..., batching=False)``: one redis-py command per read;
- *cachelab, batching on* (the default): reads issued in one event-loop tick go out as one MGET
  on a pipelined connection parsed by hiredis;
- *redis-benchmark GET*: the server's limit without pipelining, at the same number of
  connections (a separate process in C: the ceiling, not a contender).

Usage:  uv run python benchmarks/hit_path.py [--url URL] [--rounds 7] [--reads 20000]
        [--concurrency 1,10,50,200] [--write docs/benchmarks.md]
Targets (issue 11): at 50 coroutines cachelab get_or_set >= 8x raw (goal 10x) and within 2x of
redis-benchmark's non-pipelined GET rate at 50 connections; at 1 coroutine >= 0.95x raw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path

from _report import machine_line, write_section

import cachelab
from cachelab.experiments import measure_hit_path
from cachelab.experiments.hitpath import BATCHING_OFF, BATCHING_ON, RAW, REDIS_BENCHMARK

CONCURRENT = 50


def ratios(frame, contender: str, baseline: str, concurrency: int) -> list[float]:
    """Per-round ratios of two contenders' reads/s at one concurrency."""
    rows = frame[frame["concurrency"] == concurrency]
    mine = rows[rows["contender"] == contender].set_index("round")["reads_per_s"]
    base = rows[rows["contender"] == baseline].set_index("round")["reads_per_s"]
    return [mine[r] / base[r] for r in mine.index if r in base.index]


async def measure(url: str | None, rounds: int, reads: int, levels: list[int]) -> dict:
    redis = await cachelab.connect(url, quiet=True)
    try:
        frame = await measure_hit_path(redis, concurrency=levels, reads=reads, rounds=rounds)
        return {"server": cachelab.source_of(redis).describe(), "frame": frame}
    finally:
        await redis.aclose()


def markdown(report: dict, rounds: int, reads: int, machine: str) -> str:
    frame = report["frame"]
    contenders = [RAW, BATCHING_OFF, BATCHING_ON, REDIS_BENCHMARK]
    levels = sorted(frame["concurrency"].unique())
    lines = [
        "## Hit path: where the time goes, and what batching changes",
        "",
        f"Server: {report['server']}. {reads:,} reads per contender per run, {rounds} rounds, "
        "contenders alternating within each round (ABCD, BCDA, ...), every Python contender on "
        "its own client with the same pool (64 connections) and hiredis. *Reads/s* are medians "
        "over rounds; *ratios* are medians of the per-round ratios. redis-benchmark runs "
        f"`GET` on the same warm keys with as many connections as coroutines. {machine} "
        "Produced by `uv run python benchmarks/hit_path.py`.",
        "",
        "| coroutines | " + " | ".join(contenders) + " |",
        "|---:|" + "---:|" * len(contenders),
    ]
    for level in levels:
        cells = []
        for name in contenders:
            rows = frame[(frame["concurrency"] == level) & (frame["contender"] == name)]
            cells.append(f"{rows['reads_per_s'].median():,.0f}" if len(rows) else "—")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    seq = statistics.median(ratios(frame, BATCHING_ON, RAW, 1))
    seq_off = statistics.median(ratios(frame, BATCHING_OFF, RAW, 1))
    con = statistics.median(ratios(frame, BATCHING_ON, RAW, CONCURRENT))
    con_off = statistics.median(ratios(frame, BATCHING_OFF, RAW, CONCURRENT))
    bench = ratios(frame, REDIS_BENCHMARK, BATCHING_ON, CONCURRENT)
    checks = [
        (f"{CONCURRENT} coroutines: batching on >= 8x raw (goal 10x)", con >= 8, f"{con:.1f}x"),
        (
            f"{CONCURRENT} coroutines: within 2x of redis-benchmark at {CONCURRENT} connections",
            bool(bench) and statistics.median(bench) <= 2,
            f"redis-benchmark / cachelab = {statistics.median(bench):.2f}" if bench else "n/a",
        ),
        ("1 coroutine: batching on >= 0.95x raw", seq >= 0.95, f"{seq:.2f}x"),
    ]
    met = all(ok for _what, ok, _value in checks)
    lines += [
        "",
        f"Ratios to raw redis-py: 1 coroutine: batching on {seq:.2f}x, off {seq_off:.2f}x; "
        f"{CONCURRENT} coroutines: batching on {con:.1f}x, off {con_off:.2f}x.",
        "",
        f"Targets (issue 11): **{'met' if met else 'not all met'}**.",
        "",
    ]
    lines += [f"- {'✅' if ok else '❌'} {what}: {value}" for what, ok, value in checks]
    skipped = frame.attrs.get("skipped", {})
    if skipped:
        lines += ["", *(f"- {name} was not run: {why}." for name, why in skipped.items())]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--concurrency", default="1,10,50,200")
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    before = os.getloadavg()
    report = asyncio.run(measure(args.url, args.rounds, args.reads, levels))
    text = markdown(report, args.rounds, args.reads, machine_line(before))
    print(text)
    if args.write:
        write_section(args.write, text, "hit_path")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
