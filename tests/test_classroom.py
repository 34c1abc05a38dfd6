"""The classroom commands: ``cachelab lab``, ``cachelab notebook list`` and ``notebook run``.

Notebook runs start real kernels and the lab tests start a real JupyterLab (as a subprocess, the
way a teacher runs it), then check that stopping it leaves no process behind.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import nbformat
import psutil
import pytest
import redis
from helpers import REAL_URL, free_port, pid_alive
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from typer.testing import CliRunner

from cachelab import classroom, redact_url
from cachelab.cli import app
from cachelab.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LAB_URL = re.compile(r"open (http://127\.0\.0\.1:(\d+)/lab\?token=([0-9a-f]+))")
USING = re.compile(
    r"cachelab: using (Redis \d+\.\d+\.\d+) at (redis://(?::\*\*\*@)?127\.0\.0\.1:(\d+))"
)


def run(*args: str, env: dict | None = None):
    result = CliRunner().invoke(app, list(args), env={"REDIS_URL": REAL_URL, **(env or {})})
    result.clean_stdout = ANSI.sub("", result.stdout)
    result.clean_stderr = ANSI.sub("", result.stderr)
    return result


def write_notebook(path: Path, title: str, parameters: str, *cells: str) -> Path:
    nb = new_notebook(
        cells=[
            new_markdown_cell(f"Some words before the title.\n\n# {title}\n\nWhy it matters."),
            new_markdown_cell("## A later heading"),
            new_code_cell(parameters, metadata={"tags": ["parameters"]}),
            *(new_code_cell(source) for source in cells),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nbformat.write(nb, path)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three small notebooks: one with every kind of parameter, two sharing the number 02."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(
        notebooks / "01_alpha.ipynb",
        "Alpha: every kind of parameter",
        "N = 3\nNAME = 'x'\nRATIO = 0.5\nFLAG = True\nITEMS = [1, 2]",
    )
    write_notebook(
        notebooks / "02_beta_divides.ipynb", "Beta divides", "DIVISOR = 1", "1 / DIVISOR"
    )
    write_notebook(notebooks / "02_beta_other.ipynb", "Beta other", "K = 1")
    return notebooks


def executed_outputs(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    return "".join(
        output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


# --- notebook list -------------------------------------------------------------------------------


def test_list_shows_number_title_and_parameters(folder):
    result = run("notebook", "list", "--notebook-dir", str(folder))
    assert result.exit_code == 0, result.output
    lines = result.clean_stdout.splitlines()
    assert lines[0].split() == [
        "01",
        "Alpha:",
        "every",
        "kind",
        "of",
        "parameter",
        "01_alpha.ipynb",
    ]
    assert lines[1].strip() == "parameters: N=3, NAME='x', RATIO=0.5, FLAG=True, ITEMS=[1, 2]"
    assert "Beta divides" in lines[2] and lines[3].strip() == "parameters: DIVISOR=1"
    assert "Beta other" in lines[4] and lines[5].strip() == "parameters: K=1"
    assert len(lines) == 6


def test_list_covers_every_repository_notebook_and_its_parameters():
    result = run("notebook", "list")
    assert result.exit_code == 0, result.output
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        title = next(
            line[2:].strip()
            for cell in cells
            if cell["cell_type"] == "markdown"
            for line in "".join(cell["source"]).splitlines()
            if line.startswith("# ")
        )
        source = next(
            "".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", [])
        )
        header = next(line for line in result.clean_stdout.splitlines() if path.name in line)
        assert header.startswith(path.name[:2]) and title in header
        for assignment in source.splitlines():
            name, _, rest = (part.strip() for part in assignment.partition("="))
            value, _, note = (part.strip() for part in rest.partition("#"))
            assert f"{name}={value} ({note})" in result.clean_stdout


def test_an_install_without_notebooks_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(classroom, "checkout_notebook_dir", lambda: None)
    monkeypatch.setattr(classroom, "packaged_notebook_dir", lambda: None)
    monkeypatch.chdir(tmp_path)
    result = run("notebook", "list")
    assert result.exit_code == 1
    assert "has no notebooks: it was built without them" in result.clean_stderr
    assert "--notebook-dir" in result.clean_stderr


# --- installed from a wheel: the packaged notebooks and the student's working copy ---------------


@pytest.fixture
def installed(folder, tmp_path, monkeypatch) -> Path:
    """cachelab as a wheel installs it: no checkout, ``folder`` as the packaged notebooks (with
    an image beside them), run from an empty folder of the student's. Returns that folder."""
    (folder / "images").mkdir()
    (folder / "images" / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setattr(classroom, "checkout_notebook_dir", lambda: None)
    monkeypatch.setattr(classroom, "packaged_notebook_dir", lambda: folder)
    home = tmp_path / "student"
    home.mkdir()
    monkeypatch.chdir(home)
    return home


PACKAGED = ["01_alpha.ipynb", "02_beta_divides.ipynb", "02_beta_other.ipynb", "images/diagram.png"]


def test_the_working_copy_is_made_once_and_edits_are_never_overwritten(folder, installed):
    work = installed / "cachelab-notebooks"
    first = classroom.prepare_working_copy(work)
    assert (first.copied, first.updated, first.kept) == (PACKAGED, [], [])
    for name in PACKAGED:
        assert (work / name).read_bytes() == (folder / name).read_bytes()

    again = classroom.prepare_working_copy(work)
    assert (again.copied, again.updated, again.kept) == ([], [], [])

    edited = work / "01_alpha.ipynb"
    edited.write_text(edited.read_text().replace("Why it matters.", "My notes."))
    (work / "02_beta_other.ipynb").unlink()  # deleted: copied again
    write_notebook(folder / "02_beta_divides.ipynb", "Beta divides, v2", "DIVISOR = 2")
    write_notebook(folder / "01_alpha.ipynb", "Alpha, v2", "N = 4")  # and edited: kept
    later = classroom.prepare_working_copy(work)
    assert later.copied == ["02_beta_other.ipynb"]
    assert later.updated == ["02_beta_divides.ipynb"]  # the student never changed it
    assert later.kept == ["01_alpha.ipynb"]
    assert "My notes." in edited.read_text()
    assert "Beta divides, v2" in (work / "02_beta_divides.ipynb").read_text()


def test_the_working_copy_refuses_a_file_before_writing(installed):
    (installed / "taken").write_text("not a folder")
    with pytest.raises(ConfigurationError, match="taken is a file; pass a folder"):
        classroom.prepare_working_copy(installed / "taken")
    assert sorted(p.name for p in installed.iterdir()) == ["taken"]


def test_list_and_run_use_the_working_copy_else_the_packaged_notebooks(folder, installed):
    assert classroom.notebook_dir() == folder  # no working copy yet: the packaged ones
    result = run("notebook", "list")
    assert result.exit_code == 0, result.output
    assert f"notebooks in {folder}" in result.clean_stderr
    assert "Alpha: every kind of parameter" in result.clean_stdout

    classroom.prepare_working_copy(installed / "cachelab-notebooks")
    work = (installed / "cachelab-notebooks").resolve()
    assert classroom.notebook_dir().resolve() == work
    result = run("notebook", "list")
    assert f"notebooks in {work}" in result.clean_stderr

    result = run("notebook", "list", "--dir", "elsewhere")
    assert result.exit_code == 1
    assert "elsewhere holds no notebooks yet; `cachelab lab --dir elsewhere`" in result.clean_stderr


def test_reset_restores_the_packaged_notebook_and_keeps_the_edit_aside(folder, installed):
    work = installed / "cachelab-notebooks"
    classroom.prepare_working_copy(work)
    mine = work / "01_alpha.ipynb"
    mine.write_text(mine.read_text().replace("Why it matters.", "My notes."))

    result = run("notebooks", "reset", "1")  # the plural works too
    assert result.exit_code == 0, result.output
    assert mine.read_bytes() == (folder / "01_alpha.ipynb").read_bytes()
    (backup,) = (work / classroom.BACKUPS).iterdir()
    assert "My notes." in backup.read_text()
    message = " ".join(result.clean_stdout.split())
    assert f"restored {Path('cachelab-notebooks') / '01_alpha.ipynb'}" in message
    assert f"your edited copy is now {Path('cachelab-notebooks') / classroom.BACKUPS}" in message
    assert classroom.prepare_working_copy(work).kept == []  # restored: no longer an edit

    result = run("notebook", "reset", "01")  # nothing of the student's to keep
    assert result.exit_code == 0 and "your edited copy" not in result.output


def test_reset_in_a_checkout_points_at_git(tmp_path):
    result = run("notebook", "reset", "01")
    assert result.exit_code == 1
    assert "holds the original notebooks, not a copy" in result.clean_stderr
    assert "git checkout -- " in result.clean_stderr
    result = run("notebook", "reset", "01", "--dir", str(tmp_path / "copy"))  # a copy: fine
    assert result.exit_code == 0, result.output
    assert (tmp_path / "copy" / "01_stampede_and_single_flight.ipynb").read_bytes() == (
        NOTEBOOKS / "01_stampede_and_single_flight.ipynb"
    ).read_bytes()


class FakeLab:
    """Stands in for JupyterLab: what ``cachelab lab`` would serve, without starting it."""

    served: ClassVar[list[Path]] = []

    def __init__(self, folder, port, *, redis_url=None):
        self.folder, self.url = folder, f"http://127.0.0.1:{port}/lab?token=x"
        FakeLab.served.append(Path(folder))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass

    def wait(self):
        return 0


def test_lab_outside_a_checkout_copies_once_and_says_which_edits_it_kept(
    folder, installed, monkeypatch
):
    monkeypatch.setattr(classroom, "Lab", FakeLab)
    FakeLab.served = []
    first = run("lab", "--no-browser")
    assert first.exit_code == 0, first.output
    assert "copied 3 notebooks and 1 other file into cachelab-notebooks" in first.clean_stderr
    work = (installed / "cachelab-notebooks").resolve()
    assert FakeLab.served == [Path("cachelab-notebooks")]
    assert f"JupyterLab serves {work};" in first.clean_stdout

    mine = work / "02_beta_other.ipynb"
    mine.write_text(mine.read_text().replace("Why it matters.", "My notes."))
    second = run("lab", "--no-browser")
    assert second.exit_code == 0, second.output
    assert "copied" not in second.clean_stderr
    message = " ".join(second.clean_stderr.split())
    assert (
        "kept your edited 02_beta_other.ipynb; `cachelab notebook reset NAME` restores "
        "cachelab's version"
    ) in message
    assert "My notes." in mine.read_text()


def test_lab_refuses_both_folder_options_and_a_file_as_dir(installed):
    both = run("lab", "--no-browser", "--dir", "a", "--notebook-dir", str(installed))
    assert both.exit_code == 1
    assert "pass --dir or --notebook-dir, not both" in both.clean_stderr
    (installed / "taken").write_text("")
    taken = run("lab", "--no-browser", "--dir", "taken")
    assert taken.exit_code == 1
    assert "taken is a file; pass a folder for the notebooks with --dir" in taken.clean_stderr
    assert "cachelab: using" not in taken.clean_stderr  # refused before looking for Redis
    assert sorted(p.name for p in installed.iterdir()) == ["taken"]


# --- names and parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["01", "1", "01_alpha", "01_alpha.ipynb", "somewhere/01_alpha.ipynb", "01_al"]
)
def test_find_notebook_by_number_name_or_prefix(folder, name):
    assert classroom.find_notebook(classroom.discover(folder), name).stem == "01_alpha"


