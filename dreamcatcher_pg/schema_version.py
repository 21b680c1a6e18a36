"""The schema version: what the package needs, what the database has, and the check at connect.

The package's schema version is the number of its newest migration (``sql/migrations/NNNN_name.sql``,
installed as ``dreamcatcher_pg.sql``); a database's is what ``dreamcatcher.schema_version()``
returns (the highest version recorded in ``dreamcatcher.schema_version`` by ``dreamcatcher init``:
:mod:`dreamcatcher_pg.migrations`). The client and the merger call :func:`check_schema_version`
once per connection; :func:`schema_status` is the same check without raising (readiness probes).

This module imports nothing of the package but its errors: a worker's client loads it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Literal

import asyncpg

from .errors import DRIVER_ERRORS, SchemaVersionError, map_db_error

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

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


def dreamcatcher_version() -> str:
    """The installed dreamcatcher_pg's version (its metadata: this module imports nothing of the package)."""
    try:
        return metadata.version("dreamcatcher-pg")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree, not installed
        return "unknown"


async def database_state(conn: asyncpg.Connection) -> tuple[SchemaState, int | None]:
    """The database's schema state and version, read from the tables (what ``init`` trusts)."""
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


def version_message(state: SchemaState, version: int | None) -> str:
    """What a process says of a database in ``state``: both versions, and what to run."""
    package, mine = package_schema_version(), f"this dreamcatcher_pg {dreamcatcher_version()}"
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
            state, version = await database_state(conn)  # why: unversioned, or no schema at all
        except DRIVER_ERRORS as exc:
            raise map_db_error(exc) from exc
    else:
        state = "current" if version == package else "older" if version < package else "newer"
    return SchemaStatus(
        state=state,
        database_version=version,
        package_version=package,
        dreamcatcher_version=dreamcatcher_version(),
        ok=state == "current",
        message=version_message(state, version),
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
