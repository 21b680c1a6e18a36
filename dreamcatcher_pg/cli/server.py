"""Which server a command talks to, the options every command takes, and how it exits.

The server comes from ``--dsn``, else ``DREAMCATCHER_DSN``, else the libpq variables; an
embedded PostgreSQL only when asked for (``--embedded``, or ``demo``'s temporary one). Errors
are one line on stderr and an exit status: 0 done, 1 failed, 2 usage or no server
configured, 3 PostgreSQL unreachable or refusing the login or database, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import DRIVER_ERRORS, ConnectionLostError, DatabaseError, DreamcatcherError, map_db_error
from ..settings import Settings

#: The libpq variables that name a server; with any of them set, ``postgresql://`` is the DSN
#: (asyncpg and libpq read them, PGPASSWORD and PGSSLMODE too).
PG_SERVER_VARIABLES = ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE")

#: SQLSTATE classes of a refused login or database (exit status 3, like an unreachable server).
AUTH_SQLSTATE_CLASSES = ("28", "3D")

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


class NoServerError(DreamcatcherError):
    """No PostgreSQL server is configured, and no embedded one was asked for."""


def configured_dsn(args: argparse.Namespace, settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The server the user configured: ``--dsn``, ``$DREAMCATCHER_DSN``, the PG* variables."""
    if args.dsn:
        return str(args.dsn)
    if settings.dsn:
        return settings.dsn
    if any(environ.get(name) for name in PG_SERVER_VARIABLES):
        return "postgresql://"
    return None


@contextlib.contextmanager
def resolve_dsn(args: argparse.Namespace, settings: Settings) -> Iterator[str]:
    """Yield the DSN to use: the configured server, else an embedded one when asked for
    (``--embedded``, or ``demo``'s temporary one), else :class:`NoServerError`."""
    if getattr(args, "use_embedded", False) and args.dsn:
        raise NoServerError("--dsn and --embedded name two servers: give one")
    dsn = None if getattr(args, "use_embedded", False) else configured_dsn(args, settings, os.environ)
    if dsn:
        yield dsn
        return
    if not getattr(args, "use_embedded", False) and getattr(args, "embedded", None) != "temporary":
        raise NoServerError(
            "no PostgreSQL server configured: pass --dsn, set DREAMCATCHER_DSN or the PG* variables "
            "(PGHOST, PGPORT, PGUSER, PGDATABASE), or add --embedded for a local embedded server"
        )
    from ..embedded import start_embedded
    from ..ops.schema import init_database

    temporary = getattr(args, "embedded", None) == "temporary" and not getattr(args, "use_embedded", False)
    data_dir = None
    if not temporary:
        data_dir = Path(
            args.data_dir or settings.data_dir or Path.home() / ".local/share/dreamcatcher/pgdata"
        )
        data_dir.parent.mkdir(parents=True, exist_ok=True)
    args.server_is_embedded = True  # set up here: the commands need not init it
    with start_embedded(data_dir) as server:
        logging.getLogger(__name__).info("embedded PostgreSQL at %s", server.dsn)
        asyncio.run(init_database(server.dsn))  # our own server: keep its schema current
        yield server.dsn


def add_global_options(parser: argparse.ArgumentParser, *, on_command: bool = False) -> None:
    """The options every command takes, before or after its name. On a command's parser their
    defaults are suppressed, so a value given before the command is kept."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if on_command else value

    parser.add_argument(
        "--dsn",
        default=default(None),
        help="PostgreSQL DSN (default: $DREAMCATCHER_DSN, else the PG* variables of libpq)",
    )
    parser.add_argument(
        "--embedded",
        dest="use_embedded",
        action="store_true",
        default=default(False),
        help="use a local embedded PostgreSQL (kept in --data-dir) instead of a server",
    )
    parser.add_argument(
        "--data-dir",
        default=default(None),
        help="data directory of the embedded server (default: $DREAMCATCHER_DATA_DIR or "
        "~/.local/share/dreamcatcher/pgdata)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=default(None),
        help="log lines on stderr: text, or json (one object per line, with the world, frame... "
        "as fields) (default: $DREAMCATCHER_LOG_FORMAT or text)",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=default(0), help="more logging (-vv: debug)"
    )


def globals_on_every_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for command in set(sub.choices.values()):
        add_global_options(command, on_command=True)
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                globals_on_every_command(action)


def _unmapped_to_ours(exc: BaseException) -> BaseException:
    """A driver error that reached the command unmapped, as ours (OSError stays: it may be a file's)."""
    if isinstance(exc, DRIVER_ERRORS) and not isinstance(exc, OSError):
        return map_db_error(exc)
    return exc


def exit_status(exc: BaseException) -> int | None:
    """The exit status of an error the command reports in one line (None: a bug, re-raised)."""
    if isinstance(exc, NoServerError):
        return EXIT_USAGE
    exc = _unmapped_to_ours(exc)
    if isinstance(exc, ConnectionLostError | ConnectionError | socket.gaierror):  # raw: a connect's
        return EXIT_UNREACHABLE
    if isinstance(exc, DatabaseError) and (exc.sqlstate or "")[:2] in AUTH_SQLSTATE_CLASSES:
        return EXIT_UNREACHABLE
    if isinstance(exc, DreamcatcherError | OSError):
        return EXIT_FAILED
    return None


def error_line(exc: BaseException) -> str:
    """The error as one line (a driver's message can span several: its detail and hint)."""
    return " ".join(str(_unmapped_to_ours(exc)).split()) or type(exc).__name__