def test_ambiguous_and_unknown_names_list_the_notebooks(folder):
    notebooks = classroom.discover(folder)
    with pytest.raises(ConfigurationError, match="several notebooks") as ambiguous:
        classroom.find_notebook(notebooks, "02")
    assert "02_beta_divides" in str(ambiguous.value) and "02_beta_other" in str(ambiguous.value)
    assert classroom.find_notebook(notebooks, "02_beta_o").stem == "02_beta_other"
    with pytest.raises(ConfigurationError, match="no notebook matches 'gamma'") as unknown:
        classroom.find_notebook(notebooks, "gamma")
    assert "01_alpha, 02_beta_divides, 02_beta_other" in str(unknown.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2000", 2000),
        ("0.5", 0.5),
        ("True", True),
        ("false", False),
        ("[10, 100]", [10, 100]),
        ("None", None),
        ("'quoted'", "quoted"),
        ("plain words", "plain words"),
    ],
)
def test_values_are_parsed_like_papermill(text, value):
    assert classroom.parse_value(text) == value
    assert type(classroom.parse_value(text)) is type(value)


def test_parameters_are_checked_against_the_parameters_cell(folder):
    alpha = classroom.read_notebook(folder / "01_alpha.ipynb")
    pairs = [("N", "7"), ("NAME", "123"), ("RATIO", "2"), ("FLAG", "False"), ("ITEMS", "[3]")]
    assert classroom.resolve_parameters(alpha, pairs) == {
        "N": 7, "NAME": "123", "RATIO": 2, "FLAG": False, "ITEMS": [3],
    }  # fmt: skip
    for name, text, expected in [
        ("N", "2.5", "N takes a whole number"),
        ("N", "many", "N takes a whole number"),
        ("RATIO", "half", "RATIO takes a number"),
        ("FLAG", "1", "FLAG takes True or False"),
        ("ITEMS", "3", "ITEMS takes a list"),
    ]:
        with pytest.raises(ConfigurationError, match=expected):
            classroom.resolve_parameters(alpha, [(name, text)])
    with pytest.raises(ConfigurationError) as unknown:
        classroom.resolve_parameters(alpha, [("M", "1")])
    assert "01_alpha has no parameter 'M'" in str(unknown.value)
    assert "N=3, NAME='x', RATIO=0.5, FLAG=True, ITEMS=[1, 2]" in str(unknown.value)


