"""Helpers of the HTTP tests: a scratch database, and the inspector running in this event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import psycopg
from psycopg import sql

from dreamcatcher_pg.testing import database_dsn
from dreamcatcher_pg.web.app import WebConfig
from dreamcatcher_pg.web.server import serve


def _admin(dsn: str, statement: sql.Composed) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


@contextlib.contextmanager
def scratch_database(server_dsn: str, template: str) -> Iterator[str]:
    """A database cloned from the migrated template, dropped afterwards."""
    name = f"dc_web_{os.getpid()}_{secrets.token_hex(4)}"
    _admin(
        server_dsn,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)),
    )
    try:
        yield database_dsn(server_dsn, name)
    finally:
        _admin(server_dsn, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.asynccontextmanager
async def running_inspector(config: WebConfig, address: str = "127.0.0.1") -> AsyncIterator[str]:
    """``serve(config)`` on a free port in this event loop; yields its URL (without the token)."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, address, 0, stop=stop, on_ready=ready.set_result))
    try:
        done, _ = await asyncio.wait({ready, task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises what went wrong
        assert ready.done(), "the inspector did not start within 30 s"
        yield ready.result().split("?", 1)[0]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
