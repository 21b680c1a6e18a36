"""New frames reach the page without reloading: NOTIFY → the feed → server-sent events, within a
second of the merge; polling covers a lost notification; the feed's connection comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from dreamcatcher_pg import DeltaClient
from dreamcatcher_pg.testing import running_merger
from dreamcatcher_pg.web import live
from dreamcatcher_pg.web.app import WebConfig
from tests.support.webscenario import at
from tests.support.webserver import running_inspector


async def write_frame(dsn: str, world: str, frame: int) -> float:
    """Write, close and wait for the merge of ``frame``; returns when wait_merged returned."""
    async with DeltaClient.connect(dsn, stream_id="s1", world=world) as dc:
        await dc.insert_delta(
            frame, {"posts_created": [{"number": frame, "title": f"post {frame}"}]}, at(frame)
        )
        await dc.close_frame(frame)
        await dc.wait_merged(frame, timeout=30)
    return time.monotonic()


class Events:
    """The events of one /api/events stream, read in the background."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any], float]] = []
        self.changed = asyncio.Event()

    async def read(self, response: httpx.Response) -> None:
        name = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name is not None:
                self.received.append((name, orjson.loads(line[6:]), time.monotonic()))
                self.changed.set()

    async def wait_for(self, name: str, frame_key: str, frame: int, timeout: float = 10) -> float:
        async def seen() -> float:
            while True:
                for n, data, when in self.received:
                    if n == name and data.get(frame_key) == frame:
                        return when
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(seen(), timeout)


@asynccontextmanager
async def event_stream(url: str, world: str) -> AsyncIterator[Events]:
    events = Events()
    async with (
        httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=None)) as http,
        http.stream("GET", "/api/events", params={"world": world}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(events.read(response))
        try:
            yield events
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_a_merged_frame_is_pushed_within_a_second(dreamcatcher_dsn: str) -> None:
    await write_frame_with_merger(dreamcatcher_dsn, 1)
    # polls are far apart: only the NOTIFY can be that quick
    async with (
        running_inspector(WebConfig(dreamcatcher_dsn, poll_interval=30)) as url,
        event_stream(url, "live") as events,
        running_merger(dreamcatcher_dsn, "live"),
    ):
        await events.wait_for("hello", "last_merged", 1)
        for frame in (2, 3):
            merged = await write_frame(dreamcatcher_dsn, "live", frame)
            pushed = await events.wait_for("merged", "frame", frame)
            assert pushed - merged < 1.0, f"frame {frame} pushed {pushed - merged:.3f} s after its merge"
        assert [d["frame"] for n, d, _ in events.received if n == "merged"] == [2, 3]
        assert all(d["world"] == "live" for _, d, _ in events.received)


async def write_frame_with_merger(dsn: str, frame: int) -> None:
    async with running_merger(dsn, "live"):
        await write_frame(dsn, "live", frame)


async def test_a_lost_notification_is_caught_by_the_poll(
    dreamcatcher_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "MERGED_CHANNEL", "dreamcatcher_nothing_ever")  # every NOTIFY is lost
    await write_frame_with_merger(dreamcatcher_dsn, 1)
    async with (
        running_inspector(WebConfig(dreamcatcher_dsn, poll_interval=0.2)) as url,
        event_stream(url, "live") as events,
    ):
        await events.wait_for("hello", "last_merged", 1)
        merged = await write_frame_with_merger_timed(dreamcatcher_dsn, 2)
        pushed = await events.wait_for("merged", "frame", 2)
        assert pushed - merged < 2.0


async def write_frame_with_merger_timed(dsn: str, frame: int) -> float:
    async with running_merger(dsn, "live"):
        return await write_frame(dsn, "live", frame)


async def test_the_feed_reconnects_after_losing_its_connection(dreamcatcher_dsn: str) -> None:
    await write_frame_with_merger(dreamcatcher_dsn, 1)
    feed = live.MergeFeed(dreamcatcher_dsn, None, poll_interval=0.2)
    queue = feed.subscribe("live")
    feed.start()
    try:
        await asyncio.wait_for(feed.listening.wait(), 10)
        assert await asyncio.wait_for(queue.get(), 5) == 1  # the first poll announces the last merged frame
        assert feed._conn is not None
        pid = feed._conn.get_server_pid()
        admin = await asyncpg.connect(dreamcatcher_dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.5)
        await asyncio.wait_for(feed.listening.wait(), 15)
        assert feed._conn is not None and feed._conn.get_server_pid() != pid
        await write_frame_with_merger(dreamcatcher_dsn, 2)
        assert await asyncio.wait_for(queue.get(), 5) == 2
    finally:
        await feed.stop()
    assert queue.get_nowait() is None  # stopping ends every subscription


async def test_an_event_stream_ends_when_the_server_stops(dreamcatcher_dsn: str) -> None:
    await write_frame_with_merger(dreamcatcher_dsn, 1)
    started = time.monotonic()
    async with running_inspector(WebConfig(dreamcatcher_dsn)) as url, event_stream(url, "live") as events:
        await events.wait_for("hello", "last_merged", 1)
    assert time.monotonic() - started < 10  # the open stream did not hold the shutdown