def test_parameter_pairs_need_a_name_and_a_value():
    args = ["-p", "CLIENTS", "2000", "--parameter", "X", "[1, 2]"]
    assert classroom.parameter_pairs(args) == [("CLIENTS", "2000"), ("X", "[1, 2]")]
    with pytest.raises(ConfigurationError, match="needs a NAME and a VALUE"):
        classroom.parameter_pairs(["-p", "CLIENTS"])
    with pytest.raises(ConfigurationError, match="unexpected '--clients'"):
        classroom.parameter_pairs(["--clients", "2000"])


# --- notebook run --------------------------------------------------------------------------------


def test_run_with_an_unknown_parameter_lists_them_and_runs_nothing(tmp_path):
    output = tmp_path / "runs"
    result = run("notebook", "run", "01", "-p", "CLIENT", "2000", "--output", str(output))
    assert result.exit_code == 1
    assert "01_stampede_and_single_flight has no parameter 'CLIENT'" in result.clean_stderr
    assert "CLIENTS=200" in result.clean_stderr and "INSTANCES=" in result.clean_stderr
    assert not output.exists()


def test_run_of_an_unknown_notebook_lists_the_notebooks(tmp_path):
    result = run("notebook", "run", "99", "--output", str(tmp_path / "runs"))
    assert result.exit_code == 1
    assert "no notebook matches '99'" in result.clean_stderr
    assert "00_getting_started" in result.clean_stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.timeout(600)
