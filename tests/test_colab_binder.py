"""Colab and Binder: the header each notebook starts with, and the binder/ folder.

``scripts/notebook-header`` writes the header (badges, the Colab setup cell), since the notebooks'
content is written by others and it must survive their rewrites; these tests hold it to one
header per notebook, made from the one repository address in pyproject.toml, harmless outside
Colab, and the script idempotent. The setup cell in a clean install without a Redis is in
tests/test_packaging.py. mybinder.org cannot be reached from CI: binder/start is run here, in a
private network namespace, and the kernels' connect() must find its Redis.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import cachelab
from cachelab import classroom, embedded
from cachelab.errors import RedisUnavailableError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "notebook-header"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load_script():
    loader = importlib.machinery.SourceFileLoader("notebook_header", str(SCRIPT))
    spec = importlib.util.spec_from_loader("notebook_header", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


header = load_script()
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def tagged(nb: dict, tag: str) -> list[dict]:
    return [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]


def source(cell: dict) -> str:
    return "".join(cell["source"])


# --- the committed notebooks -------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_has_one_header_under_its_title(path):
    nb = json.loads(path.read_text())
    (badges,) = tagged(nb, header.BADGES_TAG)
    (setup,) = tagged(nb, header.SETUP_TAG)
    assert nb["cells"].index(badges) == 1 and nb["cells"].index(setup) == 2
    assert source(nb["cells"][0]).startswith("# ")  # the title stays the first cell
    first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert first_code is setup, "in Colab, the first code cell must install cachelab"
    repo_path = REPOSITORY.removeprefix("https://github.com/")
    assert f"colab.research.google.com/github/{repo_path}/blob/main/notebooks/{path.name}" in (
        source(badges)
    )
    assert f"mybinder.org/v2/gh/{repo_path}/main?urlpath=lab/tree/notebooks/{path.name}" in (
        source(badges)
    )
    assert f'"cachelab[experiments] @ git+{REPOSITORY}"' in source(setup)
    assert setup["outputs"] == []


def test_the_headers_and_the_readme_table_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"| `{path.name}` | {header.badges_markdown(REPOSITORY, path.name)} |" in readme


def test_the_setup_cell_does_nothing_outside_colab():
    """It runs first under nbval, papermill and JupyterLab: no output, no pip, no import."""
    cell = header.SETUP.format(spec=json.dumps("cachelab[experiments] @ git+https://x.invalid/"))
    probe = cell + "\nprint(sorted(m for m in ('cachelab', 'subprocess') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("[]\n", "")


# --- the script --------------------------------------------------------------------------------


def executed_notebook(tmp_path: Path) -> Path:
    """A small notebook as nbconvert leaves it: executed 1..3, one result carrying its count."""
    cells = [
        {"cell_type": "markdown", "id": "title", "metadata": {}, "source": ["# Do a thing"]},
        {"cell_type": "code", "execution_count": 1, "id": "a", "metadata": {"tags": ["parameters"]},
         "outputs": [], "source": ["N = 1"]},
        {"cell_type": "code", "execution_count": None, "id": "empty", "metadata": {},
         "outputs": [], "source": []},
        {"cell_type": "code", "execution_count": 2, "id": "b", "metadata": {},
         "outputs": [{"data": {"text/plain": ["2"]}, "execution_count": 2, "metadata": {},
                      "output_type": "execute_result"}], "source": ["N + 1"]},
        {"cell_type": "code", "execution_count": 3, "id": "c", "metadata": {},
         "outputs": [], "source": ["print(N)"]},
    ]  # fmt: skip
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "09_thing.ipynb"
    path.write_text(header.dumps(nb))
    return path


def run_script(*paths: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_script_adds_the_header_and_numbers_it_like_a_run(tmp_path):
    path = executed_notebook(tmp_path)
    assert run_script(path).startswith("updated: ")
    nb = json.loads(path.read_text())
    assert [c["id"] for c in nb["cells"]] == [
        "title", "colab-badges", "colab-setup", "a", "empty", "b", "c",
    ]  # fmt: skip
    counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
    assert counts == [1, 2, None, 3, 4]  # executing the notebook again would record these
    assert nb["cells"][5]["outputs"][0]["execution_count"] == 3


def test_the_script_is_idempotent_and_repairs_a_stale_or_doubled_header(tmp_path):
    path = executed_notebook(tmp_path)
    run_script(path)
    once = path.read_text()
    assert run_script(path) == ""  # nothing to do the second time
    assert path.read_text() == once

    nb = json.loads(once)
    setup = tagged(nb, header.SETUP_TAG)[0]
    nb["cells"][2] = {**setup, "source": ["# an old version of the cell"]}
    nb["cells"].append(json.loads(json.dumps(tagged(nb, header.BADGES_TAG)[0])))  # a copy
    nb["cells"].insert(0, nb["cells"].pop(1))  # and out of place
    path.write_text(header.dumps(nb))
    run_script(path)
    assert path.read_text() == once  # one header, in place, counts not shifted twice


def test_an_unexecuted_notebook_gets_an_unexecuted_setup_cell(tmp_path):
    path = executed_notebook(tmp_path)
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"], cell["outputs"] = None, []
    path.write_text(header.dumps(nb))
    run_script(path)
    nb = json.loads(path.read_text())
    assert [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"] == [None] * 5


def test_a_notebook_without_a_title_gets_the_header_first(tmp_path):
    path = executed_notebook(tmp_path)
    nb = json.loads(path.read_text())
    nb["cells"] = nb["cells"][1:]
    path.write_text(header.dumps(nb))
    run_script(path)
    ids = [c["id"] for c in json.loads(path.read_text())["cells"]]
    assert ids[:3] == ["colab-badges", "colab-setup", "a"]


def test_the_repository_address_must_be_a_github_one(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project.urls]\nRepository = "https://gitlab.com/a/b"\n')
    with pytest.raises(SystemExit, match=r"is not https://github\.com/OWNER/NAME"):
        header.repository(pyproject)


# --- colab_redis: what the setup cell starts in Colab ------------------------------------------


@pytest.fixture
def no_redis_url(monkeypatch, stop_embedded):
    """No REDIS_URL, and whatever colab_redis() sets removed afterwards (monkeypatch restores
    only what it changed, so it is made to change it)."""
    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.delenv("REDIS_URL")


async def test_colab_redis_starts_the_embedded_server_that_connect_then_uses(
    no_redis_url, monkeypatch, capsys
):
    monkeypatch.setattr(cachelab.connection, "DEFAULT_LOCAL_URL", "redis://127.0.0.1:1")
    line = classroom.colab_redis()
    server = embedded.EmbeddedServer.running()
    assert server is not None
    assert line.startswith("cachelab: started Redis ") and "redis://:***@127.0.0.1:" in line
    assert server.url not in capsys.readouterr().out  # the password is never shown
    redis = await cachelab.connect(quiet=True)
    try:
        source = cachelab.source_of(redis)
        assert (source.kind, source.url) == ("embedded", line.split(" at ")[1].split(" ")[0])
    finally:
        await redis.aclose()


@pytest.mark.parametrize("why", ["no binary", "binary fails"])
async def test_colab_redis_falls_back_to_fakeredis_and_says_timings_are_not_real(
    why, no_redis_url, monkeypatch
):
    if why == "no binary":
        monkeypatch.setattr(embedded, "embedded_binary", lambda: None)
    else:

        def refuse(binary):
            raise RedisUnavailableError("could not start the embedded redis-server (x)")

        monkeypatch.setattr(embedded.EmbeddedServer, "shared", staticmethod(refuse))
    line = classroom.colab_redis()
    assert line.endswith("The notebooks use fakeredis instead, in this process: its timings are "
                         "not a real server's")  # fmt: skip
    assert os.environ["REDIS_URL"] == "fakeredis://"
    redis = await cachelab.connect(quiet=True)
    try:
        assert cachelab.source_of(redis).kind == "fakeredis"
    finally:
        await redis.aclose()


def test_colab_redis_leaves_a_redis_url_alone(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:secret@example.invalid:6379")
    assert classroom.colab_redis() == (
        "cachelab: notebooks use REDIS_URL (redis://:***@example.invalid:6379)"
    )


# --- Binder ------------------------------------------------------------------------------------

BINDER = ROOT / "binder"
STARTED = """
import asyncio

