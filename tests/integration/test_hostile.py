"""One misbehaving writer must never stall a world (DESIGN invariant 9).

Each test attacks the world ``victim`` the way a hostile or buggy worker would: through the
SQL functions the client calls, on its own connection, with the values and the transactions
the client would never send. Meanwhile one merger task per world runs in this process, and
the world ``bystander``, served by the same process, must keep merging; and the victim
itself must go on merging every acknowledged delta of its well-behaved writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from dreamcatcher_pg import DeltaClient, InvalidDeltaError, Merger
from dreamcatcher_pg.client import session_settings
from dreamcatcher_pg.models import prepare_delta
from dreamcatcher_pg.ops.status import collect_status
from tests.support.helpers import connection, fetch, unique_utc, wait_until

VICTIM = "victim"
BYSTANDER = "bystander"
PAYLOAD = orjson.dumps({"posts_created": [{"number": 1, "title": "hello"}]}).decode()
APPEND = "SELECT dreamcatcher.append_delta($1, $2, $3, $4, $5::text::jsonb)"
_bystander_frames = itertools.count(1)


@contextlib.asynccontextmanager
async def mergers(dsn: str) -> AsyncIterator[dict[str, Merger]]:
    """One merger per world, in this process, as ``dreamcatcher merger --world victim --world
    bystander`` runs them (a short poll, so a stall shows within the tests' timeouts)."""
    stop = asyncio.Event()
    running = {w: Merger(dsn, w, poll_interval=0.1) for w in (VICTIM, BYSTANDER)}
    tasks = [asyncio.create_task(m.run(stop)) for m in running.values()]
    try:
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def bystander_merges(dsn: str) -> None:
    """A frame of the other world merges within seconds, whatever the victim is going through."""
    frame = next(_bystander_frames)
    async with DeltaClient.connect(dsn, stream_id="b", world=BYSTANDER) as dc:
        await dc.insert_delta(frame, {"observations": [{"n": frame}]})
        await dc.close_frame(frame)
        await dc.wait_merged(frame, timeout=10)


async def good_frame(dsn: str, frame: int, *, close: bool = True) -> None:
    """A well-behaved writer's delta in ``frame`` of the victim; closed and merged when asked."""
    async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
        assert (await dc.insert_delta(frame, {"posts_created": [{"number": frame}]})).status == "stored"
        if close:
            await dc.close_frame(frame)
            await dc.wait_merged(frame, timeout=10)


async def victim_numbers(dsn: str) -> list[int]:
    rows = await fetch(dsn, "SELECT number FROM dreamcatcher.posts WHERE world = $1 ORDER BY 1", VICTIM)
    return [r["number"] for r in rows]


async def refused(conn: asyncpg.Connection, sqlstate: str, statement: str, *args: Any) -> str:
    with pytest.raises(asyncpg.PostgresError) as caught:
        await conn.fetchval(statement, *args)
    assert caught.value.sqlstate == sqlstate, (statement, caught.value)
    return str(caught.value)


async def advisory_locks_of(conn: asyncpg.Connection, pid: int) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND granted", pid
        )
    )


# -- 1. values the merge could not read are refused by the database itself ---------------------


