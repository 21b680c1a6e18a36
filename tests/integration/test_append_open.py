"""The cheap path of a single insert (migration 0002), attacked at the database.

``append_open`` stores a delta only when its frame is open and its key is new; everything else
is left to ``append_delta``, the reference. The log's bounds moved from table CHECKs to domains:
whoever writes (the functions, a plain INSERT, COPY), the same values are refused.
"""

from __future__ import annotations

import asyncio
import io
import secrets

import asyncpg
import psycopg
import pytest

from dreamcatcher_pg import DeltaClient
from dreamcatcher_pg.ops.migrations import migrate, migrations
from tests.integration.test_migrations import empty_database
from tests.support.helpers import at, connection

OPEN = "SELECT dreamcatcher.append_open($1, $2, $3, $4, $5::jsonb)"
REFERENCE = "SELECT dreamcatcher.append_delta($1, $2, $3, $4, $5::jsonb)"
ROW = (
    "SELECT payload::text FROM dreamcatcher.delta_log"
    " WHERE world = $1 AND frame = $2 AND stream_id = $3 AND utc = $4"
)


async def _rows(conn: asyncpg.Connection, world: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", world))


async def test_append_open_stores_only_into_an_open_frame(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        # no frame row yet: not its case (append_delta makes the frame), nothing stored or made
        assert await conn.fetchval(OPEN, "w", "s", 1, at(1), '{"a": 1}') is None
        assert await _rows(conn, "w") == 0
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.frame_log WHERE world = 'w'") == 0
        # the frame open: stored, exactly as given
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(1), '{"a": 1}') == "stored"
        assert await conn.fetchval(OPEN, "w", "s", 1, at(2), '{"b": [2]}') is True
        assert await conn.fetchval(ROW, "w", 1, "s", at(2)) == '{"b": [2]}'
        # closed: not stored, not even recorded as late (the reference does that)
        assert await conn.fetchval("SELECT dreamcatcher.close_frame('w', 1)") == "closed"
        assert await conn.fetchval(OPEN, "w", "s", 1, at(3), '{"c": 3}') is None
        assert await _rows(conn, "w") == 2
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.late_log WHERE world = 'w'") == 0
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(3), '{"c": 3}') == "late"


async def test_append_open_never_overwrites_a_stored_key(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(1), '{"a": 1}') == "stored"
        for payload in ('{"a": 1}', '{"a": 2}'):
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.fetchval(OPEN, "w", "s", 1, at(1), payload)
        assert await conn.fetchval(ROW, "w", 1, "s", at(1)) == '{"a": 1}'
        assert await _rows(conn, "w") == 1
        # and the client, whose cheap call meets the stored key, gets the reference's answer
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
            assert (await dc.insert_delta(1, {"a": 1}, utc=at(1))).status == "duplicate"
            with pytest.raises(Exception, match="already stored"):
                await dc.insert_delta(1, {"a": 2}, utc=at(1))
            assert (await dc.insert_delta(1, {"a": 3}, utc=at(2))).status == "stored"
        assert await _rows(conn, "w") == 2


@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
async def test_append_open_runs_only_at_read_committed(dreamcatcher_dsn: str, level: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(1), "{}") == "stored"
        with pytest.raises(asyncpg.FeatureNotSupportedError, match="only at READ COMMITTED"):
            async with conn.transaction(isolation=level.replace(" ", "_")):  # type: ignore[arg-type]
                await conn.fetchval(OPEN, "w", "s", 1, at(2), "{}")
        assert await _rows(conn, "w") == 1


async def test_append_open_holds_the_fence(dreamcatcher_dsn: str) -> None:
    """A close waits for an append_open in flight; once it returns, append_open stores nothing."""
    async with connection(dreamcatcher_dsn) as writer, connection(dreamcatcher_dsn) as closer:
        assert await writer.fetchval(REFERENCE, "w", "s", 1, at(1), "{}") == "stored"
        tx = writer.transaction()
        await tx.start()
        assert await writer.fetchval(OPEN, "w", "s", 1, at(2), '{"in": "flight"}') is True
        closing = asyncio.ensure_future(closer.fetchval("SELECT dreamcatcher.close_frame('w', 1)"))
        await asyncio.sleep(0.3)
        assert not closing.done()  # the close waits for the insert's transaction
        await tx.commit()
        assert await asyncio.wait_for(closing, 10) == "closed"
        assert await writer.fetchval(OPEN, "w", "s", 1, at(3), "{}") is None
        assert await _rows(writer, "w") == 2


