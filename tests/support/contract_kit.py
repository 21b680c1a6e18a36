"""The contract suite's facades: DeltaClient and SyncDeltaClient behind one async API.

The ``client`` fixture is parametrized over both clients and hands each test one async facade:
the async client's methods as they are, the sync client's run in a worker thread
(``asyncio.to_thread``), so a test is written once and a merger or a second session can run in
the event loop while a sync call blocks. Real PostgreSQL only (a fresh database per test, from
the dreamcatcher pytest plugin); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from dreamcatcher_pg import DeltaClient, Receipt, SyncDeltaClient
from dreamcatcher_pg.models import WorldConfig

WORLD = "contract"


class Client(Protocol):
    """What both facades offer: DeltaClient's API, awaited."""

    kind: str
    world: str
    stream_id: str

    async def insert_delta(self, frame: int, payload: Mapping[str, Any], utc: Any = None) -> Receipt: ...
    async def insert_deltas(self, deltas: Iterable[Mapping[str, Any]]) -> list[Receipt]: ...
    async def close_frame(self, frame: int, *, reason: str = "explicit") -> str: ...
    async def frame_status(self, frame: int) -> str | None: ...
    async def configure_world(self, **settings: Any) -> WorldConfig: ...
    async def wait_merged(self, frame: int, timeout: float | None = None, *, poll: float = 0.5) -> None: ...


class AsyncFacade:
    kind = "async"

    def __init__(self, client: DeltaClient) -> None:
        self._client = client
        self.world, self.stream_id = client.world, client.stream_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class SyncFacade:
    kind = "sync"

    def __init__(self, client: SyncDeltaClient) -> None:
        self._client = client
        self.world, self.stream_id = client.world, client.stream_id

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        @functools.wraps(method)
        async def threaded(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return threaded


Opener = Callable[..., contextlib.AbstractAsyncContextManager[Client]]