async def test_a_far_future_utc_is_refused_and_the_world_merges_on(dreamcatcher_dsn: str) -> None:
    """`append_delta(..., '294270-01-01', ...)` was stored, and its frame failed to merge on every
    retry (the observation key overflowed a bigint): the world was stopped for good."""
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            for utc in ("294270-01-01 00:00:00+00", "10000-01-01 00:00:00+00", "0001-01-01 00:00:00+01"):
                await refused(
                    conn,
                    "22008",
                    "SELECT dreamcatcher.append_delta($1, 's', 1, $2::text::timestamptz, "
                    """'{"observations": [1]}')""",
                    VICTIM,
                    utc,
                )
            await refused(
                conn,
                "22008",
                "SELECT dreamcatcher.append_deltas($1, 's', '{1}',"
                """ ARRAY[$2::text::timestamptz], ARRAY['{"observations": [1]}'::jsonb])""",
                VICTIM,
                "294270-01-01 00:00:00+00",
            )
            # COPY straight into the log: the table's own checks
            for utc in ("294270-01-01 00:00:00+00", "0001-01-01 00:00:00+01"):
                row = f'{VICTIM}\t1\ts\t{utc}\t{{"observations": [1]}}\n'.encode()
                with pytest.raises(asyncpg.CheckViolationError, match="delta_log_utc_range"):
                    await conn.copy_to_table(
                        "delta_log",
                        schema_name="dreamcatcher",
                        source=io.BytesIO(row),
                        columns=["world", "frame", "stream_id", "utc", "payload"],
                    )
            # the edges themselves are accepted, and merge (asyncpg sends datetime.min as -infinity)
            assert (
                await conn.fetchval(APPEND, VICTIM, "s", 1, datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC), PAYLOAD)
                == "stored"
            )
            last = datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=UTC)
            assert await conn.fetchval(APPEND, VICTIM, "t", 1, last, '{"observations": [2]}') == "stored"
        finally:
            await conn.close()
        await good_frame(dsn, 1)
        await good_frame(dsn, 2)
        await bystander_merges(dsn)
    assert await victim_numbers(dsn) == [1, 2]


async def test_payloads_too_big_or_too_deep_for_the_merge_are_refused(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    ok: Any = 1
    for _ in range(62):  # the object is level 1, its key's list level 2: the 1 sits at level 64
        ok = [ok]
    deep = [ok]  # one level too many
    prepare_delta(1, {"k": ok}, None, stream_id="s", max_payload_bytes=1 << 20)  # (the client agrees)
    with pytest.raises(InvalidDeltaError, match="deeper than 64"):
        prepare_delta(1, {"k": deep}, None, stream_id="s", max_payload_bytes=1 << 20)
    big = {"observations": ["x" * (1 << 20)] * 17}  # 17 MiB, over the 16 MiB the log holds
    async with mergers(dsn):
        conn = await asyncpg.connect(dsn)
        try:
            utc = unique_utc()
            for payload in ({"k": deep}, big):
                await refused(conn, "23514", APPEND, VICTIM, "s", 1, utc, orjson.dumps(payload).decode())
            assert (
                await conn.fetchval(APPEND, VICTIM, "s", 1, utc, orjson.dumps({"k": ok}).decode()) == "stored"
            )
        finally:
            await conn.close()
        await good_frame(dsn, 1)
        await bystander_merges(dsn)
    assert await victim_numbers(dsn) == [1]


# -- 2. one far frame must not make every later frame late --------------------------------------


async def test_a_frame_far_ahead_is_refused_and_normal_frames_go_on(dreamcatcher_dsn: str) -> None:
    """`close_frame(2**63 - 1)` was accepted: once merged, every delta of a normal frame was late.
    A client sending epoch milliseconds as frames by mistake did the same."""
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        await good_frame(dsn, 100)
        conn = await asyncpg.connect(dsn)
        try:
            await refused(conn, "22003", "SELECT dreamcatcher.close_frame($1, $2)", VICTIM, 2**63 - 1)
            await refused(conn, "22003", "SELECT dreamcatcher.close_frame($1, $2)", VICTIM, 2**53)
            message = await refused(
                conn, "DCF01", "SELECT dreamcatcher.close_frame($1, $2)", VICTIM, 100 + 10_000_001
            )
            assert "too far ahead" in message and "last merged frame, 100" in message
            epoch_ms = 1_764_000_000_000
            await refused(conn, "DCF01", APPEND, VICTIM, "s", epoch_ms, unique_utc(), PAYLOAD)
            await refused(
                conn,
                "DCF01",
                "SELECT dreamcatcher.append_deltas($1, 's', ARRAY[$2::bigint], ARRAY[now()],"
                """ ARRAY['{}'::jsonb])""",
                VICTIM,
                epoch_ms,
            )
        finally:
            await conn.close()
        async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
            with pytest.raises(InvalidDeltaError, match="too far ahead") as caught:
                await dc.insert_delta(epoch_ms, {"posts_created": [3]})
            assert caught.value.field == "frame"
            await dc.configure_world(max_frame_ahead=2_000_000_000_000)
            assert (await dc.insert_delta(epoch_ms, {"posts_created": [4]})).status == "stored"
        await good_frame(dsn, 101)  # a normal frame, just above the last merged one
        await bystander_merges(dsn)
    assert await victim_numbers(dsn) == [100, 101]


async def test_the_first_frame_of_a_new_world_may_be_any_frame(dreamcatcher_dsn: str) -> None:
    """Frames counted as epoch seconds start far from 0: a world's first frame is not limited."""
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="epoch") as dc:
        first = 1_764_000_000
        assert (await dc.insert_delta(first, {"observations": [1]})).status == "stored"
        assert (await dc.insert_delta(first + 86_400 * 30, {"observations": [2]})).status == "stored"
        with pytest.raises(InvalidDeltaError, match="above its lowest frame"):
            await dc.insert_delta(first * 1000, {"observations": [3]})


