"""Database roles for untrusted writers (``dreamcatcher init --roles``).

Three NOLOGIN group roles, named ``<prefix>_worker``, ``<prefix>_merger`` and
``<prefix>_reader`` (default prefix ``dreamcatcher``); grant them to login users:

* a **worker** appends deltas, only for the streams it owns
  (:func:`grant_stream`), through ``dreamcatcher.append_delta``,
  ``append_deltas`` and ``close_frame`` (SECURITY DEFINER, checked); it closes
  frames only in worlds where it owns a stream; it reads what a reader reads;
* the **merger** reads the log, writes the state (only the columns the merge writes), ends
  silent leaders and idle fence holders of its worlds;
* a **reader** selects the views (and the time-travel functions).

The SQL is ``sql/roles.sql``; the model and its limits are in the docs (Roles).
Roles are cluster-wide, privileges are per database: run it in every database
that holds a dreamcatcher schema, after the schema (``dreamcatcher init``),
and again after every upgrade of the schema.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import NamedTuple

import asyncpg

from .errors import DRIVER_ERRORS, DreamcatcherError, map_db_error
from .migrations import record_functions
from .schema import _INIT_LOCK_KEY

log = logging.getLogger(__name__)

ROLES_FILE = "roles.sql"
DEFAULT_PREFIX = "dreamcatcher"
#: PostgreSQL's limit on an identifier (NAMEDATALEN - 1), in bytes.
MAX_ROLE_NAME_BYTES = 63


class InvalidRolePrefixError(DreamcatcherError, ValueError):
    """The prefix cannot make PostgreSQL role names."""


class RoleNames(NamedTuple):
    worker: str
    merger: str
    reader: str


def role_names(prefix: str = DEFAULT_PREFIX) -> RoleNames:
    """The three role names for ``prefix``; ``InvalidRolePrefixError`` if they cannot be role names."""
    if not isinstance(prefix, str) or not prefix or "\x00" in prefix:
        raise InvalidRolePrefixError(f"role prefix {prefix!r} must be a non-empty string")
    names = RoleNames(f"{prefix}_worker", f"{prefix}_merger", f"{prefix}_reader")
    for name in names:
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidRolePrefixError(f"role prefix {prefix!r} is not valid Unicode") from None
        if size > MAX_ROLE_NAME_BYTES:
            raise InvalidRolePrefixError(
                f"role name {name!r} is {size} bytes long; PostgreSQL allows {MAX_ROLE_NAME_BYTES}",
            )
    return names


def roles_sql() -> str:
    """The SQL of ``sql/roles.sql``."""
    return resources.files("dreamcatcher_pg.sql").joinpath(ROLES_FILE).read_text(encoding="utf-8")


async def install_roles(
    conn: asyncpg.Connection, prefix: str = DEFAULT_PREFIX, *, restrict_lock_functions: bool = False
) -> RoleNames:
    """Apply ``roles.sql`` and create/grant the roles on ``conn`` (one transaction, idempotent).

    Nothing outside the ``dreamcatcher`` schema and the three roles changes, unless
    ``restrict_lock_functions``: then ``pg_notify`` and the advisory-lock functions are
    revoked from PUBLIC in this database (for every application using it) and granted to
    the merger role and the schema owner.
    """
    names = role_names(prefix)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL client_min_messages = warning")
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK_KEY)
            if await conn.fetchval("SELECT to_regclass('dreamcatcher.delta_log') IS NULL"):
                raise DreamcatcherError("the dreamcatcher schema is missing: run `dreamcatcher init` first")
            await conn.execute(roles_sql())
            created = await conn.fetchval(
                "SELECT dreamcatcher.install_roles($1, $2)", prefix, restrict_lock_functions
            )
            await record_functions(conn)  # roles.sql replaced check_writer: that is the package's
            locks_open = await conn.fetchval(
                "SELECT has_function_privilege($1, 'pg_try_advisory_lock(bigint)', 'EXECUTE')", names.worker
            )
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
    assert list(created) == list(names), (created, names)
    if restrict_lock_functions and locks_open:
        log.warning(
            "roles installed by a non-superuser: %s can still call pg_notify and take advisory locks; "
            "run `dreamcatcher init --roles --restrict-lock-functions` as a superuser to revoke them "
            "from PUBLIC in this database",
            names.worker,
        )
    return names


async def create_roles(
    dsn: str, *, prefix: str = DEFAULT_PREFIX, restrict_lock_functions: bool = False
) -> list[str]:
    """Create the worker, merger and reader roles and their grants; returns their names."""
    role_names(prefix)
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise map_db_error(exc) from exc
    try:
        names = await install_roles(conn, prefix, restrict_lock_functions=restrict_lock_functions)
    finally:
        await conn.close()
    log.info("roles %s are up to date", ", ".join(names))
    return list(names)


async def grant_stream(
    conn: asyncpg.Connection, world: str, stream_id: str, role: str, *, max_payload_bytes: int | None = None
) -> None:
    """Let members of ``role`` write ``stream_id`` of ``world`` (it replaces the stream's owner).

    ``max_payload_bytes`` is the largest payload the database accepts from them on that
    stream, counted on the payload's jsonb text (None: keep the stream's limit, 2 MiB for a
    new stream). The schema owner and superusers are never limited by it.
    """
    try:
        await conn.execute(
            "SELECT dreamcatcher.grant_stream($1, $2, $3, $4)", world, stream_id, role, max_payload_bytes
        )
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc


async def revoke_stream(conn: asyncpg.Connection, world: str, stream_id: str) -> bool:
    """Nobody (but the schema owner and superusers) may write the stream any more."""
    try:
        return bool(await conn.fetchval("SELECT dreamcatcher.revoke_stream($1, $2)", world, stream_id))
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
