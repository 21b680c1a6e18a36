"""The inspector over HTTP: a small world whose every answer is known, and a running server.

``web_world`` is one database per module (the HTTP tests only read): the deltas
of :mod:`webscenario`, written with ``DeltaClient`` and merged by the
``Merger``. ``inspector`` serves it with ``serve()`` (uvicorn on a free port)
in the test's event loop, and ``http`` is an httpx client pointed at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest
from psycopg import sql
from webscenario import write_scenario

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


@pytest.fixture(scope="module")
async def web_world(dreamcatcher_server_dsn: str, dreamcatcher_template_db: str) -> AsyncIterator[str]:
    """DSN of a database holding the scenario's worlds, merged."""
    with scratch_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as dsn:
        await write_scenario(dsn)
        yield dsn


@dataclass
class Running:
    url: str
    stop: asyncio.Event
    task: asyncio.Task[None]


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


@pytest.fixture(scope="module")
async def inspector(web_world: str) -> AsyncIterator[str]:
    async with running_inspector(WebConfig(web_world, world="w", poll_interval=0.2)) as url:
        yield url


@pytest.fixture
async def http(inspector: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=inspector, timeout=30) as client:
        yield client