# -- 3. a writer idle in its transaction holds its own frame, never the world -------------------


async def test_an_idle_transaction_that_opened_a_frame_does_not_hold_back_frames_below(
    dreamcatcher_dsn: str,
) -> None:
    """A session that opened frame 50 inside a transaction and went idle held the world lock:
    frames 2 and 3, closed by a well-behaved worker, never merged."""
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        await good_frame(dsn, 1)
        idle = await asyncpg.connect(dsn, server_settings=session_settings(VICTIM, "idle"))
        try:
            tx = idle.transaction()
            await tx.start()
            assert await idle.fetchval(APPEND, VICTIM, "idle", 50, unique_utc(), PAYLOAD) == "stored"
            await good_frame(dsn, 2)  # (wait_merged: within 10 s)
            await good_frame(dsn, 3)
            await bystander_merges(dsn)
            # the idle transaction commits at last: frame 50 was passed by no merge, it is kept
            await tx.commit()
        finally:
            await idle.close()
        await good_frame(dsn, 50)
    assert await victim_numbers(dsn) == [1, 2, 3, 50]


async def test_a_frame_opened_in_a_transaction_that_a_merge_passed_is_refused_at_commit(
    dreamcatcher_dsn: str,
) -> None:
    """The other side of the same race: frame 5 opened in an open transaction, frame 7 closed and
    merged meanwhile. The commit must fail (nothing acknowledged), and the retry finds 5 late."""
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        await good_frame(dsn, 1)
        slow = await asyncpg.connect(dsn)
        try:
            tx = slow.transaction()
            await tx.start()
            utc = unique_utc()
            assert await slow.fetchval(APPEND, VICTIM, "slow", 5, utc, PAYLOAD) == "stored"
            await good_frame(dsn, 7)
            with pytest.raises(asyncpg.SerializationError, match="merged past"):
                await tx.commit()
            assert await slow.fetchval(APPEND, VICTIM, "slow", 5, utc, PAYLOAD) == "late"
        finally:
            await slow.close()
    assert await victim_numbers(dsn) == [1, 7]
    assert await fetch(
        dsn, "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1 ORDER BY 1", VICTIM
    ) == [
        {"frame": 1},
        {"frame": 7},
    ]


