"""Errors: one base class, and driver errors mapped by SQLSTATE.

Every error raised by dreamcatcher_pg is a :class:`DreamcatcherError`. Errors
that come from the database driver keep the driver's exception as
``__cause__`` (``raise ... from exc``); mapping uses the SQLSTATE, never the
message text.
"""

from __future__ import annotations

from typing import Any

import asyncpg


class DreamcatcherError(Exception):
    """Base class of every error raised by dreamcatcher_pg."""


class InvalidDeltaError(DreamcatcherError, ValueError):
    """A delta failed validation; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class FrameClosedError(DreamcatcherError):
    """The delta's frame was already closed (late delta under policy ``reject``).

    The attempt is recorded in ``dreamcatcher.late_attempts``; nothing was stored.
    """

    def __init__(self, message: str, *, world: str, frame: int, stream_id: str | None = None) -> None:
        super().__init__(message)
        self.world = world
        self.frame = frame
        self.stream_id = stream_id


class DeltaConflictError(DreamcatcherError):
    """A delta with the same key (world, frame, stream_id, utc) and a different payload exists."""

    def __init__(self, message: str, *, key: tuple[Any, ...]) -> None:
        super().__init__(message)
        self.key = key


class AppendOnlyViolation(DreamcatcherError):
    """Something tried to UPDATE, DELETE or TRUNCATE the delta log."""


class ConnectionLostError(DreamcatcherError, ConnectionError):
    """The connection to PostgreSQL failed. Retrying the same call is safe (idempotent)."""


class DatabaseError(DreamcatcherError):
    """Any other error reported by PostgreSQL; ``sqlstate`` tells which."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


#: SQLSTATE classes that mean the connection, not the request, failed.
_CONNECTION_CLASSES = ("08", "57")

#: What the driver raises when a call fails: errors of the server, of the socket, of asyncpg.
DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


def map_db_error(exc: BaseException) -> DreamcatcherError:
    """Translate a driver exception into one of ours (the caller raises it ``from exc``)."""
    if isinstance(exc, DreamcatcherError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None)
    if not isinstance(sqlstate, str):
        sqlstate = None
    if sqlstate == "DCA01":
        return AppendOnlyViolation(str(exc))
    if sqlstate == "DCF01":  # a new frame too far above the world's merged ones
        return InvalidDeltaError(str(exc), field="frame")
    if sqlstate == "23514":  # a check of the log: what the merge could not read (size, depth, range)
        return InvalidDeltaError(f"the database refused it: {exc}")
    if isinstance(exc, asyncpg.InternalClientError):
        # No SQLSTATE: asyncpg's next query on a session the server ended while it sat idle
        # (57P01 at shutdown) fails with "cannot switch to state N". The connection is dead.
        return ConnectionLostError(f"connection to PostgreSQL failed: {type(exc).__name__}: {exc}")
    if sqlstate is not None and sqlstate[:2] in _CONNECTION_CLASSES:
        return ConnectionLostError(f"connection to PostgreSQL failed: {exc}")
    if isinstance(exc, OSError | ConnectionError):
        return ConnectionLostError(f"connection to PostgreSQL failed: {exc}")
    return DatabaseError(f"{type(exc).__name__}: {exc}", sqlstate=sqlstate)


class SchemaVersionError(DreamcatcherError):
    """The database's schema version is not the one this dreamcatcher_pg needs (older, newer,
    unversioned or missing). ``database_version`` (None: none recorded) and ``package_version``
    name both; the message says what to run."""

    def __init__(self, message: str, *, database_version: int | None, package_version: int) -> None:
        super().__init__(message)
        self.database_version = database_version
        self.package_version = package_version


class SchemaEditedError(DreamcatcherError):
    """``dreamcatcher init`` would replace functions whose definitions were changed in the
    database since it recorded them (``functions`` names them); ``init --force`` replaces them."""

    def __init__(self, message: str, *, functions: list[str]) -> None:
        super().__init__(message)
        self.functions = functions
