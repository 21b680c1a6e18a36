"""Applying the SQL schema (``dreamcatcher init``).

The schema is the versioned migrations in ``sql/migrations/`` (installed as the
``dreamcatcher_pg.sql`` package), applied in order by :mod:`dreamcatcher_pg.migrations`: only
those the database has not had. Running ``init`` twice is safe. The default merge rules
(``dreamcatcher_pg/rules/default.toml``) are compiled and installed with it.
"""

from __future__ import annotations

import asyncpg

from .migrations import INIT_LOCK_KEY as _INIT_LOCK_KEY
from .migrations import migrate

__all__ = ["_INIT_LOCK_KEY", "apply_schema", "init_database"]


async def apply_schema(conn: asyncpg.Connection, *, force: bool = False) -> None:
    """Create or upgrade the ``dreamcatcher`` schema on ``conn`` (one transaction)."""
    await migrate(conn, force=force)


async def init_database(dsn: str, *, force: bool = False) -> None:
    """Connect to ``dsn`` and apply the schema."""
    conn = await asyncpg.connect(dsn)
    try:
        await apply_schema(conn, force=force)
    finally:
        await conn.close()
