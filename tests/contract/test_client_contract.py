"""One behaviour, two clients: every test runs against DeltaClient and SyncDeltaClient.

Same receipts, same errors (types and fields), same retries, on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import (
    ConnectionLostError,
    DatabaseError,
    DeltaConflictError,
    FrameClosedError,
    InvalidDeltaError,
    Merger,
)
from dreamcatcher_pg.client import session_settings
from tests.support.contract_kit import WORLD, Client, Opener

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def late_frames(dsn: str) -> list[int]:
    rows = await fetch(dsn, "SELECT frame FROM dreamcatcher.late_attempts WHERE world = $1", WORLD)
    return [r["frame"] for r in rows]


async def logged(dsn: str) -> list[tuple[int, str, datetime, str]]:
    rows = await fetch(
        dsn,
        "SELECT frame, stream_id, utc, payload::text AS payload FROM dreamcatcher.delta_log "
        "WHERE world = $1 ORDER BY frame, stream_id, utc",
        WORLD,
    )
    return [(r["frame"], r["stream_id"], r["utc"], r["payload"]) for r in rows]


@contextlib.asynccontextmanager
async def running_merger(dsn: str) -> AsyncIterator[Merger]:
    """A merger running its real loop (LISTEN + poll) in a task, as tests/integration do."""
    stop = asyncio.Event()
    merger = Merger(dsn, WORLD, poll_interval=0.2)
    task = asyncio.create_task(merger.run(stop))
    try:
        yield merger
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def wait_until_waiting(dsn: str, application_name: str, timeout: float = 10.0) -> None:
    """Until the session named ``application_name`` waits for an advisory lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await fetch(
            dsn,
            "SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'advisory'",
            application_name,
        )
        if rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{application_name!r} never waited for an advisory lock")


# -- idempotence and conflicts ----------------------------------------------------------------


async def test_a_retry_of_the_same_delta_is_a_duplicate_and_stores_nothing(
    client: Client, dreamcatcher_dsn: str
) -> None:
    first = await client.insert_delta(1, {"posts_created": [{"number": 1}]}, utc=at(1))
    again = await client.insert_delta(1, {"posts_created": [{"number": 1}]}, utc=at(1))
    assert (first.status, again.status) == ("stored", "duplicate")
    assert (first.world, first.frame, first.stream_id, first.utc) == (WORLD, 1, "w1", at(1))
    assert (again.world, again.frame, again.stream_id, again.utc) == (WORLD, 1, "w1", at(1))
    assert len(await logged(dreamcatcher_dsn)) == 1


async def test_a_batch_retried_reads_duplicate_for_every_item(client: Client, dreamcatcher_dsn: str) -> None:
    batch = [{"frame": 2, "payload": {"n": i}, "utc": at(i)} for i in range(5)]
    assert [r.status for r in await client.insert_deltas(batch)] == ["stored"] * 5
    assert [r.status for r in await client.insert_deltas(batch)] == ["duplicate"] * 5
    assert [(f, s, p) for f, s, _, p in await logged(dreamcatcher_dsn)] == [
        (2, "w1", f'{{"n": {i}}}') for i in range(5)
    ]
    assert await client.insert_deltas([]) == []


async def test_same_key_other_payload_is_a_conflict_and_the_first_stays(
    client: Client, dreamcatcher_dsn: str
) -> None:
    await client.insert_delta(1, {"n": 1}, utc=at(1))
    with pytest.raises(DeltaConflictError) as caught:
        await client.insert_delta(1, {"n": 2}, utc=at(1))
    assert caught.value.key == (WORLD, 1, "w1", at(1))
    with pytest.raises(DeltaConflictError) as in_batch:
        await client.insert_deltas(
            [{"frame": 1, "payload": {"n": 3}, "utc": at(1)}, {"frame": 1, "payload": {"n": 4}, "utc": at(2)}]
        )
    # the other item of the batch is stored, and its receipt travels on the error
    assert [(r.utc, r.status) for r in in_batch.value.receipts] == [(at(2), "stored")]  # type: ignore[attr-defined]
    assert [p for *_, p in await logged(dreamcatcher_dsn)] == ['{"n": 1}', '{"n": 4}']


# -- closed frames ------------------------------------------------------------------------------