import cachelab


async def main():
    redis = await cachelab.connect(quiet=True)
    try:
        print(cachelab.source_of(redis).kind, await redis.ping())
    finally:
        try:
            await redis.execute_command("SHUTDOWN", "NOSAVE")  # the server binder/start ran
        except Exception:
            pass  # it closes the connection as it goes
        await redis.aclose()


asyncio.run(main())
"""


def without_redis_url(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "REDIS_URL"}, **extra}


def test_binder_builds_python_redis_and_cachelab_lab():
    """What repo2docker reads from binder/ (mybinder itself cannot be reached from CI)."""
    import yaml

    env = yaml.safe_load((BINDER / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    assert {"python=3.11", "pip", "redis-server"} <= set(env["dependencies"])
    assert 'pip install --no-cache-dir ".[lab]"' in (BINDER / "postBuild").read_text()
    for script in ("postBuild", "start"):
        assert os.access(BINDER / script, os.X_OK), f"binder/{script} must be executable"


def test_binder_start_runs_a_redis_that_the_kernels_find(tmp_path):
    """binder/start, then a kernel's connect(), in a private network namespace: its own
    127.0.0.1, where port 6379 is free (this machine's shared Redis is not in it)."""
    inside = 'ip link set lo up && exec "$0" "$@"'
    result = subprocess.run(
        ["unshare", "-rn", "bash", "-c", inside, str(BINDER / "start"), sys.executable, "-c",
         STARTED],
        capture_output=True, text=True, timeout=120, env=without_redis_url(TMPDIR=str(tmp_path)),
    )  # fmt: skip
    if "unshare failed" in result.stderr or "Operation not permitted" in result.stderr:
        pytest.fail(f"this test needs `unshare -rn` (user and network namespaces): {result.stderr}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "local True"  # "a server already running on this machine"
