"""Frames (docs/design.md §4): closing, merge order, late deltas, waiting for merges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, FrameClosedError, Merger, MergeResult
from tests.support.helpers import connection, fetch, observation_ids, wait_until

WORLD = "default"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def put(
    dsn: str, stream: str, frame: int, payload: Mapping[str, Any], utc: datetime | None = None
) -> str:
    async with DeltaClient.connect(dsn, stream_id=stream, world=WORLD) as dc:
        return (await dc.insert_delta(frame, payload, utc=utc)).status


async def close(dsn: str, *frames: int) -> list[str]:
    async with DeltaClient.connect(dsn, stream_id="closer", world=WORLD) as dc:
        return [await dc.close_frame(f) for f in frames]


async def merge(dsn: str) -> list[MergeResult]:
    merger = Merger(dsn, WORLD)
    try:
        return await merger.run_until_idle()
    finally:
        await merger.aclose()


async def frames(dsn: str) -> dict[int, dict[str, Any]]:
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.frames WHERE world = $1", WORLD)
    return {r["frame"]: r for r in rows}


async def statuses(dsn: str) -> dict[int, str]:
    return {f: r["status"] for f, r in (await frames(dsn)).items()}


@contextlib.asynccontextmanager
async def running_merger(dsn: str) -> AsyncIterator[Merger]:
    """A merger running its real loop (LISTEN + poll) in a task."""
    stop = asyncio.Event()
    merger = Merger(dsn, WORLD, poll_interval=0.2)
    task = asyncio.create_task(merger.run(stop))
    try:
        yield merger
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- closing -------------------------------------------------------------------


async def test_close_frame_is_idempotent(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "s1", 1, {"posts_created": [1]})
    assert await close(dsn, 1) == ["closed"]
    assert await close(dsn, 1, 1) == ["closed", "closed"]  # already closed: no error
    await merge(dsn)
    assert await close(dsn, 1) == ["merged"]  # already merged: no error
    assert (await statuses(dsn)) == {1: "merged"}


async def test_closing_a_frame_with_no_deltas_makes_an_empty_frame_that_merges(
    dreamcatcher_dsn: str,
) -> None:
    dsn = dreamcatcher_dsn
    assert await close(dsn, 3) == ["closed"]
    results = await merge(dsn)
    assert [r.frame for r in results] == [3]
    row = (await frames(dsn))[3]
    assert row["status"] == "merged"
    assert row["delta_count"] == 0
    assert row["state_hash"]
    # the frame exists now: a delta for it is late
    with pytest.raises(FrameClosedError):
        await put(dsn, "s1", 3, {"posts_created": [1]})


async def test_expected_streams_close_the_frame(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with (
        DeltaClient.connect(dsn, stream_id="s1", world=WORLD) as s1,
        DeltaClient.connect(dsn, stream_id="s2", world=WORLD) as s2,
    ):
        config = await s1.configure_world(expected_streams=["s1", "s2"])
        assert config.expected_streams == ["s1", "s2"]
        async with running_merger(dsn):
            await s1.insert_delta(1, {"posts_created": [1]})
            assert await s1.frame_status(1) == "open"  # s2 has not written yet
            await s2.insert_delta(1, {"posts_created": [2]})
            await s2.wait_merged(1, timeout=10)  # no close_frame call anywhere
    row = (await frames(dsn))[1]
    assert (row["status"], row["close_reason"], row["delta_count"]) == ("merged", "streams", 2)
    assert {r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")} == {1, 2}


async def test_deadline_closes_a_stalled_frame(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="s1", world=WORLD) as s1:
        await s1.configure_world(expected_streams=["s1", "never-writes"], close_after=0.3)
        async with running_merger(dsn):
            await s1.insert_delta(1, {"posts_created": [1]})
            await s1.wait_merged(1, timeout=10)
    row = (await frames(dsn))[1]
    assert (row["status"], row["close_reason"]) == ("merged", "deadline")


async def test_configure_world_round_trips_its_settings(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="s1", world=WORLD) as dc:
        config = await dc.configure_world(expected_streams=["s1", "s2"], late_policy="defer", close_after=1.5)
        assert (config.expected_streams, config.late_policy, config.close_after) == (
            ["s1", "s2"],
            "defer",
            1.5,
        )
        config = await dc.configure_world(close_after=timedelta(seconds=2))
        # None keeps a setting as it is
        assert (config.expected_streams, config.late_policy, config.close_after) == (
            ["s1", "s2"],
            "defer",
            2.0,
        )


# -- order ---------------------------------------------------------------------


async def test_frames_need_not_be_consecutive_and_merge_in_order(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    # written and closed out of order
    for frame in (108, 10, 14):
        await put(dsn, "s1", frame, {"posts_updated": [{"number": 1, "seen_in": frame}]}, at(frame))
    await close(dsn, 108, 14, 10)
    results = await merge(dsn)
    assert [r.frame for r in results] == [10, 14, 108]
    assert await statuses(dsn) == {10: "merged", 14: "merged", 108: "merged"}
    merged_at = {f: r["merged_at"] for f, r in (await frames(dsn)).items()}
    assert merged_at[10] <= merged_at[14] <= merged_at[108]
    post = (await fetch(dsn, "SELECT * FROM dreamcatcher.posts"))[0]
    assert (post["data"]["seen_in"], post["first_frame"], post["last_frame"]) == (108, 10, 108)


async def test_an_open_frame_holds_back_later_closed_frames(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "s1", 10, {"posts_created": [10]})
    await put(dsn, "s1", 14, {"posts_created": [14]})
    await close(dsn, 14)
    assert await merge(dsn) == []
    assert await statuses(dsn) == {10: "open", 14: "closed"}
    assert await fetch(dsn, "SELECT * FROM dreamcatcher.posts") == []
    # frame 10 is not late: it is still open
    assert await put(dsn, "s2", 10, {"posts_created": [11]}) == "stored"
    await close(dsn, 10)
    assert [r.frame for r in await merge(dsn)] == [10, 14]
    assert await statuses(dsn) == {10: "merged", 14: "merged"}


# -- late deltas ---------------------------------------------------------------


async def test_late_delta_is_rejected_and_recorded(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "s1", 10, {"posts_created": [1]})
    await put(dsn, "s1", 14, {"posts_created": [2]})
    await close(dsn, 10)
    await merge(dsn)
    await close(dsn, 14)  # closed, not merged yet

    late = [
        (10, {"posts_created": [100]}),  # the merged frame itself
        (5, {"posts_created": [105]}),  # never existed, below the last merged frame
        (14, {"posts_created": [114]}),  # closed, not merged
    ]
    async with DeltaClient.connect(dsn, stream_id="slow", world=WORLD) as dc:
        for frame, payload in late:
            with pytest.raises(FrameClosedError) as info:
                await dc.insert_delta(frame, payload, utc=at(frame))
            assert info.value.frame == frame
            assert info.value.world == WORLD

    attempts = await fetch(
        dsn, "SELECT frame, stream_id, utc, payload FROM dreamcatcher.late_attempts ORDER BY id"
    )
    assert [(a["frame"], a["stream_id"], a["utc"], a["payload"]) for a in attempts] == [
        (frame, "slow", at(frame), payload) for frame, payload in late
    ]
    # nothing of them is stored or merged, and no frame 5 was created
    assert await fetch(dsn, "SELECT * FROM dreamcatcher.deltas WHERE stream_id = 'slow'") == []
    await merge(dsn)
    assert sorted(r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")) == [1, 2]
    assert await statuses(dsn) == {10: "merged", 14: "merged"}


async def test_deferred_late_delta_merges_into_the_next_frame(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="slow", world=WORLD) as slow:
        await slow.configure_world(late_policy="defer")
        await put(dsn, "s1", 1, {"posts_created": [{"number": 1, "title": "one"}]})
        await close(dsn, 1)
        await merge(dsn)

        receipt = await slow.insert_delta(1, {"posts_created": [{"number": 9, "title": "late"}]}, utc=at(1))
        assert (receipt.status, receipt.frame) == ("deferred", 1)
        await put(dsn, "s1", 2, {"posts_created": [{"number": 2}]})
        await close(dsn, 2)
        assert [r.frame for r in await merge(dsn)] == [2]

    logged = await fetch(dsn, "SELECT frame, late FROM dreamcatcher.deltas WHERE stream_id = 'slow'")
    assert logged == [{"frame": 1, "late": True}]  # its original frame is kept in the log
    attempts = await fetch(dsn, "SELECT frame, policy FROM dreamcatcher.late_attempts")
    assert attempts == [{"frame": 1, "policy": "defer"}]
    # merged into frame 2, never into the past
    late_post = (await fetch(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 9"))[0]
    assert (late_post["first_frame"], late_post["last_frame"]) == (2, 2)
    assert await fetch(dsn, "SELECT * FROM dreamcatcher.posts_at($1, 1) WHERE number = 9", WORLD) == []
    stats = (await frames(dsn))[2]["stats"]
    assert stats["deferred"] == 1
    assert (await frames(dsn))[1]["stats"]["deferred"] == 0


async def test_deferred_into_a_closed_frame_is_counted(dreamcatcher_dsn: str) -> None:
    """A delta for a closed (not yet merged) frame under ``defer`` is late too: it is
    merged into the next frame to merge, which is that same frame, and counted."""
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="slow", world=WORLD) as slow:
        await slow.configure_world(late_policy="defer")
        await put(dsn, "s1", 1, {"posts_created": [1]})
        await close(dsn, 1)
        receipt = await slow.insert_delta(1, {"posts_created": [9]})
        assert receipt.status == "deferred"
        await merge(dsn)
    row = (await frames(dsn))[1]
    assert sorted(r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")) == [1, 9]
    assert row["stats"]["deferred"] == 1


async def test_late_deltas_in_a_batch(dreamcatcher_dsn: str) -> None:
    """insert_deltas: a late item raises FrameClosedError, the others of the batch stay stored."""
    dsn = dreamcatcher_dsn
    await put(dsn, "s1", 1, {"posts_created": [1]})
    await close(dsn, 1)
    await merge(dsn)
    async with DeltaClient.connect(dsn, stream_id="slow", world=WORLD) as dc:
        with pytest.raises(FrameClosedError) as info:
            await dc.insert_deltas(
                [
                    {"frame": 1, "payload": {"posts_created": [101]}, "utc": at(1)},
                    {"frame": 2, "payload": {"posts_created": [2]}, "utc": at(2)},
                ]
            )
        receipts = info.value.receipts  # type: ignore[attr-defined]
        assert [(r.frame, r.status) for r in receipts] == [(2, "stored")]

        await dc.configure_world(late_policy="defer")
        receipts = await dc.insert_deltas([{"frame": 1, "payload": {"posts_created": [102]}, "utc": at(3)}])
        assert [(r.frame, r.status) for r in receipts] == [(1, "deferred")]
    attempts = await fetch(dsn, "SELECT frame, policy FROM dreamcatcher.late_attempts ORDER BY id")
    assert attempts == [{"frame": 1, "policy": "reject"}, {"frame": 1, "policy": "defer"}]
    await close(dsn, 2)
    await merge(dsn)
    numbers = sorted(r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts"))
    assert numbers == [1, 2, 102]
    assert (await frames(dsn))[2]["stats"]["deferred"] == 1


# -- waiting for merges --------------------------------------------------------


async def test_wait_merged_returns_after_merge_and_times_out_otherwise(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="s1", world=WORLD) as dc:
        await dc.insert_delta(1, {"posts_created": [1]})
        with pytest.raises(TimeoutError):
            await dc.wait_merged(1, timeout=0.2, poll=0.05)  # open: not merged
        await dc.close_frame(1)
        with pytest.raises(TimeoutError):
            await dc.wait_merged(1, timeout=0.2, poll=0.05)  # closed, no merger ran
        await merge(dsn)
        await dc.wait_merged(1, timeout=5)
        assert await dc.frame_status(1) == "merged"


async def test_merged_notify_wakes_wait_merged(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="s1", world=WORLD) as dc:
        await dc.insert_delta(1, {"posts_created": [1]})
        await dc.close_frame(1)
        # polls every 30 s: only the NOTIFY can wake it within the 10 s below
        waiter = asyncio.create_task(dc.wait_merged(1, poll=30))
        await asyncio.sleep(0.3)  # let it park on the notification (no assertion on time)
        assert not waiter.done()
        await merge(dsn)
        await asyncio.wait_for(waiter, 10)


async def test_a_worker_idle_in_its_insert_transaction_does_not_hold_up_the_merger(
    dreamcatcher_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A due frame whose fence a worker holds (its insert's transaction left open) is not
    waited for: the merger gives the close up after close_wait, warns with the worker's
    backend, and tries again at each tick. Meanwhile the frame's other writers are not
    queued behind a waiting close, and once the idle transaction commits the frame closes and
    merges with both deltas."""
    world = "idle-fence"
    async with (
        DeltaClient.connect(dreamcatcher_dsn, stream_id="busy", world=world) as other,
        connection(dreamcatcher_dsn) as idle,
    ):
        await other.configure_world(close_after=0.2)
        assert (
            await other.insert_delta(1, {"observations": [{"id": "first"}]}, utc=at(1))
        ).status == "stored"
        tr = idle.transaction()
        await tr.start()
        stored = await idle.fetchval(
            'SELECT dreamcatcher.append_delta($1, \'idle\', 1, $2, \'{"observations": [{"id": "idle"}]}\')',
            world,
            at(2),
        )
        assert stored == "stored"  # and the transaction stays open: the fence is held
        idle_pid = idle.get_server_pid()
        merger = Merger(dreamcatcher_dsn, world, poll_interval=0.1, name="m")
        stop = asyncio.Event()
        task = asyncio.create_task(merger.run(stop))
        try:
            with caplog.at_level(logging.WARNING, logger="dreamcatcher_pg.merger"):

                async def warned() -> bool:
                    return any(str(idle_pid) in r.getMessage() for r in caplog.records)

                await wait_until(warned, timeout=20.0, what="the merger to give the close up")
                # the merger is not stuck in the close: the other writer's insert goes through
                receipt = await asyncio.wait_for(
                    other.insert_delta(1, {"observations": [{"id": "second"}]}, utc=at(3)), 5.0
                )
                assert receipt.status == "stored"
                assert await other.frame_status(1) == "open"
            await tr.commit()
            await other.wait_merged(1, timeout=20.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20.0)
            await merger.aclose()
        async with connection(dreamcatcher_dsn) as conn:
            assert sorted(await observation_ids(conn, world, 1)) == ["first", "idle", "second"]
