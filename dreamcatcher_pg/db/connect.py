"""The one place that opens connections to PostgreSQL.

Every connection the library opens comes from :func:`connect` or
:func:`create_pool`, so the session guarantees have one home:

* ``TimeZone`` is ``UTC``: timestamps rendered as text by the database (exports,
  JSON built in SQL) never depend on the server's or the role's default;
* ``application_name`` says who is connected (``pg_stat_activity``);
* driver errors are mapped to :mod:`dreamcatcher_pg.errors` by SQLSTATE, the
  driver's exception kept as ``__cause__`` (``map_errors=False`` leaves them raw,
  for the loops that handle a broken connection themselves).

:func:`connected` accepts a DSN or the caller's open connection (used as is and
never closed here); :func:`utc` sets the time zone of the current transaction
on a connection that did not come from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal

import asyncpg

from ..errors import DRIVER_ERRORS, map_db_error

#: A DSN, or an open connection (used as is and never closed here).
ConnOrDsn = str | asyncpg.Connection

#: Session settings of every connection opened here (callers add theirs).
SESSION_DEFAULTS: Mapping[str, str] = {"TimeZone": "UTC"}

#: The fence and the merger's claim need READ COMMITTED, whatever the database's default.
READ_COMMITTED: Mapping[str, str] = {"default_transaction_isolation": "read committed"}

#: PostgreSQL truncates application_name at 63 bytes; cut it on a character boundary.
_NAME_BYTES = 63


def session_settings(
    application_name: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The ``server_settings`` of a new connection: the defaults, a name, the caller's extras."""
    settings = dict(SESSION_DEFAULTS)
    if application_name is not None:
        settings["application_name"] = application_name.encode()[:_NAME_BYTES].decode("utf-8", "ignore")
    settings.update(extra or {})
    return settings


async def connect(
    dsn: str,
    *,
    application_name: str | None = None,
    settings: Mapping[str, str] | None = None,
    map_errors: bool = True,
    **kwargs: Any,
) -> asyncpg.Connection:
    """Open one connection with the session settings above (``kwargs`` go to asyncpg)."""
    try:
        return await asyncpg.connect(
            dsn, server_settings=session_settings(application_name, settings), **kwargs
        )
    except DRIVER_ERRORS as exc:
        if not map_errors:
            raise
        raise map_db_error(exc) from exc


async def create_pool(
    dsn: str,
    *,
    min_size: int,
    max_size: int,
    reset: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    init: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
    application_name: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool whose connections have the session settings above (``init``: run on each new
    connection); errors mapped."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            reset=reset,
            init=init,  # type: ignore[arg-type]  # (asyncpg-stubs: a Protocol of its own)
            server_settings=session_settings(application_name, settings),
        )
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
    assert pool is not None
    return pool


#: ``callback(connection, pid, channel, payload)`` of a LISTEN.
Listener = Callable[[Any, int, str, object], None]


async def listen(
    dsn: str, channel: str, callback: Listener, *, application_name: str | None = None
) -> asyncpg.Connection:
    """A dedicated connection LISTENing on ``channel`` (never a pooled one: a pool's reset
    runs ``UNLISTEN *``). The caller closes it."""
    conn = await connect(dsn, application_name=application_name)
    try:
        await conn.add_listener(channel, callback)
    except DRIVER_ERRORS as exc:
        await conn.close()
        raise map_db_error(exc) from exc
    return conn


@contextlib.asynccontextmanager
async def connected(conn_or_dsn: ConnOrDsn) -> AsyncIterator[asyncpg.Connection]:
    """A connection: opened (and closed) here for a DSN, else the caller's. Driver errors are mapped."""
    try:
        if isinstance(conn_or_dsn, str):
            conn = await connect(conn_or_dsn)
            try:
                yield conn
            finally:
                await conn.close()
        else:
            yield conn_or_dsn
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc


def transaction(
    conn: asyncpg.Connection,
    *,
    readonly: bool = False,
    isolation: Literal["read_committed", "repeatable_read"] = "repeatable_read",
) -> Any:
    """A transaction (REPEATABLE READ: one consistent view), or a savepoint when the caller
    already has a transaction open on ``conn``."""
    if conn.is_in_transaction():
        return conn.transaction()
    return conn.transaction(isolation=isolation, readonly=readonly)


async def utc(conn: asyncpg.Connection) -> None:
    """``TimeZone = UTC`` for the current transaction, on a connection that may be the caller's."""
    await conn.execute("SET LOCAL TimeZone = 'UTC'")
