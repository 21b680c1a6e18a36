"""The contract suite: the same behavioural tests against DeltaClient and SyncDeltaClient
(the facades are in tests/support/contract_kit.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, SyncDeltaClient
from tests.support.contract_kit import WORLD, AsyncFacade, Client, Opener, SyncFacade


@pytest.fixture(params=["async", "sync"])
def open_client(request: pytest.FixtureRequest, dreamcatcher_dsn: str) -> Opener:
    """``async with open_client(stream_id=..., world=..., dsn=...) as dc``: a client of the kind
    under test, on the test's database unless ``dsn`` says otherwise."""
    kind: str = request.param

    @contextlib.asynccontextmanager
    async def opener(
        *, stream_id: str = "w1", world: str = WORLD, dsn: str | None = None, **options: Any
    ) -> AsyncIterator[Client]:
        target = dsn or dreamcatcher_dsn
        if kind == "async":
            async with DeltaClient.connect(target, stream_id=stream_id, world=world, **options) as dc:
                yield AsyncFacade(dc)
        else:
            sync = await asyncio.to_thread(
                SyncDeltaClient.open, target, stream_id=stream_id, world=world, **options
            )
            try:
                yield SyncFacade(sync)
            finally:
                await asyncio.to_thread(sync.close)

    return opener


@pytest.fixture
async def client(open_client: Opener) -> AsyncIterator[Client]:
    """A client of stream ``w1`` in world ``contract``, of each kind in turn."""
    async with open_client() as dc:
        yield dc
