"""Live frames: ``/api/events?world=W``, server-sent events, one ``merged`` event per merged frame.

One dedicated connection (never pooled) LISTENs on ``dreamcatcher_merged`` for
the whole server; each notification (payload ``world:frame``) wakes the
subscribers of that world. NOTIFY is only a wake-up: the same connection polls
the last merged frame of every watched world each ``poll_interval``, so a
notification lost while the connection was down costs one poll, and the
connection comes back by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

from ..db.queries import query
from ..errors import DRIVER_ERRORS
from . import params
from .api_frames import reader_of
from .db import connect

log = logging.getLogger(__name__)

MERGED_CHANNEL = "dreamcatcher_merged"
#: A comment line this often keeps proxies and the browser from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: Frames a slow subscriber may have pending; older ones are dropped (each is only a wake-up).
QUEUE_SIZE = 64


class MergeFeed:
    """Fans ``dreamcatcher_merged`` out to per-world subscriber queues (``None`` ends a queue)."""

    def __init__(self, dsn: str, reader_role: str | None, *, poll_interval: float = 1.0) -> None:
        self.dsn = dsn
        self.reader_role = reader_role
        self.poll_interval = poll_interval
        self._subscribers: dict[str, set[asyncio.Queue[int | None]]] = {}
        self._announced: dict[str, int] = {}
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dreamcatcher-web-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()
        for queues in self._subscribers.values():
            for queue in queues:
                _offer(queue, None)

    def subscribe(self, world: str) -> asyncio.Queue[int | None]:
        queue: asyncio.Queue[int | None] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.setdefault(world, set()).add(queue)
        return queue

    def unsubscribe(self, world: str, queue: asyncio.Queue[int | None]) -> None:
        queues = self._subscribers.get(world)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[world]

    def announce(self, world: str, frame: int) -> None:
        """Wake ``world``'s subscribers for ``frame``, unless a later frame was announced already."""
        if frame <= self._announced.get(world, -1):
            return
        self._announced[world] = frame
        for queue in self._subscribers.get(world, ()):
            _offer(queue, frame)

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        world, sep, frame = str(payload).rpartition(":")  # world names may hold ':'
        if sep and frame.isdigit():
            self.announce(world, int(frame))

    async def _drop_connection(self) -> None:
        self.listening.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._conn = await connect(self.dsn, self.reader_role)
                    await self._conn.add_listener(MERGED_CHANNEL, self._on_notify)
                    self.listening.set()
                    backoff = 0.5
                if self._subscribers:
                    rows = await self._conn.fetch(query("web_last_merged"), list(self._subscribers))
                    for row in rows:
                        if row["last_merged"] is not None:
                            self.announce(row["world"], int(row["last_merged"]))
                await asyncio.sleep(self.poll_interval)
            except DRIVER_ERRORS as exc:
                log.warning("live feed: %s: %s; reconnecting in %.1f s", type(exc).__name__, exc, backoff)
                await self._drop_connection()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


def _offer(queue: asyncio.Queue[int | None], item: int | None) -> None:
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def events(request: Request) -> StreamingResponse:
    """``hello`` (the last merged frame now) at once, then ``merged`` ``{world, frame}`` per merge."""
    bounds = await params.world_bounds(reader_of(request), request)
    feed: MergeFeed = request.app.state.feed
    queue = feed.subscribe(bounds.world)

    async def stream() -> AsyncIterator[bytes]:
        try:
            hello = {"world": bounds.world, "last_merged": bounds.last_merged}
            yield b"retry: 1000\n" + _event("hello", hello)
            sent = -1 if bounds.last_merged is None else bounds.last_merged
            while True:
                try:
                    frame = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if frame is None:
                    return
                if frame > sent:  # (the feed may announce what hello said already)
                    sent = frame
                    yield _event("merged", {"world": bounds.world, "frame": frame})
        finally:
            feed.unsubscribe(bounds.world, queue)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