async def test_a_delta_for_a_closed_frame_is_refused_and_recorded(
    client: Client, dreamcatcher_dsn: str
) -> None:
    await client.insert_delta(3, {"n": 1}, utc=at(1))
    assert await client.close_frame(3) == "closed"
    assert await client.close_frame(3) == "closed"  # idempotent
    assert await client.frame_status(3) == "closed"
    with pytest.raises(FrameClosedError) as caught:
        await client.insert_delta(3, {"n": 2}, utc=at(2))
    assert (caught.value.world, caught.value.frame, caught.value.stream_id) == (WORLD, 3, "w1")
    with pytest.raises(FrameClosedError):
        await client.insert_deltas([{"frame": 3, "payload": {"n": 3}, "utc": at(3)}])
    assert len(await logged(dreamcatcher_dsn)) == 1
    assert await late_frames(dreamcatcher_dsn) == [3, 3]


async def test_under_the_defer_policy_a_late_delta_is_deferred(client: Client) -> None:
    settings = await client.configure_world(late_policy="defer", close_after=30)
    assert settings.late_policy == "defer" and settings.close_after == 30.0
    await client.insert_delta(4, {"n": 1}, utc=at(1))
    await client.close_frame(4)
    assert (await client.insert_delta(4, {"n": 2}, utc=at(2))).status == "deferred"


async def test_frame_status_of_an_unknown_frame_is_none(client: Client) -> None:
    await client.configure_world()
    assert await client.frame_status(99) is None


# -- validation at the edge ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "payload", "field"),
    [
        (-1, {"n": 1}, "frame"),
        (True, {"n": 1}, "frame"),
        ("7", {"n": 1}, "frame"),
        (1, ["not", "a", "dict"], "payload"),
        (1, {"x": math.nan}, "payload.x"),
        (1, {"x": "a\x00b"}, "payload.x"),
        (1, {"frame": 2}, "payload.frame"),
        (1, {"stream_id": "other"}, "payload.stream_id"),
    ],
)
async def test_invalid_input_is_refused_before_anything_is_stored(
    client: Client, dreamcatcher_dsn: str, frame: Any, payload: Any, field: str
) -> None:
    with pytest.raises(InvalidDeltaError) as caught:
        await client.insert_delta(frame, payload)
    assert caught.value.field == field
    # in a batch, one bad item fails it all: the good one before it is not written either
    with pytest.raises(InvalidDeltaError):
        await client.insert_deltas([{"frame": 1, "payload": {"ok": 1}}, {"frame": frame, "payload": payload}])
    assert await logged(dreamcatcher_dsn) == []


async def test_invalid_batches_and_settings_are_refused(client: Client, dreamcatcher_dsn: str) -> None:
    with pytest.raises(InvalidDeltaError, match="unknown keys"):
        await client.insert_deltas([{"frame": 1, "payload": {}, "stream": "x"}])
    with pytest.raises(InvalidDeltaError, match="not a mapping"):
        await client.insert_deltas([(1, {})])  # type: ignore[list-item]
    with pytest.raises(InvalidDeltaError, match="spans 33 frames"):
        await client.insert_deltas([{"frame": f, "payload": {}} for f in range(33)])
    with pytest.raises(InvalidDeltaError) as caught:
        await client.configure_world(late_policy="later")
    assert caught.value.field == "late_policy"
    with pytest.raises(InvalidDeltaError):
        await client.close_frame(-5)
    assert await logged(dreamcatcher_dsn) == []


async def test_the_database_refusal_of_a_far_frame_maps_to_the_same_error(client: Client) -> None:
    await client.configure_world(max_frame_ahead=10)
    await client.insert_delta(1, {"n": 1})
    with pytest.raises(InvalidDeltaError, match="too far ahead") as caught:  # SQLSTATE DCF01
        await client.insert_delta(1000, {"n": 1})
    assert caught.value.field == "frame"


# -- merges -------------------------------------------------------------------------------------


async def test_wait_merged_wakes_when_the_merger_merges_the_frame(
    client: Client, dreamcatcher_dsn: str
) -> None:
    await client.configure_world(close_after=3600)  # only the explicit close closes the frame
    await client.insert_delta(5, {"posts_created": [{"number": 1, "title": "t"}]})
    async with running_merger(dreamcatcher_dsn):
        waiting = asyncio.create_task(client.wait_merged(5, timeout=20, poll=30))  # only a NOTIFY wakes it
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = time.monotonic()
        await client.close_frame(5)
        await asyncio.wait_for(waiting, 20)
        assert time.monotonic() - started < 10
    assert await client.frame_status(5) == "merged"
    assert await client.close_frame(5) == "merged"
    await client.wait_merged(5, timeout=1)  # already merged: at once