async def test_a_writer_idle_in_its_frame_is_ended_and_the_frame_closes_on_its_own_rules(
    dreamcatcher_dsn: str,
) -> None:
    """A writer that appended to frame 2 in a transaction and went idle held frame 2's fence: the
    deadline could never close it. Past the world's idle_writer_timeout the merger ends that
    session (its delta rolls back: it was never acknowledged) and the frame closes and merges.
    Meanwhile status names the session: its pid, its stream, for how long."""
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
        await dc.configure_world(close_after=0.3, idle_writer_timeout=1.5)
    async with mergers(dsn) as running:
        await good_frame(dsn, 1)
        await good_frame(dsn, 2, close=False)  # frame 2 is open; its deadline is 0.3 s away
        idle = await asyncpg.connect(dsn, server_settings=session_settings(VICTIM, "sleepy"))
        pid = idle.get_server_pid()
        utc = unique_utc()
        tx = idle.transaction()
        await tx.start()
        assert await idle.fetchval(APPEND, VICTIM, "sleepy", 2, utc, PAYLOAD) == "stored"

        async def named() -> bool:
            [world] = await collect_status(dsn, VICTIM)
            return any(h["pid"] == pid and h["stream"] == "sleepy" for h in world.fence_holders)

        await wait_until(named, timeout=5, what="status to name the idle writer")
        [world] = await collect_status(dsn, VICTIM)
        holder = next(h for h in world.fence_holders if h["pid"] == pid)
        assert holder["state"] == "idle in transaction" and holder["holds"] == ["frame 2"]
        assert holder["session"] == f"dreamcatcher {VICTIM}/sleepy"
        await bystander_merges(dsn)  # the other world does not wait for any of it
        async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
            await dc.wait_merged(2, timeout=15)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await tx.commit()  # its session was ended: the commit never happens
        await idle.close()
        assert running[VICTIM].get_stats()["writers_ended"] == 1
    logged = await fetch(
        dsn, "SELECT stream_id FROM dreamcatcher.delta_log WHERE world = $1 AND frame = 2", VICTIM
    )
    assert logged == [{"stream_id": "good"}]


async def test_a_lock_taken_by_hand_is_ended_like_an_idle_writer(dreamcatcher_dsn: str) -> None:
    """Without `init --roles --restrict-lock-functions` any session may take the world lock. One
    that holds it and idles is ended past the world's idle_writer_timeout, like an idle writer."""
    dsn = dreamcatcher_dsn
    async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
        await dc.configure_world(idle_writer_timeout=1.0)
    async with mergers(dsn) as running:
        await good_frame(dsn, 1)
        squatter = await asyncpg.connect(dsn)
        try:
            await squatter.execute("SELECT pg_advisory_lock(dreamcatcher.world_lock_key($1))", VICTIM)
            await good_frame(dsn, 2)  # closes at once; its claim waits until the squatter is ended
            await bystander_merges(dsn)
        finally:
            await squatter.close()
        assert running[VICTIM].get_stats()["writers_ended"] == 1
    assert await victim_numbers(dsn) == [1, 2]


# -- 5. the fence holds at every isolation level: it refuses the levels it cannot hold at -------


@pytest.mark.parametrize("level", ["repeatable_read", "serializable"])
async def test_an_insert_at_a_snapshot_older_than_a_close_is_refused(
    dreamcatcher_dsn: str, level: str
) -> None:
    """At REPEATABLE READ a transaction's snapshot predates its lock: an insert saw frame 7 open
    after its close had committed and its merge had run, and was acknowledged, never merged."""
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        await good_frame(dsn, 7, close=False)
        conn = await asyncpg.connect(dsn)
        try:
            tx = conn.transaction(isolation=level)
            await tx.start()
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.frame_log")  # the snapshot is taken
            async with DeltaClient.connect(dsn, stream_id="closer", world=VICTIM) as dc:
                await dc.close_frame(7)
                await dc.wait_merged(7, timeout=10)
            message = await refused(conn, "0A000", APPEND, VICTIM, "racer", 7, unique_utc(), PAYLOAD)
            assert "READ COMMITTED" in message
            await tx.rollback()
            for statement in (
                "SELECT dreamcatcher.append_deltas($1, 'r', '{8}', ARRAY[now()], ARRAY['{}'::jsonb])",
                "SELECT dreamcatcher.copy_begin($1, 'r', '{8}', ARRAY[now()])",
                "SELECT dreamcatcher.close_frame($1, 8)",
            ):
                async with conn.transaction(isolation=level):
                    await refused(conn, "0A000", statement, VICTIM)
        finally:
            await conn.close()
        # nothing acknowledged was lost: frame 7 holds exactly the good delta
        logged = await fetch(dsn, "SELECT stream_id FROM dreamcatcher.delta_log WHERE world = $1", VICTIM)
        assert logged == [{"stream_id": "good"}]


