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
from .policies import HERD_POLICIES

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


def _policy_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in HERD_POLICIES]
    if unknown or not names:
        raise ConfigurationError(
            f"unknown policy {', '.join(unknown) or text!r}; choose from {','.join(HERD_POLICIES)}"
        )
    return names


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
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of a table.")
    ] = False,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write the summary as CSV here.")
    ] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Write a PNG chart here.")
    ] = None,
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
        for path in (csv_path, plot_path):
            if path is not None and not path.parent.exists():
                raise ConfigurationError(f"folder {path.parent} does not exist; create it first")
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
                redis=redis, jitter_ms=jitter_ms, on_run=advance,
            )  # fmt: skip

    summaries, requests = _run(url, work)
    records = summaries.to_dict("records")
    if as_json:
        out.print_json(json.dumps([{k: r[k] for k in JSON_KEYS} for r in records]))
    else:
        out.print(_stampede_table(records))
    if csv_path is not None:
        _write_csv(csv_path, records)
        err.print(f"wrote {csv_path}")
    if plot_path is not None:
        _write_plot(plot_path, summaries, requests)
        err.print(f"wrote {plot_path}")


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


def _write_csv(path: Path, records: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _write_plot(path: Path, summaries, requests) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .experiments import plot_stampede_overview

    fig = plot_stampede_overview(summaries, requests)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