async def test_wait_merged_times_out_without_a_merger(client: Client) -> None:
    await client.insert_delta(6, {"n": 1})
    await client.close_frame(6)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not merged within"):
        await client.wait_merged(6, timeout=0.5, poll=0.1)
    assert time.monotonic() - started < 5


async def test_wait_merged_on_a_frame_that_can_never_merge_raises(
    client: Client, dreamcatcher_dsn: str
) -> None:
    await client.insert_delta(7, {"n": 1})
    await client.close_frame(7)
    async with running_merger(dreamcatcher_dsn):
        await client.wait_merged(7, timeout=20)
    with pytest.raises(FrameClosedError, match="never be merged"):
        await client.wait_merged(2, timeout=5)
    with pytest.raises(FrameClosedError):
        await client.close_frame(2)


@pytest.mark.parametrize("retries", [3, 0])
async def test_a_merge_that_passes_the_frame_during_the_insert_is_retried(
    open_client: Opener, dreamcatcher_dsn: str, retries: int
) -> None:
    """SQLSTATE 40001: the insert made frame 5 while a merge passed it; its commit is refused (the
    deferred trigger, see sql/schema.sql) and nothing is stored. The client retries: the retry
    finds the frame late, and the world's policy answers (here ``reject``: FrameClosedError).
    Without retries the serialization failure itself comes out, as a DatabaseError."""
    squatter = await asyncpg.connect(dreamcatcher_dsn)
    try:
        async with open_client(retries=retries) as client:
            await client.configure_world()
            # hold the world lock: the insert's commit waits for it, its frame row written
            await squatter.execute("SELECT pg_advisory_lock(dreamcatcher.world_lock_key($1))", WORLD)
            insert = asyncio.create_task(client.insert_delta(5, {"n": 1}, utc=at(5)))
            await wait_until_waiting(dreamcatcher_dsn, session_settings(WORLD, "w1")["application_name"])
            # a merge passes frame 5 meanwhile (as a claim of a higher frame would)
            await squatter.execute("UPDATE dreamcatcher.worlds SET horizon = 10 WHERE world = $1", WORLD)
            await squatter.execute("SELECT pg_advisory_unlock(dreamcatcher.world_lock_key($1))", WORLD)
            if retries:
                with pytest.raises(FrameClosedError) as closed:
                    await asyncio.wait_for(insert, 20)
                assert closed.value.frame == 5
            else:
                with pytest.raises(DatabaseError) as failed:
                    await asyncio.wait_for(insert, 20)
                assert failed.value.sqlstate == "40001"
    finally:
        await squatter.close()
    assert await logged(dreamcatcher_dsn) == []
    frames = await fetch(dreamcatcher_dsn, "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1", WORLD)
    assert frames == []
    assert await late_frames(dreamcatcher_dsn) == ([5] if retries else [])


# -- connections --------------------------------------------------------------------------------


async def test_a_call_after_the_session_was_ended_reconnects(client: Client, dreamcatcher_dsn: str) -> None:
    await client.insert_delta(1, {"n": 1}, utc=at(1))
    ended = await fetch(
        dreamcatcher_dsn,
        "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name = $1",
        session_settings(WORLD, "w1")["application_name"],
    )
    assert [r["ok"] for r in ended] == [True]
    await asyncio.sleep(0.2)
    assert (await client.insert_delta(1, {"n": 1}, utc=at(1))).status == "duplicate"
    [receipt] = await client.insert_deltas([{"frame": 1, "payload": {"n": 2}, "utc": at(2)}])
    assert receipt.status == "stored"
    assert len(await logged(dreamcatcher_dsn)) == 2


async def test_an_unreachable_server_is_a_connection_error_at_connect(open_client: Opener) -> None:
    with pytest.raises(ConnectionLostError):
        async with open_client(dsn="postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2"):
            pass


async def test_an_invalid_identity_is_refused(open_client: Opener) -> None:
    with pytest.raises(InvalidDeltaError) as caught:
        async with open_client(stream_id=""):
            pass
    assert caught.value.field == "stream_id"
