"""The server a run uses, its scratch database, and what the machine is.

Without ``--dsn`` an embedded PostgreSQL is started with the library's durable
defaults (fsync on). Either way the run works in a fresh database
``dc_bench_<hex>`` (schema applied with ``init_database``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.procmem import memory_gb, physical_cores
from dreamcatcher_pg.ops.schema import init_database


@dataclass(frozen=True, slots=True)
class BenchServer:
    kind: str  # "embedded" | "dsn"
    admin_dsn: str
    dsn: str  # the scratch database (a URI: asyncpg and the merger CLI need one)
    database: str


def database_uri(dsn: str, dbname: str) -> str:
    """``dsn`` (a URI or libpq keywords) pointed at ``dbname``, as a URI."""
    if dsn.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(dbname, safe=""), parts.query, ""))
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["dbname"] = dbname
    host = params.pop("host", "")
    port = params.pop("port", "")
    user = params.pop("user", "")
    password = params.pop("password", "")
    params.pop("dbname")
    netloc = (
        quote(user, safe="") + (":" + quote(password, safe="") if password else "") + ("@" if user else "")
    )
    query = [f"{k}={quote(v, safe='/')}" for k, v in sorted(params.items())]
    if host.startswith("/"):
        query += [f"host={quote(host, safe='/')}"] + ([f"port={port}"] if port else [])
    else:
        netloc += host + (f":{port}" if port else "")
    uri = f"postgresql://{netloc}/{quote(dbname, safe='')}"
    return uri + ("?" + "&".join(query) if query else "")


def _admin(dsn: str, statement: sql.Composed) -> None:
    # psycopg accepts both URIs and keywords; make_conninfo validates either
    with psycopg.connect(make_conninfo(dsn), autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def _scratch(kind: str, admin_dsn: str) -> Iterator[BenchServer]:
    name = f"dc_bench_{secrets.token_hex(6)}"
    _admin(admin_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = database_uri(admin_dsn, name)
        asyncio.run(init_database(dsn))
        yield BenchServer(kind, admin_dsn, dsn, name)
    finally:
        _admin(admin_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def bench_server(dsn: str | None) -> Iterator[BenchServer]:
    """A scratch database on ``dsn``'s server, or on a fresh embedded (durable) server."""
    if dsn:
        with _scratch("dsn", dsn) as server:
            yield server
        return
    from dreamcatcher_pg.embedded import start_embedded

    with start_embedded() as pg, _scratch("embedded", pg.dsn) as server:
        yield server


_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
    "work_mem",
    "temp_buffers",
    "max_connections",
    "jit",
)


def source_version() -> dict[str, Any]:
    """The commit the run measured, and whether the library or its SQL had local changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "dirty": bool(git("status", "--porcelain", "--", "sql", "dreamcatcher_pg")),
    }


def machine_info(server: BenchServer) -> dict[str, Any]:
    """Cores, memory, load and the PostgreSQL settings that move the numbers."""
    with psycopg.connect(make_conninfo(server.dsn)) as conn:
        settings = {
            name: conn.execute(sql.SQL("SELECT current_setting({})").format(sql.Literal(name))).fetchone()
            for name in _SETTINGS
        }
    pg = {name: (row[0] if row else None) for name, row in settings.items()}
    load1, load5, _ = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_gb": memory_gb(),
        "load_1m_at_start": round(load1, 2),
        "load_5m_at_start": round(load5, 2),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "server": server.kind,
        "pg_version": pg.pop("server_version"),
        "pg_settings": pg,
        "source": source_version(),
    }