def test_run_injects_the_parameters_and_writes_the_charts(tmp_path):
    output = tmp_path / "runs"
    result = run(
        "notebook", "run", "00", "-p", "READS", "30", "-p", "KEYS", "5", "--output", str(output)
    )
    assert result.exit_code == 0, result.output
    assert "running 00_getting_started.ipynb with READS=30, KEYS=5" in result.clean_stderr

    (folder,) = output.iterdir()
    assert re.fullmatch(r"00_getting_started-\d{8}-\d{6}", folder.name)
    executed = folder / "00_getting_started.ipynb"
    assert f"executed notebook: {executed}" in result.clean_stdout
    nb = nbformat.read(executed, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    assert "READS = 30" in injected[0].source and "KEYS = 5" in injected[0].source
    assert "reads: 30, distinct keys: " in executed_outputs(executed)  # the run used the values

    pngs = sum(
        "image/png" in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    charts = sorted(folder.glob("chart-*.png"))
    assert pngs >= 1 and len(charts) == pngs
    assert f"charts ({pngs}):" in result.clean_stdout
    for chart in charts:
        assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert str(chart) in result.clean_stdout


@pytest.mark.timeout(300)
def test_a_failing_cell_exits_1_with_its_error_and_the_partial_notebook(folder, tmp_path):
    output = tmp_path / "runs"
    result = run(
        "notebook", "run", "02_beta_d", "-p", "DIVISOR", "0",
        "--notebook-dir", str(folder), "--output", str(output),
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    (partial,) = output.glob("02_beta_divides-*/02_beta_divides.ipynb")
    message = " ".join(result.clean_stderr.split())
    assert "02_beta_divides.ipynb failed in cell In [3]: ZeroDivisionError: division by zero" in (
        message
    )
    assert str(partial) in message
    nb = nbformat.read(partial, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "ename" in o]
    assert [e.ename for e in errors] == ["ZeroDivisionError"]


# --- cachelab lab --------------------------------------------------------------------------------


class LabProcess:
    """``cachelab lab`` in its own process, as a teacher starts it; its output read as it comes."""

    def __init__(
        self, *args: str, env: dict[str, str], cachelab: list[str] | None = None, cwd: Path = ROOT
    ) -> None:
        """``cachelab`` is the command that starts cachelab (default: this Python's)."""
        self.port = free_port()
        command = cachelab or [sys.executable, "-m", "cachelab.cli"]
        self.process = subprocess.Popen(
            [*command, "lab", "--no-browser", "--port", str(self.port), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: re.Pattern, timeout: float = 240) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.output.append(ANSI.sub("", line))
            match = pattern.search(self.output[-1])
            if match:
                return match
        raise AssertionError(f"no line matched {pattern.pattern}; output:\n{''.join(self.output)}")

    def rest_of_output(self) -> str:
        while (line := self._lines.get(timeout=30)) is not None:
            self.output.append(ANSI.sub("", line))
        return "".join(self.output)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            for child in self.descendants():
                child.kill()
            self.process.kill()
            self.process.wait()


def lab_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "JUPYTER_TOKEN")}
    return {**env, **extra}


def api(url: str, token: str, method: str = "GET") -> dict:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"token {token}"}, data=b"{}"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 201)
        return json.loads(response.read())


