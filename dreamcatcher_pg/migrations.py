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

The client and the merger call :func:`check_schema_version` once per connection;
:func:`schema_status` is the same check without raising (for readiness probes).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import asyncpg

from .errors import DRIVER_ERRORS, SchemaEditedError, SchemaVersionError, map_db_error

log = logging.getLogger(__name__)

#: Serialises concurrent ``init`` runs (and ``init --roles``) against one database.
INIT_LOCK_KEY = 0x64637067_696E6974  # "dcpg" "init"

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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

SchemaState = Literal["current", "older", "newer", "unversioned", "missing"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.md5(self.sql.encode()).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration of the package, in order (numbered 1, 2, ... without gaps); read once."""
    folder = resources.files("dreamcatcher_pg.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"sql/migrations/ is not numbered 1..N: {[m.filename for m in found]}")
    return tuple(found)


def package_schema_version() -> int:
    """The schema version this dreamcatcher_pg needs: the number of its newest migration."""
    return len(migrations())


def _package_version() -> str:
    from . import __version__  # (the package imports the client, which imports this module)

    return __version__


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def record_sql(migration: Migration) -> str:
    """What records ``migration`` as applied (after its own SQL, in the same transaction)."""
    v = migration.version
    return (
        "INSERT INTO dreamcatcher.schema_version (version, name, checksum, package_version)\n"
        f"VALUES ({v}, {_lit(migration.name)}, {_lit(migration.checksum)}, {_lit(_package_version())})\n"
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


async def _read_state(conn: asyncpg.Connection) -> tuple[SchemaState, int | None]:
    row = await conn.fetchrow(
        "SELECT to_regclass('dreamcatcher.schema_version') IS NOT NULL AS versioned,"
        " to_regclass('dreamcatcher.delta_log') IS NOT NULL AS has_log"
    )
    assert row is not None
    if not row["versioned"]:
        return ("unversioned" if row["has_log"] else "missing"), None
    version = await conn.fetchval("SELECT max(version) FROM dreamcatcher.schema_version")
    if version is None:
        return ("unversioned" if row["has_log"] else "missing"), None
    package = package_schema_version()
    state: SchemaState = "current" if version == package else "older" if version < package else "newer"
    return state, int(version)


async def plan_migrations(conn: asyncpg.Connection) -> Plan:
    """What ``init`` would apply. Raises :class:`SchemaVersionError` when the database is newer."""
    state, version = await _read_state(conn)
    package = package_schema_version()
    if state == "newer":
        raise SchemaVersionError(_message(state, version), database_version=version, package_version=package)
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
        from .rules.store import install_default  # the default rule set: compiled from default.toml

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
    conn = await asyncpg.connect(dsn)
    try:
        return await plan_migrations(conn)
    finally:
        await conn.close()


async def migrate_database(dsn: str, *, force: bool = False) -> MigrateResult:
    """:func:`migrate` on a connection of its own (``dreamcatcher init``)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, force=force)
    finally:
        await conn.close()


def migrations_sql(from_version: int = 0) -> str:
    """The schema as one SQL script, for a migration tool (Flyway, Alembic, Django): the
    bookkeeping, every migration after ``from_version`` each followed by its record, then the
    default rule set as ``dreamcatcher init`` installs it."""
    from .rules.compile import compile_rules
    from .rules.store import default_rules

    package = package_schema_version()
    if not 0 <= from_version <= package:
        raise ValueError(f"--from must be a schema version in 0..{package}, not {from_version}")
    parts = [
        f"-- dreamcatcher_pg {_package_version()}: schema versions {from_version + 1}..{package} "
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


# -- the check at connect ------------------------------------------------------------


@dataclass(frozen=True)
class SchemaStatus:
    """The database's schema version against the package's (what a readiness probe reports)."""

    state: SchemaState
    database_version: int | None
    package_version: int
    dreamcatcher_version: str
    ok: bool
    message: str


def _message(state: SchemaState, version: int | None) -> str:
    package, mine = package_schema_version(), f"this dreamcatcher_pg {_package_version()}"
    if state == "current":
        return f"database schema is version {version}, as {mine} needs"
    if state == "older":
        return f"database schema is version {version}, {mine} needs {package}: run `dreamcatcher init`"
    if state == "newer":
        return (
            f"database schema is version {version}, newer than the {package} {mine} knows: "
            "upgrade dreamcatcher_pg (docs/operations.md, Upgrading)"
        )
    if state == "unversioned":
        return (
            "database schema has no version (made by dreamcatcher_pg 0.1.0 or earlier), "
            f"{mine} needs {package}: run `dreamcatcher init`"
        )
    return f"database has no dreamcatcher schema, {mine} needs version {package}: run `dreamcatcher init`"


async def schema_status(conn: asyncpg.Connection) -> SchemaStatus:
    """The database's schema version against the package's; never raises for a wrong version
    (driver errors other than a missing schema do raise, mapped)."""
    package = package_schema_version()
    try:
        version: int | None = await conn.fetchval("SELECT dreamcatcher.schema_version()")
    except (asyncpg.UndefinedFunctionError, asyncpg.InvalidSchemaNameError):
        version = None
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
    if version is None:
        try:
            state, version = await _read_state(conn)  # why: unversioned, or no schema at all
        except DRIVER_ERRORS as exc:
            raise map_db_error(exc) from exc
    else:
        state = "current" if version == package else "older" if version < package else "newer"
    return SchemaStatus(
        state=state,
        database_version=version,
        package_version=package,
        dreamcatcher_version=_package_version(),
        ok=state == "current",
        message=_message(state, version),
    )


async def check_schema_version(conn: asyncpg.Connection) -> int:
    """The database's schema version; :class:`SchemaVersionError` unless it is the package's."""
    status = await schema_status(conn)
    if not status.ok:
        raise SchemaVersionError(
            status.message, database_version=status.database_version, package_version=status.package_version
        )
    assert status.database_version is not None
    return status.database_version
