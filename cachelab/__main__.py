"""``cachelab`` and ``python -m cachelab``: the command line, or one line naming the missing extra.

The commands live in :mod:`cachelab.cli`, which needs the ``cli`` extra (typer, rich), and some
need more (the experiments pandas, ``lab`` JupyterLab). A bare ``pip install cachelab`` has none
of them: rather than a traceback ending in ``No module named 'typer'``, the user reads what to
install. Stdlib only until the command line is importable.
"""

from __future__ import annotations

import sys

from ._extras import missing_extra

USAGE = """\
usage: cachelab COMMAND [ARGS]...

cachelab: see a cache stampede happen on Redis, and measure the fixes side by side.

This install is the library alone; the commands need an extra:
  pip install 'cachelab[cli]'   ping, get, set, delete, stream, ...
  pip install 'cachelab[lab]'   all of them, the experiments, JupyterLab and the notebooks
"""


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    command = " ".join(["cachelab", *args[:1]])
    try:
        from .cli import main as run
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc, command if args else "cachelab")
        if hint is None:
            raise
        if not args or args[0] in ("--help", "-h"):
            print(USAGE, end="")
            sys.exit(0)
        _fail(hint if args[0] in _CLI_COMMANDS else hint.replace("[cli]", "[lab]"))
    try:
        run()
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc, command)
        if hint is None:
            raise
        _fail(hint)


_CLI_COMMANDS = {"ping", "get", "set", "delete", "stream"}
"""Commands that need only the ``cli`` extra; the others (experiments, lab, notebook) also need
pandas or JupyterLab, so the hint names ``lab`` rather than cost the user a second try."""


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