def start_kernel(port: int, token: str, lab: LabProcess) -> psutil.Process:
    """Start a kernel through JupyterLab's REST API and return its process."""
    api(f"http://127.0.0.1:{port}/api/kernels", token, method="POST")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for process in lab.descendants():
            if "ipykernel_launcher" in " ".join(process.cmdline()):
                return process
        time.sleep(0.2)
    raise AssertionError("no kernel process appeared")


def assert_stops_everything(lab: LabProcess, signum: int, pids: list[int]) -> None:
    """``signum`` ends the lab (with exit code 0, unless it is SIGKILL, which nothing can
    handle) and leaves none of ``pids`` running."""
    lab.process.send_signal(signum)
    if signum == signal.SIGKILL:
        assert lab.process.wait(timeout=120) == -signal.SIGKILL
    else:
        assert lab.process.wait(timeout=120) == 0
        assert "JupyterLab stopped" in lab.rest_of_output()
    deadline = time.monotonic() + 30  # reaping may lag the exit a little
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert [p for p in pids if pid_alive(p)] == []


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed-outright"]
)
def test_lab_with_an_embedded_redis_stops_everything(signum):
    """Ctrl-C stops JupyterLab, its kernels and the embedded Redis; so does SIGKILL of
    cachelab itself, through the reapers that watch JupyterLab and the server."""
    lab = LabProcess("--url", "embedded://", env=lab_env())
    try:
        using = lab.wait_for(USING)
        redis_url = using.group(2)
        assert redis_url.startswith("redis://:***@")  # the embedded server needs a password
        assert "(embedded: started by cachelab" in lab.output[-1]
        opened = lab.wait_for(LAB_URL)
        url, port, token = opened.group(1), int(opened.group(2)), opened.group(3)
        assert port == lab.port
        serving = next(line for line in lab.output if line.startswith("JupyterLab serves"))
        assert str(NOTEBOOKS) in serving and f"{using.group(1)} at {redis_url}" in serving

        assert "version" in api(f"http://127.0.0.1:{port}/api", token)
        contents = api(f"http://127.0.0.1:{port}/api/contents", token)
        assert {"00_getting_started.ipynb"} <= {item["name"] for item in contents["content"]}
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200

        kernel = start_kernel(port, token, lab)
        kernel_url = kernel.environ().get("REDIS_URL", "")
        assert redact_url(kernel_url) == redis_url  # the kernels get the password ...
        password = urlsplit(kernel_url).password
        assert password and password not in "".join(lab.output)  # ... and it is never shown
        server = redis.Redis.from_url(kernel_url)
        try:
            redis_pid = server.info("server")["process_id"]
        finally:
            server.close()
        processes = lab.descendants()
        pids = [p.pid for p in processes]
        assert redis_pid in pids and kernel.pid in pids
        assert any("jupyterlab" in " ".join(p.cmdline()) for p in processes)

        assert_stops_everything(lab, signum, pids)
    finally:
        lab.stop()


