"""Stop a child process and remove its directory once the Python process that owns them is gone.

cachelab starts this file as a separate, tiny process (``python -I -S _reaper.py GRACE [DIR]``,
standard library only, no cachelab import) next to the embedded redis-server and JupyterLab.
Its stdin is a pipe whose other end only the owner holds, so end-of-input means the owner has
exited, however it ended: normally, on SIGTERM, or killed with SIGKILL. That is the one signal
no handler in the owner can catch, and unlike Linux's PR_SET_PDEATHSIG it is tied to the
owner's process, not to the thread that happened to start the child.

Lines on stdin:

- ``watch PID``: the process to stop if the owner dies (sent again after every restart);
- ``done``: the owner stopped it itself; only the directory is left to remove.

At end of input without ``done``: SIGTERM to the watched process, SIGKILL after GRACE seconds,
then the directory (if any) is removed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import time

__all__ = ["Reaper"]


class Reaper:
    """The owner's end: start a reaper for ``directory`` (may be None) and tell it what to
    watch. ``grace`` is how long the watched process gets between SIGTERM and SIGKILL."""

    def __init__(self, grace: float, directory: str | None = None) -> None:
        command = [sys.executable, "-I", "-S", os.path.abspath(__file__), repr(float(grace))]
        self.process = subprocess.Popen(
            [*command, *([directory] if directory is not None else [])],
            stdin=subprocess.PIPE,  # the write end stays here: not inherited by exec'd children
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or hang-up meant for the owner does not reach it
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def watch(self, pid: int) -> None:
        """Stop ``pid`` if this process dies (replaces the process watched so far)."""
        self._send(f"watch {pid}")

    def release(self) -> None:
        """The owner stopped the watched process itself: let the reaper remove the directory
        and exit, and wait until it has."""
        self._send("done")
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):  # the reaper is already gone
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _send(self, line: str) -> None:
        if self.process.stdin is None or self.process.stdin.closed:
            return
        try:
            self.process.stdin.write(f"{line}\n".encode())
            self.process.stdin.flush()
        except OSError:  # the reaper is gone (someone killed it): nothing to tell
            pass


# --- the reaper process itself ------------------------------------------------------------------


class _Watched:
    """A process to stop, held by a pidfd where the platform has one (then a recycled pid
    can never be hit), else by its number."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd: int | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            try:
                self.fd = pidfd_open(pid)
            except OSError:  # already gone, or a kernel without pidfd
                self.fd = None

    def signal(self, signum: int) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signum)
            else:
                os.kill(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def gone_within(self, seconds: float) -> bool:
        if self.fd is not None:
            return bool(select.select([self.fd], [], [], seconds)[0])  # readable once it exited
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.02)
        return False

    def stop(self, grace: float) -> None:
        self.signal(signal.SIGCONT)  # a frozen (SIGSTOPped) process must hear the SIGTERM
        self.signal(signal.SIGTERM)
        if not self.gone_within(grace):
            self.signal(signal.SIGKILL)
            self.gone_within(grace)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def main(argv: list[str]) -> int:
    grace = float(argv[1])
    directory = argv[2] if len(argv) > 2 else None
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the owner
    watched: _Watched | None = None
    owner_stopped_it = False
    for line in sys.stdin:
        word, _, argument = line.strip().partition(" ")
        if word == "watch":
            if watched is not None:
                watched.close()
            watched, owner_stopped_it = _Watched(int(argument)), False
        elif word == "done":
            owner_stopped_it = True
    if watched is not None and not owner_stopped_it:
        watched.stop(grace)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