async def test_append_open_wakes_the_merger_for_the_first_delta_of_an_expected_stream(
    dreamcatcher_dsn: str,
) -> None:
    async with connection(dreamcatcher_dsn) as conn, connection(dreamcatcher_dsn) as listener:
        seen: list[str] = []
        await listener.add_listener("dreamcatcher_work", lambda _c, _p, _ch, note: seen.append(str(note)))
        await conn.execute("INSERT INTO dreamcatcher.worlds (world, expected_streams) VALUES ('w', '{a,b}')")
        assert await conn.fetchval(REFERENCE, "w", "a", 1, at(1), "{}") == "stored"
        assert await conn.fetchval(OPEN, "w", "b", 1, at(2), "{}") is True  # b's first: may complete
        assert await conn.fetchval(OPEN, "w", "b", 1, at(3), "{}") is True  # b's second: nothing new
        assert await conn.fetchval(OPEN, "w", "x", 1, at(4), "{}") is True  # not expected: nothing
        await listener.execute("SELECT 1")
        await asyncio.sleep(0.2)
        await listener.execute("SELECT 1")
        assert seen == ["w:1:opened", "w:1:stream", "w:1:stream"]  # a's first (by append_delta), b's


BAD_VALUES = [
    ("frame", "-1", "delta_log_frame_range"),
    ("frame", "9007199254740992", "delta_log_frame_range"),
    ("stream_id", "", "delta_log_stream_id_check"),
    ("stream_id", "x" * 201, "delta_log_stream_id_check"),
    ("utc", "infinity", "delta_log_utc_range"),
    ("utc", "-infinity", "delta_log_utc_range"),
    ("utc", "10000-01-01 00:00:00+00", "delta_log_utc_range"),
    ("payload", "[1, 2]", "delta_log_payload_check"),
    ("payload", '"text"', "delta_log_payload_check"),
    ("payload", '{"a": ' + "[" * 64 + "]" * 64 + "}", "delta_log_payload_depth"),
]


def _row(column: str, value: str) -> dict[str, str]:
    row = {"world": "w", "frame": "1", "stream_id": "s", "utc": "2026-01-01 00:00:00+00", "payload": "{}"}
    row[column] = value
    return row


@pytest.mark.parametrize(("column", "value", "constraint"), BAD_VALUES)
async def test_the_log_refuses_what_the_merge_could_not_read_whoever_writes(
    dreamcatcher_dsn: str, column: str, value: str, constraint: str
) -> None:
    row = _row(column, value)
    async with connection(dreamcatcher_dsn) as conn:
        # a plain INSERT (a session that may write the table)
        with pytest.raises(asyncpg.CheckViolationError, match=constraint):
            await conn.execute(
                "INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
                " VALUES ($1, $2::text::bigint, $3, $4::text::timestamptz, $5::text::jsonb)",
                *row.values(),
            )
        # COPY, text and binary
        line = "\t".join(row.values()).encode() + b"\n"
        with pytest.raises(asyncpg.CheckViolationError, match=constraint):
            await conn.copy_to_table(
                "delta_log", schema_name="dreamcatcher", source=io.BytesIO(line), columns=list(row)
            )
        # and the cheap path, into an open frame
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(1), "{}") == "stored"
        if column != "frame":  # (an impossible frame is never open: not its case)
            with pytest.raises(asyncpg.CheckViolationError, match=constraint):
                await conn.fetchval(
                    "SELECT dreamcatcher.append_open($1, $2, $3::text::bigint, $4::text::timestamptz,"
                    " $5::text::jsonb)",
                    row["world"],
                    row["stream_id"],
                    row["frame"],
                    row["utc"],
                    row["payload"],
                )
        assert await _rows(conn, "w") == 1


async def test_the_log_s_columns_read_as_their_base_types(dreamcatcher_dsn: str) -> None:
    """Clients see bigint, text, timestamptz and jsonb, as before the domains."""
    async with connection(dreamcatcher_dsn) as conn:
        assert await conn.fetchval(REFERENCE, "w", "s", 1, at(1), '{"a": 1}') == "stored"
        for relation in ("dreamcatcher.delta_log", "dreamcatcher.deltas", "dreamcatcher.frame_inputs"):
            row = await conn.fetchrow(f"SELECT frame, stream_id, utc, payload FROM {relation}")
            assert row is not None
            assert (row["frame"], row["stream_id"], row["utc"], row["payload"]) == (
                1,
                "s",
                at(1),
                '{"a": 1}',
            )
        # (PostgreSQL describes a domain column by its base type: psycopg reads them alike)
        async with await psycopg.AsyncConnection.connect(dreamcatcher_dsn) as pconn:
            cur = await pconn.execute("SELECT frame, stream_id, utc, payload FROM dreamcatcher.deltas")
            assert await cur.fetchone() == (1, "s", at(1), {"a": 1})