@pytest.mark.timeout(400)
def test_lab_uses_redis_url_and_stops_everything_on_sigterm():
    lab = LabProcess(env=lab_env(REDIS_URL=REAL_URL))
    try:
        using = lab.wait_for(USING)
        assert using.group(2) == redact_url(REAL_URL) and "(REDIS_URL)" in lab.output[-1]
        _url, port, token = lab.wait_for(LAB_URL).groups()
        assert api(f"http://127.0.0.1:{port}/api/status", token)["kernels"] == 0
        pids = [p.pid for p in lab.descendants()]
        assert pids, "JupyterLab runs as a child process"

        assert_stops_everything(lab, signal.SIGTERM, pids)
    finally:
        lab.stop()


def test_lab_with_a_dead_redis_url_fails_before_starting_jupyterlab():
    dead, port = f"redis://127.0.0.1:{free_port()}", free_port()
    result = run("lab", "--no-browser", "--port", str(port), env={"REDIS_URL": dead})
    assert result.exit_code == 1
    assert f"Redis at {dead} (from REDIS_URL) did not answer" in result.clean_stderr
    assert "unset REDIS_URL" in result.clean_stderr
    assert "JupyterLab" not in result.output and "open http" not in result.output
    with pytest.raises(ConnectionRefusedError):  # nothing was started on the lab's port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_lab_refuses_a_busy_port_and_a_missing_folder(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        result = run("lab", "--no-browser", "--port", str(port))
    assert result.exit_code == 1
    assert f"port {port} is already in use" in result.clean_stderr
    assert "cachelab: using" not in result.clean_stderr  # refused before looking for Redis

    result = run("lab", "--no-browser", "--notebook-dir", str(tmp_path / "missing"))
    assert result.exit_code == 1
    assert f"notebook folder {tmp_path / 'missing'} does not exist" in result.clean_stderr


def test_a_notebook_that_follows_another_is_named_by_its_own_number(tmp_path):
    write_notebook(tmp_path / "03_first.ipynb", "First", "A = 1")
    write_notebook(tmp_path / "03b_second.ipynb", "Second", "B = 1")
    notebooks = classroom.discover(tmp_path)
    assert [nb.number for nb in notebooks] == ["03", "03b"]
    assert classroom.find_notebook(notebooks, "03").stem == "03_first"
    assert classroom.find_notebook(notebooks, "3").stem == "03_first"
    assert classroom.find_notebook(notebooks, "03b").stem == "03b_second"


def test_the_documented_range_is_shown_beside_each_parameter(tmp_path):
    path = write_notebook(tmp_path / "01_ranged.ipynb", "Ranged", "N = 3  # 1-10\nM = 2")
    notebook = classroom.read_notebook(path)
    assert notebook.parameter_list() == "N=3 (1-10), M=2"
    assert notebook.parameters["N"].default == 3
