"""NOTIFY fires only when the merger has something to do (README: "Why the trigger...")."""

from __future__ import annotations

import asyncio

import asyncpg

from dreamcatcher_pg import DeltaClient


async def _collect(dsn: str, channel: str) -> tuple[asyncpg.Connection, list[str]]:
    conn = await asyncpg.connect(dsn)
    seen: list[str] = []
    await conn.add_listener(channel, lambda _c, _p, _ch, payload: seen.append(str(payload)))
    return conn, seen


async def _settle(conn: asyncpg.Connection) -> None:
    # a round trip on the listening connection delivers any notification already sent
    await conn.execute("SELECT 1")
    await asyncio.sleep(0.2)
    await conn.execute("SELECT 1")


async def test_a_frame_of_many_deltas_notifies_once_when_no_stream_is_expected(dreamcatcher_dsn: str) -> None:
    listener, seen = await _collect(dreamcatcher_dsn, "dreamcatcher_work")
    try:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world="w") as dc:
            for n in range(50):
                await dc.insert_delta(7, {"observations": [n]})
            await dc.insert_deltas([{"frame": 7, "payload": {"observations": [n]}} for n in range(50, 100)])
            await _settle(listener)
            assert seen == ["w:7:opened"]
            await dc.close_frame(7)
            await _settle(listener)
            assert seen == ["w:7:opened", "w:7:closed"]
    finally:
        await listener.close()


async def test_expected_streams_notify_once_each_per_frame(dreamcatcher_dsn: str) -> None:
    listener, seen = await _collect(dreamcatcher_dsn, "dreamcatcher_work")
    try:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="a", world="w") as a:
            await a.configure_world(expected_streams=["a", "b"])
            async with DeltaClient.connect(dreamcatcher_dsn, stream_id="b", world="w") as b:
                for n in range(10):
                    await a.insert_delta(3, {"observations": [n]})
                    await b.insert_delta(3, {"observations": [n]})
                async with DeltaClient.connect(dreamcatcher_dsn, stream_id="other", world="w") as other:
                    await other.insert_delta(3, {"observations": ["x"]})
        await _settle(listener)
        assert sorted(seen) == ["w:3:opened", "w:3:stream", "w:3:stream"]
    finally:
        await listener.close()


async def test_a_merge_notifies_the_merged_channel(dreamcatcher_dsn: str) -> None:
    from dreamcatcher_pg import Merger

    listener, seen = await _collect(dreamcatcher_dsn, "dreamcatcher_merged")
    try:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world="w") as dc:
            await dc.insert_delta(1, {"observations": [1]})
            await dc.close_frame(1)
        merger = Merger(dreamcatcher_dsn, "w")
        try:
            await merger.run_until_idle()
        finally:
            await merger.aclose()
        await _settle(listener)
        assert seen == ["w:1"]
    finally:
        await listener.close()