async def test_migration_2_keeps_the_views_grants(dreamcatcher_server_dsn: str) -> None:
    """The views over the log are made again by 0002; whoever could read them still can."""
    async with empty_database(dreamcatcher_server_dsn) as dsn, connection(dsn) as conn:
        await conn.execute(migrations()[0].sql)  # a database of the previous release (version 1)
        role = f"dc_view_reader_{secrets.token_hex(4)}"
        await conn.execute(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role}")
        try:
            await conn.execute(
                "GRANT SELECT ON dreamcatcher.deltas, dreamcatcher.frames, dreamcatcher.frame_inputs"
                f" TO {role}"
            )
            await conn.execute("GRANT SELECT ON dreamcatcher.deltas TO PUBLIC")
            result = await migrate(conn)
            assert result.after == len(migrations())
            for view in ("deltas", "frames", "frame_inputs"):
                assert await conn.fetchval(
                    "SELECT has_table_privilege($1, $2, 'SELECT')", role, f"dreamcatcher.{view}"
                ), view
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a"
                " WHERE c.oid = 'dreamcatcher.deltas'::regclass AND a.grantee = 0"
            )
            assert await conn.fetchval("SELECT to_regclass('pg_temp.dc_0002_view_grants')") is None
        finally:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


OPEN_FRAMES = "SELECT dreamcatcher.open_frames($1, $2::bigint[])"


async def test_open_frames_makes_the_rows_of_a_batch_s_frames_and_appends_nothing(
    dreamcatcher_dsn: str,
) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        assert await conn.fetchval(OPEN_FRAMES, "w", [3, 1, 2, 1]) == []
        assert await conn.fetch(
            "SELECT frame, status FROM dreamcatcher.frame_log WHERE world = 'w' ORDER BY frame"
        ) == [(1, "open"), (2, "open"), (3, "open")]
        assert await _rows(conn, "w") == 0
        # the frames not open are returned; a late one gets no row
        assert await conn.fetchval("SELECT dreamcatcher.close_frame('w', 2)") == "closed"
        await conn.execute("UPDATE dreamcatcher.worlds SET horizon = 3 WHERE world = 'w'")
        assert sorted(await conn.fetchval(OPEN_FRAMES, "w", [1, 2, 0, 4])) == [0, 2]
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.frame_log WHERE world = 'w'") == 4
        # the checks of every entry point: isolation, batch limits, how far ahead
        with pytest.raises(asyncpg.FeatureNotSupportedError):
            async with conn.transaction(isolation="repeatable_read"):
                await conn.fetchval(OPEN_FRAMES, "w", [5])
        with pytest.raises(asyncpg.ProgramLimitExceededError, match="spans 33 frames"):
            await conn.fetchval(OPEN_FRAMES, "w", list(range(10, 43)))
        with pytest.raises(asyncpg.PostgresError, match="too far ahead") as caught:
            await conn.fetchval(OPEN_FRAMES, "w", [10**9])
        assert caught.value.sqlstate == "DCF01"
        with pytest.raises(asyncpg.NumericValueOutOfRangeError):
            await conn.fetchval(OPEN_FRAMES, "w", [-1])


async def test_a_batch_never_waits_for_another_writer_s_batch_of_the_same_frame(
    dreamcatcher_dsn: str,
) -> None:
    """Writer A holds a batch of frame 5 open (as a slow COPY would); writer B's batch of frame 5
    goes through. B's client made the frame's row in a transaction of its own: had A's open
    transaction made it, B would have waited for A's COMMIT (shown on frame 6)."""
    batch = [{"frame": 5, "payload": {"b": n}, "utc": at(n)} for n in range(3)]
    async with (
        connection(dreamcatcher_dsn) as a,
        DeltaClient.connect(dreamcatcher_dsn, stream_id="b", world="w") as b,
    ):
        assert [r.status for r in await b.insert_deltas(batch)] == ["stored"] * 3
        tx = a.transaction()
        await tx.start()
        try:
            assert await a.fetchval("SELECT dreamcatcher.copy_begin('w', 'a', '{5}')") == "copy"
            more = [{**d, "utc": at(10 + i)} for i, d in enumerate(batch)]
            receipts = await asyncio.wait_for(b.insert_deltas(more), 10)
            assert [r.status for r in receipts] == ["stored"] * 3
            # what open_frames avoids: a frame row made inside A's open transaction
            assert await a.fetchval("SELECT dreamcatcher.copy_begin('w', 'a', '{6}')") == "copy"
            blocked = asyncio.ensure_future(b.insert_deltas([{"frame": 6, "payload": {"b": 6}}]))
            await asyncio.sleep(0.5)
            assert not blocked.done()
        finally:
            await tx.rollback()
        assert [r.status for r in await asyncio.wait_for(blocked, 10)] == ["stored"]
    async with connection(dreamcatcher_dsn) as conn:
        assert await _rows(conn, "w") == 7