async def test_the_client_pins_read_committed_whatever_the_database_default(dreamcatcher_dsn: str) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_isolation = serializable')
    finally:
        await conn.close()
    async with mergers(dreamcatcher_dsn):
        await good_frame(dreamcatcher_dsn, 1)
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="batch", world=VICTIM) as dc:
            receipts = await dc.insert_deltas([{"frame": 2, "payload": {"posts_created": [2]}}] * 1)
            assert [r.status for r in receipts] == ["stored"]
            await dc.close_frame(2)
            await dc.wait_merged(2, timeout=10)
    assert await victim_numbers(dreamcatcher_dsn) == [1, 2]


# -- 6. what one call can make the server hold is bounded ---------------------------------------


async def test_one_call_spans_at_most_32_frames_and_10000_deltas(dreamcatcher_dsn: str) -> None:
    """One lock per frame until COMMIT, in a lock table the whole server shares: a batch of a
    million frames filled it and every session of the cluster failed."""
    dsn = dreamcatcher_dsn
    conn = await asyncpg.connect(dsn)
    try:
        batch = (
            "SELECT dreamcatcher.append_deltas($1, 's', $2::bigint[], $3::timestamptz[], $4::text[]::jsonb[])"
        )
        copy = "SELECT dreamcatcher.copy_begin($1, 's', $2::bigint[], $3::timestamptz[])"
        frames = list(range(1, 34))
        utcs = [unique_utc() for _ in frames]
        async with conn.transaction():
            message = await refused(conn, "54000", batch, VICTIM, frames, utcs, ["{}"] * 33)
            assert "33 frames" in message
        async with conn.transaction():
            await refused(conn, "54000", copy, VICTIM, frames, utcs)
        tx = conn.transaction()
        await tx.start()
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetchval(batch, VICTIM, frames, utcs, ["{}"] * 33)
        async with connection(dsn) as other:  # (its transaction is aborted, still open)
            assert await advisory_locks_of(other, conn.get_server_pid()) == 0  # refused before any lock
        await tx.rollback()
        many = [1] * 10_001
        await refused(conn, "54000", batch, VICTIM, many, [unique_utc() for _ in many], ["{}"] * len(many))
        assert await conn.fetchval(batch, VICTIM, frames[:32], utcs[:32], ["{}"] * 32) == ["stored"] * 32
    finally:
        await conn.close()
    async with DeltaClient.connect(dsn, stream_id="c", world=VICTIM) as dc:
        with pytest.raises(InvalidDeltaError, match="spans 33 frames"):
            await dc.insert_deltas([{"frame": f, "payload": {}} for f in range(100, 133)])


async def test_a_retried_late_delta_is_one_row(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with mergers(dsn):
        await good_frame(dsn, 1)
    conn = await asyncpg.connect(dsn)
    try:
        utc = unique_utc()
        for _ in range(5):
            assert await conn.fetchval(APPEND, VICTIM, "retrier", 1, utc, PAYLOAD) == "late"
        other = unique_utc()
        assert await conn.fetchval(
            "SELECT dreamcatcher.append_deltas($1, 'retrier', '{1, 1}', ARRAY[$2, $3]::timestamptz[],"
            " ARRAY[$4, $4]::text[]::jsonb[])",
            VICTIM,
            utc,
            other,
            PAYLOAD,
        ) == ["late", "late"]
        rows = await conn.fetch(
            "SELECT utc, attempts FROM dreamcatcher.late_attempts WHERE world = $1 ORDER BY attempts", VICTIM
        )
        assert [(r["utc"], r["attempts"]) for r in rows] == [(other, 1), (utc, 6)]
    finally:
        await conn.close()
    [world] = await collect_status(dsn, VICTIM)
    assert world.late_attempts == 7
