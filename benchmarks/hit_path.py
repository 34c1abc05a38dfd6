"""Cache-hit cost: cachelab's get_or_set against a raw redis-py GET + json.loads.

Both run in the same event loop against the same server, in alternating rounds (ABAB...), so
drift in the machine's speed affects both alike; the figure reported is the median over rounds of
the throughput ratio cachelab / raw. Two shapes are measured:

- sequential: one coroutine, one request at a time (pure per-call overhead);
- concurrent: WORKERS coroutines, each reading its own keys (no coalescing can help cachelab:
  every request is a distinct key, so each one is a real GET).

Usage:  uv run python benchmarks/hit_path.py [--url URL] [--rounds 7] [--requests 2000]
        [--write docs/benchmarks.md]
Target (issue 2): cachelab >= 0.85 of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from pathlib import Path

from _report import write_section

import cachelab

WORKERS = 50
KEYS = 200


async def raw_reads(redis, keys: list[str], requests: int, workers: int) -> float:
    async def worker(offset: int) -> None:
        for i in range(offset, requests, workers):
            json.loads(await redis.get(keys[i % len(keys)]))

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return requests / (time.perf_counter() - start)


async def cachelab_reads(cache, keys: list[str], requests: int, workers: int) -> float:
    async def loader():
        raise AssertionError("a hit-path benchmark must never load")

    async def worker(offset: int) -> None:
        for i in range(offset, requests, workers):
            await cache.get_or_set(keys[i % len(keys)], loader)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return requests / (time.perf_counter() - start)


async def measure(url: str | None, rounds: int, requests: int) -> dict:
    redis = await cachelab.connect(url, quiet=True)
    source = cachelab.source_of(redis)
    namespace = f"bench:hit:{uuid.uuid4().hex[:8]}"
    cache = cachelab.Cache(redis, namespace=namespace, ttl=600)
    value = {"id": 1, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 0.97}
    keys = [f"k{i}" for i in range(KEYS)]
    raw_keys = [f"{namespace}:raw:{k}" for k in keys]
    results = {}
    try:
        for k, rk in zip(keys, raw_keys, strict=True):
            await cache.set(k, value)
            await redis.set(rk, json.dumps(value), ex=600)
        for shape, workers in (("sequential", 1), ("concurrent", WORKERS)):
            n = requests // 4 if workers == 1 else requests
            await raw_reads(redis, raw_keys, n, workers)  # warm up connections and caches
            await cachelab_reads(cache, keys, n, workers)
            raw, ours = [], []
            for _ in range(rounds):
                raw.append(await raw_reads(redis, raw_keys, n, workers))
                ours.append(await cachelab_reads(cache, keys, n, workers))
            ratios = [o / r for o, r in zip(ours, raw, strict=True)]
            results[shape] = {
                "raw_per_s": statistics.median(raw),
                "cachelab_per_s": statistics.median(ours),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
            }
        assert cache.stats.loads == 0 and cache.stats.misses == 0
    finally:
        await cache.clear()
        await redis.aclose()
    return {"server": source.describe(), "rounds": rounds, "requests": requests, **results}


def markdown(report: dict) -> str:
    lines = [
        "## Hit path: `get_or_set` against raw `GET` + `json.loads`",
        "",
        f"Server: {report['server']}. Median of {report['rounds']} alternating rounds; "
        f"concurrent = {WORKERS} coroutines on distinct keys. "
        "Produced by `uv run python benchmarks/hit_path.py`.",
        "",
        "| shape | raw GET + json.loads (req/s) | cachelab get_or_set (req/s) | ratio (median) "
        "| ratio (worst round) |",
        "|---|---:|---:|---:|---:|",
    ]
    for shape in ("sequential", "concurrent"):
        r = report[shape]
        lines.append(
            f"| {shape} | {r['raw_per_s']:,.0f} | {r['cachelab_per_s']:,.0f} | "
            f"{r['ratio']:.2f} | {r['ratio_min']:.2f} |"
        )
    lines += ["", "Target: ratio >= 0.85.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file")
    args = parser.parse_args()
    report = asyncio.run(measure(args.url, args.rounds, args.requests))
    text = markdown(report)
    print(text)
    if args.write:
        write_section(args.write, text, "hit_path")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
