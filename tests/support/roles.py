"""The roles of ``dreamcatcher init --roles`` as the tests use them: a cast of login users per test,
uniquely prefixed and dropped afterwards, and the checks that a statement is refused."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from psycopg import sql

from dreamcatcher_pg import DatabaseError, DreamcatcherError, Merger
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.ops.roles import (
    RoleNames,
)

W = "w"  # the world the workers write
OTHER = "other"  # a world worker 1 owns nothing in
T0 = datetime(2030, 6, 1, tzinfo=UTC)

STATE_TABLES = (
    "entity_versions",
    "frame_log",
    "quarantine_log",
    "deferred_log",
    "late_log",
    "worlds",
    "mergers",
    "stream_owners",
)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def as_user(dsn: str, user: str) -> str:
    """``dsn`` (a URI) connecting as ``user`` (trust authentication: no password)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


@contextlib.asynccontextmanager
async def connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def refused(conn: asyncpg.Connection, statement: str, *args: Any, sqlstate: str = "42501") -> None:
    """``statement`` fails with ``sqlstate`` (in its own transaction, rolled back)."""
    with pytest.raises(asyncpg.PostgresError) as caught:
        async with conn.transaction():
            await conn.execute(statement, *args)
    assert caught.value.sqlstate == sqlstate, f"{statement}: {caught.value.sqlstate} {caught.value}"


def refused_by_database(exc: BaseException) -> str | None:
    """The SQLSTATE of a mapped database error (None if it is not one)."""
    assert isinstance(exc, DreamcatcherError), repr(exc)
    assert not isinstance(exc, asyncpg.PostgresError)
    return exc.sqlstate if isinstance(exc, DatabaseError) else None


# -- the cast: roles and login users, dropped afterwards -----------------------------


def _drop_roles(admin_dsns: list[str], roles: list[str]) -> None:
    """Drop ``roles`` (users first), after revoking what they hold in every database listed."""
    for dsn in admin_dsns:
        with contextlib.suppress(psycopg.OperationalError), psycopg.connect(dsn, autocommit=True) as conn:
            existing = [
                r for r in roles if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [r]).fetchone()
            ]
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)", [existing]
            )
            for role in existing:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(admin_dsns[0], autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def cleanup_roles(admin_dsns: list[str], roles: list[str]) -> Iterator[list[str]]:
    """Drop every role name appended to the yielded list (and ``roles``) on the way out."""
    names = list(roles)
    try:
        yield names
    finally:
        _drop_roles(admin_dsns, names[::-1])


def run_cli(argv: list[str]) -> int:
    """``dreamcatcher ARGV`` in this process, leaving the logging set-up as it was."""
    root, package = logging.getLogger(), logging.getLogger("dreamcatcher_pg")
    saved = (root.handlers[:], root.level, package.level)
    try:
        return main(argv)
    finally:
        root.handlers[:], _, _ = saved
        root.setLevel(saved[1])
        package.setLevel(saved[2])


def unique_prefix() -> str:
    return f"dct_{secrets.token_hex(4)}"


@dataclass
class Cast:
    dsn: str  # the schema owner (a superuser)
    names: RoleNames
    worker: str  # member of the worker role; owns stream s1 of world W
    worker2: str  # member of the worker role; owns s2 of W and o1 of OTHER
    merger: str  # member of the merger role
    reader: str  # member of the reader role

    def url(self, user: str) -> str:
        return as_user(self.dsn, user)


async def merge_as(dsn: str, world: str) -> list[int]:
    merger = Merger(dsn, world)
    try:
        results = await merger.run_until_idle()
        assert merger.get_stats()["is_leader"]
        return [r.frame for r in results]
    finally:
        await merger.aclose()


async def log_counts(dsn: str) -> tuple[int, ...]:
    async with connect(dsn) as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM dreamcatcher.delta_log),"
            " (SELECT count(*) FROM dreamcatcher.frame_log),"
            " (SELECT count(*) FROM dreamcatcher.late_log), (SELECT count(*) FROM dreamcatcher.worlds)"
        )
    assert row is not None
    return tuple(row)
