"""The inspector over HTTP: a small world whose every answer is known, and a running server.

``web_world`` is one database per module (the HTTP tests only read): the deltas
of :mod:`tests.support.webscenario`, written with ``DeltaClient`` and merged by the
``Merger``. ``inspector`` serves it with ``serve()`` (uvicorn on a free port)
in the test's event loop, and ``http`` is an httpx client pointed at it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from dreamcatcher_pg.web.app import WebConfig
from tests.support.webscenario import write_scenario
from tests.support.webserver import running_inspector, scratch_database


@pytest.fixture(scope="module")
async def web_world(dreamcatcher_server_dsn: str, dreamcatcher_template_db: str) -> AsyncIterator[str]:
    """DSN of a database holding the scenario's worlds, merged."""
    with scratch_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as dsn:
        await write_scenario(dsn)
        yield dsn


@pytest.fixture(scope="module")
async def inspector(web_world: str) -> AsyncIterator[str]:
    async with running_inspector(WebConfig(web_world, world="w", poll_interval=0.2)) as url:
        yield url


@pytest.fixture
async def http(inspector: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=inspector, timeout=30) as client:
        yield client
