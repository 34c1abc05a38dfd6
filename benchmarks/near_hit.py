"""L1 hit throughput: cachelab get_or_set with a NearCache against raw redis-py GET + json.loads.

What is measured
----------------
Requests per second for reading a cached value that is already there, through four contenders
that run in the same event loop, against the same server, in the same run:

- ``raw``: redis-py ``await redis.get(key)`` + ``json.loads`` of the same value (the yardstick);
- ``l1``: ``Cache(..., near=NearCache())``, ``get_or_set``: hits served from the in-process L1;
- ``l1+pubsub``: the same with ``invalidation="pubsub"``, as an L1 kept coherent is deployed
  (each call also checks that the invalidator is listening);
- ``redis``: ``Cache(...)`` without L1 (every hit is a Redis GET; context, as in hit_path.py).

The NearCache has its defaults (10,000 entries, 5 s maximum age), so an entry older than 5 s is
re-read from Redis once: that is part of the L1's cost and the L1 hit ratio is reported.

Rounds alternate (ABCD, BCDA, ...), so drift in the machine's speed hits every contender alike;
each round of a contender runs about ``--round-s`` seconds (the request count is calibrated from a
warm-up). The figure reported is the median over rounds of the per-round ratio l1 / raw. Two
shapes: *sequential* (one coroutine, one request at a time: the per-call cost) and *concurrent*
(``WORKERS`` coroutines on distinct keys: raw GETs overlap on the pool's connections, which helps
raw; L1 hits never wait for I/O, so concurrency changes nothing for them).

Usage
-----
    uv run python benchmarks/near_hit.py                      # writes the near_hit section
    uv run python benchmarks/near_hit.py --rounds 9 --round-s 0.5 --url redis://... --no-write

By default it uses ``cachelab.connect()`` (``REDIS_URL``, else the shared server on
127.0.0.1:6379, else an embedded one) and updates the ``near_hit`` section of docs/benchmarks.md.

Target (issue 4, section 8): L1 hits >= 20x the throughput of a raw redis-py GET.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from pathlib import Path

from _report import write_section

import cachelab

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 50
KEYS = 200
TARGET_RATIO = 20.0
VALUE = {"id": 1, "name": "Ada Lovelace", "tags": ["math", "engines"], "score": 0.97}
CONTENDERS = {
    "raw": "raw redis-py GET + json.loads",
    "l1": "cachelab get_or_set, L1 (NearCache)",
    "l1+pubsub": "cachelab get_or_set, L1 + pub/sub invalidator",
    "redis": "cachelab get_or_set, no L1 (Redis GET)",
}
MAIN = "l1+pubsub"  # the contender the target is judged on: an L1 as it is deployed


async def never_load():
    raise AssertionError("a hit benchmark must never load")


def reader(contender: str, redis, caches: dict, keys: list[str], raw_keys: list[str]):
    """A coroutine function reading request i (the same key sequence for every contender)."""
    if contender == "raw":

        async def read(i: int) -> None:
            json.loads(await redis.get(raw_keys[i % KEYS]))

    else:
        cache = caches[contender]

        async def read(i: int) -> None:
            await cache.get_or_set(keys[i % KEYS], never_load)

    return read


async def timed(read, requests: int, workers: int) -> float:
    """Requests per second for ``requests`` reads split over ``workers`` coroutines."""

    async def worker(offset: int) -> None:
        for i in range(offset, requests, workers):
            await read(i)

    start = time.perf_counter()
    if workers == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(w) for w in range(workers)))
    return requests / (time.perf_counter() - start)


async def measure(url: str | None, rounds: int, round_s: float) -> dict:
    redis = await cachelab.connect(url, quiet=True)
    source = cachelab.source_of(redis)
    namespace = f"bench:near:{uuid.uuid4().hex[:8]}"
    caches = {
        "l1": cachelab.Cache(redis, namespace=namespace, ttl=600, near=cachelab.NearCache()),
        "l1+pubsub": cachelab.Cache(
            redis, namespace=namespace, ttl=600, near=cachelab.NearCache(), invalidation="pubsub"
        ),
        "redis": cachelab.Cache(redis, namespace=namespace, ttl=600),
    }
    keys = [f"k{i}" for i in range(KEYS)]
    raw_keys = [f"{namespace}:raw:{k}" for k in keys]
    names = list(CONTENDERS)
    results: dict = {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    try:
        writer = caches["redis"]
        for k, rk in zip(keys, raw_keys, strict=True):
            await writer.set(k, VALUE)
            await redis.set(rk, json.dumps(VALUE), ex=600)
        for shape, workers in (("sequential", 1), ("concurrent", WORKERS)):
            reads = {n: reader(n, redis, caches, keys, raw_keys) for n in names}
            counts = {}
            for n in names:  # warm up (connections, L1 fills, scripts) and calibrate
                await timed(reads[n], 2 * KEYS, workers)
                rate = await timed(reads[n], 4 * KEYS, workers)
                counts[n] = max(2 * KEYS, int(rate * round_s))
            for cache in caches.values():
                if cache.near is not None:
                    cache.near.stats = type(cache.near.stats)()
            per_s: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                for n in names[r % len(names) :] + names[: r % len(names)]:
                    per_s[n].append(await timed(reads[n], counts[n], workers))
            ratios = {
                n: [o / raw for o, raw in zip(per_s[n], per_s["raw"], strict=True)]
                for n in names
                if n != "raw"
            }
            results[shape] = {
                "workers": workers,
                "requests": counts,
                "per_s": {n: statistics.median(v) for n, v in per_s.items()},
                "us_per_call": {n: 1e6 / statistics.median(v) for n, v in per_s.items()},
                "ratio": {n: statistics.median(v) for n, v in ratios.items()},
                "ratio_min": {n: min(v) for n, v in ratios.items()},
                "near": {
                    n: c.near.stats.as_dict() for n, c in caches.items() if c.near is not None
                },
            }
        for cache in caches.values():
            assert cache.stats.loads == 0, "a hit benchmark must never load"
    finally:
        await caches["redis"].clear()
        for cache in caches.values():
            await cache.aclose()
        await redis.aclose()
    return {
        "server": source.describe(),
        "rounds": rounds,
        "round_s": round_s,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "run_time_s": time.perf_counter() - started,
        "date": time.strftime("%Y-%m-%d"),
        **results,
    }


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _hit_ratio(stats: dict) -> float:
    total = stats["hits"] + stats["misses"]
    return stats["hits"] / total if total else float("nan")


def verdicts(report: dict) -> list[tuple[str, bool, str]]:
    out = []
    for shape in ("sequential", "concurrent"):
        r = report[shape]
        out.append(
            (
                f"{shape}: L1 + pub/sub >= {TARGET_RATIO:g}x raw",
                r["ratio"][MAIN] >= TARGET_RATIO,
                f"{r['ratio'][MAIN]:.1f}x (worst round {r['ratio_min'][MAIN]:.1f}x)",
            )
        )
    return out


def markdown(report: dict) -> str:
    lb, la = report["load_before"], report["load_after"]
    lines = [
        "## L1 hits: `get_or_set` with a `NearCache` against raw `GET` + `json.loads`",
        "",
        f"Server: {report['server']}. Median of {report['rounds']} alternating rounds "
        f"(ABCD, BCDA, ...) of about {report['round_s']:g} s per contender; *ratio* is the "
        "median of the per-round ratios to raw, in the same event loop. Sequential = one "
        f"coroutine; concurrent = {WORKERS} coroutines on distinct keys. NearCache defaults "
        "(10,000 entries, 5 s maximum age). "
        f"Machine: {report['cpus']} CPUs, load average {lb[0]:.2f} (1 min) / {lb[1]:.2f} (5 min) "
        f"before, {la[0]:.2f} / {la[1]:.2f} after; run time {report['run_time_s']:.0f} s "
        f"({report['date']}). Produced by `uv run python benchmarks/near_hit.py`.",
        "",
        "| shape | contender | req/s | µs / call | ratio to raw (median) | ratio (worst round) "
        "| L1 hit ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for shape in ("sequential", "concurrent"):
        r = report[shape]
        for n, label in CONTENDERS.items():
            ratio = "1" if n == "raw" else f"{r['ratio'][n]:.1f}x"
            worst = "" if n == "raw" else f"{r['ratio_min'][n]:.1f}x"
            hits = f"{_hit_ratio(r['near'][n]):.2%}" if n in r["near"] else ""
            lines.append(
                f"| {shape} | {label} | {_rate(r['per_s'][n])} | {r['us_per_call'][n]:.1f} | "
                f"{ratio} | {worst} | {hits} |"
            )
    checks = verdicts(report)
    met = all(ok for _, ok, _ in checks)
    lines += [
        "",
        f"Target (issue 4): L1 hits >= {TARGET_RATIO:g}x raw GET throughput, judged on the L1 "
        "with its pub/sub invalidator: " + ("**met**." if met else "**not met**."),
        "",
        *(f"- {'✅' if ok else '❌ missed:'} {what}: {got}" for what, ok, got in checks),
        "",
    ]
    seq = report["sequential"]["us_per_call"]
    lines += [
        "Notes:",
        "",
        f"- An L1 hit costs {seq['l1']:.1f} µs here against {seq['raw']:.0f} µs for a raw GET; "
        f"with the pub/sub invalidator it costs {seq[MAIN]:.1f} µs: every call also checks that "
        "the invalidator is still listening (`Cache._listening()`), so a listener that died is "
        "restarted, after an L1 flush, before anything is served from L1. Each hit of a dict "
        "or list decodes a fresh copy from the kept bytes (immutable values are kept as they "
        "are).",
        "- L1 misses are entries older than the NearCache's 5 s maximum age, re-read from Redis.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default=None, help="Redis URL (default: cachelab.connect())")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--round-s", type=float, default=0.5, help="seconds per contender-round")
    parser.add_argument("--write", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--json", type=Path, default=None, help="also dump the report here")
    args = parser.parse_args()
    if args.rounds < 1 or args.round_s <= 0:
        parser.error("--rounds must be >= 1 and --round-s > 0")
    report = asyncio.run(measure(args.url, args.rounds, args.round_s))
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if not args.no_write:
        write_section(args.write, text, "near_hit")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
