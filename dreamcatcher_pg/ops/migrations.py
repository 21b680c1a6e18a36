"""Versioned migrations of the ``dreamcatcher`` schema.

The schema is ``sql/migrations/NNNN_name.sql`` (installed as ``dreamcatcher_pg.sql``), applied in
order. The package's schema version is the number of its newest migration
(:func:`package_schema_version`); a database's is the highest version recorded in
``dreamcatcher.schema_version``, which ``dreamcatcher.schema_version()`` returns in one cheap call.

``dreamcatcher init`` (:func:`migrate`) takes the init advisory lock, then in ONE transaction
applies every migration the database has not had, records each (version, name, checksum of
the file, package version), installs the default rule set and, when roles are installed,
applies them again. A failed init changes nothing.

A database made by dreamcatcher_pg 0.1.0 or earlier has the schema but no
``schema_version``: the baseline (0001) is idempotent and is applied over it, keeping its data.

Functions the package owns are fingerprinted (md5 of their source) after every init; an init
that would apply migrations refuses (:class:`SchemaEditedError`) when one of them was changed in
the database since, unless ``force``: a user's edited ``merge_frame`` is never replaced silently.

The version check at connect (:func:`check_schema_version`, :func:`schema_status`) lives in
:mod:`dreamcatcher_pg.db.schema_version`, which a worker's client loads without this module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import asyncpg

from ..db.connect import connect
from ..db.schema_version import (
    Migration,
    SchemaState,
    SchemaStatus,
    check_schema_version,
    database_state,
    dreamcatcher_version,
    migrations,
    package_schema_version,
    schema_status,
    version_message,
)
from ..errors import SchemaEditedError, SchemaVersionError

__all__ = [
    "INIT_LOCK_KEY",
    "MigrateResult",
    "Migration",
    "Plan",
    "SchemaStatus",
    "check_schema_version",
    "edited_functions",
    "migrate",
    "migrate_database",
    "migrations",
    "migrations_sql",
    "package_schema_version",
    "plan_database",
    "plan_migrations",
    "record_functions",
    "schema_status",
]

log = logging.getLogger(__name__)

#: Serialises concurrent ``init`` runs (and ``init --roles``) against one database.
INIT_LOCK_KEY = 0x64637067_696E6974  # "dcpg" "init"

#: What records the versions; created before the first migration, never changed by one.
BOOKKEEPING_SQL = """\
CREATE SCHEMA IF NOT EXISTS dreamcatcher;
-- One row per migration applied (docs/operations.md, "Upgrading").
CREATE TABLE IF NOT EXISTS dreamcatcher.schema_version (
    version         integer     PRIMARY KEY CHECK (version > 0),
    name            text        NOT NULL,
    checksum        text        NOT NULL,  -- md5 of the migration's file
    package_version text        NOT NULL,  -- the dreamcatcher_pg that applied it
    applied_at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- md5 of the source of every function the package owns, as `dreamcatcher init` left it: an
-- init that would replace a function changed since refuses (unless --force).
CREATE TABLE IF NOT EXISTS dreamcatcher.schema_functions (
    function    text        PRIMARY KEY,
    md5         text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

#: The functions the package owns and fingerprints (compiled rule sets, rules_*, are generated
#: and named after their content; they are not).
_FINGERPRINTS = r"""
SELECT 'dreamcatcher.' || p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')'
           AS function,
       md5(p.prosrc) AS md5
FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'dreamcatcher'::regnamespace AND p.prokind IN ('f', 'p')
  AND p.proname NOT LIKE 'rules\_%'
"""


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def record_sql(migration: Migration) -> str:
    """What records ``migration`` as applied (after its own SQL, in the same transaction)."""
    v = migration.version
    return (
        "INSERT INTO dreamcatcher.schema_version (version, name, checksum, package_version)\n"
        f"VALUES ({v}, {_lit(migration.name)}, {_lit(migration.checksum)}, {_lit(dreamcatcher_version())})\n"
        "ON CONFLICT (version) DO NOTHING;\n"
        "-- The database's schema version in one cheap call (what clients check when they connect).\n"
        "CREATE OR REPLACE FUNCTION dreamcatcher.schema_version() RETURNS integer\n"
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT {v} $$;\n"
        "GRANT EXECUTE ON FUNCTION dreamcatcher.schema_version() TO PUBLIC;\n"
    )


# -- what the database has -------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What ``dreamcatcher init`` would do to a database."""

    state: SchemaState
    database_version: int | None  # None: no version recorded (no schema, or made by 0.1.0)
    package_version: int
    pending: tuple[Migration, ...]
    #: applied migrations whose file differs now from what was applied (a warning, not an error)
    changed: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        if not self.pending:
            return f"schema dreamcatcher is up to date at version {self.package_version}"
        if self.state == "missing":
            head = "the database has no dreamcatcher schema"
        elif self.state == "unversioned":
            head = (
                "schema dreamcatcher has no version (made by dreamcatcher_pg 0.1.0 or earlier): "
                "the baseline is applied over it, keeping its data"
            )
        else:
            head = f"schema dreamcatcher is at version {self.database_version}"
        lines = [f"{head}; `dreamcatcher init` would apply, in one transaction:"]
        lines += [f"  {m.filename}" for m in self.pending]
        lines.append(f"then install the default rule set; schema version then: {self.package_version}")
        return "\n".join(lines)


async def plan_migrations(conn: asyncpg.Connection) -> Plan:
    """What ``init`` would apply. Raises :class:`SchemaVersionError` when the database is newer."""
    state, version = await database_state(conn)
    package = package_schema_version()
    if state == "newer":
        raise SchemaVersionError(
            version_message(state, version), database_version=version, package_version=package
        )
    files = migrations()
    changed: tuple[str, ...] = ()
    if version is not None:
        rows = await conn.fetch("SELECT version, checksum FROM dreamcatcher.schema_version")
        recorded: dict[int, str] = {r["version"]: r["checksum"] for r in rows}
        changed = tuple(m.filename for m in files if recorded.get(m.version) not in (None, m.checksum))
    done = version or 0
    return Plan(state, version, package, tuple(m for m in files if m.version > done), changed)


async def edited_functions(conn: asyncpg.Connection) -> list[str]:
    """The package's functions whose source differs from what the last ``init`` recorded."""
    if not await conn.fetchval("SELECT to_regclass('dreamcatcher.schema_functions') IS NOT NULL"):
        return []  # never recorded (a database of 0.1.0 or earlier, or a fresh one)
    rows = await conn.fetch(
        f"SELECT s.function FROM dreamcatcher.schema_functions s JOIN ({_FINGERPRINTS}) c"
        " ON c.function = s.function WHERE c.md5 <> s.md5 ORDER BY 1"
    )
    return [r["function"] for r in rows]


async def record_functions(conn: asyncpg.Connection) -> None:
    """Fingerprint the package's functions as they are now (in the caller's transaction)."""
    await conn.execute(
        "DELETE FROM dreamcatcher.schema_functions;"
        f" INSERT INTO dreamcatcher.schema_functions (function, md5) {_FINGERPRINTS}"
    )


# -- applying ----------------------------------------------------------------------


@dataclass(frozen=True)
class MigrateResult:
    before: int | None
    after: int
    applied: tuple[Migration, ...]

    def describe(self) -> str:
        if not self.applied:
            return f"schema dreamcatcher is up to date at version {self.after}"
        names = ", ".join(m.filename for m in self.applied)
        before = "none" if self.before is None else self.before
        return f"schema dreamcatcher is up to date at version {self.after} (was {before}; applied {names})"


async def migrate(conn: asyncpg.Connection, *, force: bool = False) -> MigrateResult:
    """Bring the schema on ``conn`` to the package's version (``dreamcatcher init``)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL client_min_messages = warning")
        await conn.execute("SELECT pg_advisory_xact_lock($1)", INIT_LOCK_KEY)
        plan = await plan_migrations(conn)
        for name in plan.changed:
            log.warning("migration %s was applied from a different file than this package's", name)
        if plan.pending:
            edited = await edited_functions(conn)
            if edited and not force:
                raise SchemaEditedError(
                    f"these functions were changed in the database since `dreamcatcher init` recorded them: "
                    f"{', '.join(edited)}; migrating to version {plan.package_version} may replace them. "
                    "Save your changes, then run `dreamcatcher init --force`",
                    functions=edited,
                )
            if edited:
                log.warning("replacing functions changed in the database (--force): %s", ", ".join(edited))
        await conn.execute(BOOKKEEPING_SQL)
        for migration in plan.pending:
            log.info("applying migration %s", migration.filename)
            await conn.execute(migration.sql)
            await conn.execute(record_sql(migration))
        from ..rules.store import install_default  # the default rule set: compiled from default.toml

        await install_default(conn)
        if await conn.fetchval("SELECT to_regclass('dreamcatcher.stream_owners') IS NOT NULL"):
            # roles are installed (init --roles): a migration may have made the entry points
            # SECURITY INVOKER again; restore them, or every worker would be refused
            from .roles import roles_sql

            await conn.execute(roles_sql())
        if plan.pending:  # (up to date: nothing was replaced; an edit stays one until the next migration)
            await record_functions(conn)
    return MigrateResult(plan.database_version, plan.package_version, plan.pending)


async def plan_database(dsn: str) -> Plan:
    """:func:`plan_migrations` on a connection of its own (``dreamcatcher init --plan``)."""
    conn = await connect(dsn, application_name="dreamcatcher init")
    try:
        return await plan_migrations(conn)
    finally:
        await conn.close()


async def migrate_database(dsn: str, *, force: bool = False) -> MigrateResult:
    """:func:`migrate` on a connection of its own (``dreamcatcher init``)."""
    conn = await connect(dsn, application_name="dreamcatcher init")
    try:
        return await migrate(conn, force=force)
    finally:
        await conn.close()


def migrations_sql(from_version: int = 0) -> str:
    """The schema as one SQL script, for a migration tool (Flyway, Alembic, Django): the
    bookkeeping, every migration after ``from_version`` each followed by its record, then the
    default rule set as ``dreamcatcher init`` installs it."""
    from ..rules.compile import compile_rules
    from ..rules.store import default_rules

    package = package_schema_version()
    if not 0 <= from_version <= package:
        raise ValueError(f"--from must be a schema version in 0..{package}, not {from_version}")
    parts = [
        f"-- dreamcatcher_pg {dreamcatcher_version()}: schema versions {from_version + 1}..{package} "
        f"(`dreamcatcher sql --from {from_version}`).",
        "-- Apply it in one transaction. What `dreamcatcher init` does, except that init also refuses to",
        "-- replace functions edited in the database, and compiles item readers for rule sets of old",
        "-- databases (none are needed from version 1 on).",
        BOOKKEEPING_SQL,
    ]
    for migration in migrations()[from_version:]:
        parts += [f"-- migration {migration.filename}", migration.sql, record_sql(migration)]
    rules = default_rules()
    parts += [
        "-- The default rule set (dreamcatcher_pg/rules/default.toml compiled): what `dreamcatcher init`",
        "-- installs after the migrations, every time (a no-op when it is installed already).",
        "SET standard_conforming_strings = on;",
        compile_rules(rules),
        "INSERT INTO dreamcatcher.rule_sets (id, tag, source, normalized, builtin)\n"
        f"VALUES ({_lit(rules.id)}, {_lit(rules.tag)}, {_lit(rules.source)}, "
        f"{_lit(rules.normalized_json())}::jsonb, true)\nON CONFLICT (id) DO NOTHING;",
        "INSERT INTO dreamcatcher.rule_defaults (only_row, rule_set) VALUES "
        f"(true, {_lit(rules.id)})\nON CONFLICT (only_row) DO UPDATE SET rule_set = excluded.rule_set;",
        "-- frames merged before rules were recorded were merged by the default rules",
        f"UPDATE dreamcatcher.frame_log SET rules = {_lit(rules.id)}\n"
        "WHERE status = 'merged' AND rules IS NULL;",
    ]
    return "\n".join(parts) + "\n"
