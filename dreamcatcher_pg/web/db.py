"""The inspector's read-only connections.

Every connection starts with ``default_transaction_read_only=on`` (and a
statement timeout), then, when the reader role of ``init --roles`` exists and
the login may become it, ``SET ROLE``s to it: the inspector reads with a
reader's rights, whatever login the DSN names. It never writes.

Errors of the driver become :class:`~dreamcatcher_pg.web.errors.ApiError`: a
statement that ran out of time is a 503 (a clear JSON error, never a 500 with a
traceback); a database that cannot be reached, a 503 too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from ..db.connect import connect as db_connect
from ..db.connect import create_pool
from ..db.queries import query
from ..errors import DRIVER_ERRORS
from .errors import ApiError

log = logging.getLogger(__name__)

#: The role the inspector becomes when it exists (``init --roles``, default prefix).
DEFAULT_READER_ROLE = "dreamcatcher_reader"

#: Settings of every connection. Custom plans: a page's plan depends on its cursor and frame
#: (an early frame and a late one want different plans), and planning costs far less than a
#: generic plan's wrong guess over a million entities.
SESSION_SETTINGS = {
    "default_transaction_read_only": "on",
    "application_name": "dreamcatcher web",
    "statement_timeout": "15s",
    "idle_in_transaction_session_timeout": "60s",
    "plan_cache_mode": "force_custom_plan",
    "jit": "off",
}


@dataclass(frozen=True, slots=True)
class Session:
    """Who the inspector reads as."""

    role: str
    read_only: bool


async def prepare_session(conn: asyncpg.Connection, reader_role: str | None) -> None:
    """Become ``reader_role`` when it exists, the login may, and it may read this database's
    schema (a role of ``init --roles`` run in another database may not); else stay, read-only."""
    if not reader_role:
        return
    role = await conn.fetchval(query("web_reader_role"), reader_role)
    if role is not None:
        await conn.fetchval(query("web_set_role"), role)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset: nothing. The inspector's statements leave no state behind, and asyncpg's
    default reset would cost a round trip per request (the role survives RESET ALL anyway)."""


async def connect(dsn: str, reader_role: str | None) -> asyncpg.Connection:
    """One read-only connection (the live feed's LISTEN connection is one)."""
    conn = await db_connect(dsn, settings=SESSION_SETTINGS, map_errors=False)
    try:
        await prepare_session(conn, reader_role)
    except BaseException:
        await conn.close()
        raise
    return conn


class Reader:
    """A small pool of read-only connections, and the one way the views query it."""

    def __init__(self, dsn: str, *, reader_role: str | None = DEFAULT_READER_ROLE, size: int = 4) -> None:
        self.dsn = dsn
        self.reader_role = reader_role
        self.size = size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        async def init(conn: asyncpg.Connection) -> None:
            await prepare_session(conn, self.reader_role)

        self._pool = await create_pool(
            self.dsn,
            min_size=1,
            max_size=self.size,
            settings=SESSION_SETTINGS,
            init=init,
            reset=_keep_session,
        )
        session = await self.session()
        log.info("inspector reads as role=%s read_only=%s", session.role, session.read_only)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        if self._pool is None:
            raise ApiError(503, "not_ready", "the inspector is not connected to PostgreSQL")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except ApiError:
            raise
        except asyncpg.QueryCanceledError as exc:
            raise ApiError(503, "timeout", "the query took too long; narrow it down") from exc
        except DRIVER_ERRORS as exc:
            log.warning("inspector query failed: %s: %s", type(exc).__name__, exc)
            raise ApiError(503, "database_error", f"PostgreSQL: {type(exc).__name__}") from exc

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self._conn() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query(name), *args)
            return rows

    async def fetchrow(self, name: str, *args: Any) -> asyncpg.Record | None:
        async with self._conn() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(query(name), *args)
            return row

    async def fetchval(self, name: str, *args: Any) -> Any:
        async with self._conn() as conn:
            return await conn.fetchval(query(name), *args)

    async def session(self) -> Session:
        row = await self.fetchrow("web_session")
        assert row is not None
        return Session(role=row["role"], read_only=bool(row["read_only"]))
