"""Applying the SQL schema (``dreamcatcher init``).

The schema lives in ``sql/*.sql`` (installed as the ``dreamcatcher_pg.sql``
package). Applying it is idempotent: every object is created ``IF NOT EXISTS``
or ``OR REPLACE``, so running ``init`` twice is safe. The default merge rules
(``dreamcatcher_pg/rules/default.toml``) are compiled and installed with it.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

from ..db.connect import connect

#: The files, in the order they are applied.
SCHEMA_FILES = ("schema.sql", "merge.sql", "rules.sql", "timetravel.sql", "views.sql")

#: Serialises concurrent ``init`` runs against one database.
_INIT_LOCK_KEY = 0x64637067_696E6974  # "dcpg" "init"


def schema_sql() -> str:
    """The whole schema as one SQL script."""
    package = resources.files("dreamcatcher_pg.sql")
    return "\n".join(package.joinpath(name).read_text(encoding="utf-8") for name in SCHEMA_FILES)


async def apply_schema(conn: asyncpg.Connection) -> None:
    """Create or update the ``dreamcatcher`` schema on ``conn`` (one transaction)."""
    script = schema_sql()
    async with conn.transaction():
        await conn.execute("SET LOCAL client_min_messages = warning")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK_KEY)
        await conn.execute(script)
        from ..rules.store import install_default  # the default rule set: compiled from default.toml

        await install_default(conn)
        if await conn.fetchval("SELECT to_regclass('dreamcatcher.stream_owners') IS NOT NULL"):
            # roles are installed (init --roles): re-applying the schema made the entry points
            # SECURITY INVOKER again; restore them, or every worker would be refused
            from .roles import roles_sql

            await conn.execute(roles_sql())


async def init_database(dsn: str) -> None:
    """Connect to ``dsn`` and apply the schema."""
    conn = await connect(dsn)
    try:
        await apply_schema(conn)
    finally:
        await conn.close()
