"""insert_deltas' COPY path: a batch COPYed straight into the log under the fence (issue 5).

A session that may INSERT into delta_log appends a plain batch with ``copy_begin`` (the shared
lock of every frame of the batch, each frame checked open) and COPY, in one transaction. Every
other case (a frame not open, a key stored already or repeated in the batch, a worker that may
not insert into the log) must give exactly what append_deltas gives.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import DeltaClient, DeltaConflictError, DreamcatcherError, FrameClosedError
from dreamcatcher_pg.models import prepare_delta
from tests.support.helpers import at, connection, log_rows
from tests.support.roles import Cast, refused, refused_by_database

W = "copy"


def items(frame: int, start: int, count: int, tag: str = "p") -> list[dict[str, Any]]:
    return [
        {"frame": frame, "payload": {"observations": [{"id": f"{tag}{start + i}"}]}, "utc": at(start + i)}
        for i in range(count)
    ]


def prepared(dc: DeltaClient, batch: list[dict[str, Any]]) -> list[Any]:
    return [
        prepare_delta(i["frame"], i["payload"], i["utc"], stream_id=dc.stream_id, max_payload_bytes=10**6)
        for i in batch
    ]


async def test_a_plain_batch_is_copied_and_stored(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=W) as dc:
        batch = items(1, 0, 300) + items(2, 300, 200)  # two frames in one batch
        assert await dc._copy_batch(prepared(dc, batch)) == ["stored"] * 500  # the COPY path took it
        rows = await log_rows(dreamcatcher_dsn, W)
        assert len(rows) == 500 and not any(r[4] for r in rows)
        assert rows[0][:4] == (1, "s1", at(0), '{"observations": [{"id": "p0"}]}')
        # through the public call: receipts in input order, all "stored"
        receipts = await dc.insert_deltas(items(2, 1000, 50))
        assert [r.status for r in receipts] == ["stored"] * 50
        assert [r.utc for r in receipts] == [at(1000 + i) for i in range(50)]
        # a retry of the same batch: the COPY meets the stored keys, append_deltas answers
        assert dc._copy_ok
        assert await dc._copy_batch(prepared(dc, batch)) is None
        assert [r.status for r in await dc.insert_deltas(batch)] == ["duplicate"] * 500
        assert len(await log_rows(dreamcatcher_dsn, W)) == 550


async def test_repeats_and_conflicts_in_a_batch_get_the_answers_of_append_deltas(
    dreamcatcher_dsn: str,
) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=W) as dc:
        await dc.insert_deltas(items(1, 0, 3))
        batch = [
            *items(1, 10, 2),
            items(1, 10, 1)[0],  # the same delta twice in the batch: the second is a duplicate
            items(1, 1, 1)[0],  # already stored, identical: duplicate
            {"frame": 1, "payload": {"other": 1}, "utc": at(2)},  # stored under that key, other payload
            *items(1, 20, 1),
        ]
        assert await dc._copy_batch(prepared(dc, batch)) is None  # the COPY failed, and left nothing
        assert len(await log_rows(dreamcatcher_dsn, W)) == 3
        with pytest.raises(DeltaConflictError) as caught:
            await dc.insert_deltas(batch)
        statuses = [r.status for r in caught.value.receipts]  # type: ignore[attr-defined]
        assert statuses == ["stored", "stored", "duplicate", "duplicate", "stored"]
        assert len(await log_rows(dreamcatcher_dsn, W)) == 6
        # a key repeated with another payload inside one batch
        with pytest.raises(DeltaConflictError):
            await dc.insert_deltas([*items(1, 30, 1), {"frame": 1, "payload": {"x": 2}, "utc": at(30)}])
        assert len(await log_rows(dreamcatcher_dsn, W)) == 7


@pytest.mark.parametrize("policy", ["reject", "defer"])
async def test_a_batch_with_a_closed_frame_takes_the_exact_path(dreamcatcher_dsn: str, policy: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=W) as dc:
        await dc.configure_world(late_policy=policy)
        await dc.insert_deltas(items(1, 0, 2))
        assert await dc.close_frame(1) == "closed"
        batch = items(1, 100, 2) + items(2, 200, 2)  # a closed frame and an open one
        if policy == "reject":
            with pytest.raises(FrameClosedError) as caught:
                await dc.insert_deltas(batch)
            assert [r.status for r in caught.value.receipts] == ["stored", "stored"]  # type: ignore[attr-defined]
        else:
            assert [r.status for r in await dc.insert_deltas(batch)] == ["deferred"] * 2 + ["stored"] * 2
        async with connection(dreamcatcher_dsn) as conn:
            assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.late_log WHERE world = $1", W) == 2
            late = await conn.fetchval(
                "SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1 AND late", W
            )
        assert late == (2 if policy == "defer" else 0)
        assert dc._copy_ok  # the COPY path stays the default for the next batch
        assert await dc._copy_batch(prepared(dc, items(2, 300, 2))) == ["stored"] * 2


async def test_close_waits_for_a_copy_in_flight_and_later_batches_are_late(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=W) as dc:
        await dc.insert_deltas(items(5, 0, 1))
        async with connection(dreamcatcher_dsn) as conn:
            tx = conn.transaction()
            await tx.start()
            assert (
                await conn.fetchval(
                    "SELECT dreamcatcher.copy_begin($1, 's1', '{5}', ARRAY[$2::timestamptz])", W, at(1)
                )
                == "copy"
            )
            closing = asyncio.create_task(dc.close_frame(5))
            await asyncio.sleep(0.5)
            assert not closing.done()  # the fence: the close waits for the COPY's transaction
            await conn.copy_records_to_table(
                "delta_log",
                schema_name="dreamcatcher",
                columns=["world", "frame", "stream_id", "utc", "payload"],
                records=[(W, 5, "s1", at(1), '{"observations": [1]}')],
            )
            await tx.commit()
            assert await asyncio.wait_for(closing, 10) == "closed"
        assert len(await log_rows(dreamcatcher_dsn, W)) == 2  # landed before the close: it will be merged
        with pytest.raises(FrameClosedError):
            await dc.insert_deltas(items(5, 10, 3))
        async with connection(dreamcatcher_dsn) as conn:
            assert (
                await conn.fetchval(
                    "SELECT dreamcatcher.copy_begin($1, 's1', '{5}', ARRAY[$2::timestamptz])", W, at(20)
                )
                == "exact"
            )


async def test_a_batch_notifies_once_per_frame_for_an_expected_stream(dreamcatcher_dsn: str) -> None:
    listener = await asyncpg.connect(dreamcatcher_dsn)
    seen: list[str] = []
    await listener.add_listener("dreamcatcher_work", lambda _c, _p, _ch, payload: seen.append(str(payload)))
    try:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="a", world=W) as dc:
            await dc.configure_world(expected_streams=["a", "b"])
            assert [r.status for r in await dc.insert_deltas(items(1, 0, 5) + items(2, 5, 5))] == [
                "stored"
            ] * 10
            await dc.insert_deltas(items(1, 100, 5))  # not the stream's first delta in frame 1 any more
            assert dc._copy_ok
        await listener.execute("SELECT 1")
        await asyncio.sleep(0.2)
        await listener.execute("SELECT 1")
        assert sorted(seen) == [f"{W}:1:opened", f"{W}:1:stream", f"{W}:2:opened", f"{W}:2:stream"]
    finally:
        await listener.close()


async def test_a_worker_appends_batches_through_append_deltas_and_cannot_copy(cast: Cast) -> None:
    worker_dsn = cast.url(cast.worker)
    async with DeltaClient.connect(worker_dsn, stream_id="s1", world="w") as dc:
        batch = items(1, 0, 20)
        assert [r.status for r in await dc.insert_deltas(batch)] == ["stored"] * 20
        assert not dc._copy_ok  # refused the COPY path once; append_deltas from then on
        assert [r.status for r in await dc.insert_deltas(batch)] == ["duplicate"] * 20
        assert [r.status for r in await dc.insert_deltas(items(1, 100, 5))] == ["stored"] * 5
    async with DeltaClient.connect(worker_dsn, stream_id="s2", world="w") as theirs:  # not its stream
        with pytest.raises(DreamcatcherError) as caught:
            await theirs.insert_deltas(items(1, 200, 5))
        assert refused_by_database(caught.value) == "42501"
    async with connection(worker_dsn) as conn:
        await refused(conn, "SELECT dreamcatcher.copy_begin('w', 's1', '{1}', ARRAY[now()])")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "delta_log",
                    schema_name="dreamcatcher",
                    columns=["world", "frame", "stream_id", "utc", "payload"],
                    records=[("w", 1, "s1", at(500), "{}")],
                )
    assert len(await log_rows(cast.dsn, "w")) == 25


async def test_a_client_makes_one_round_trip_per_call(dreamcatcher_dsn: str) -> None:
    """asyncpg's pool resets every connection it gets back with a query of its own (RESET ALL,
    UNLISTEN *, ...): a second round trip after every call. A client's calls leave no session
    state: by default it has one dedicated connection (no pool at all), and a pool of its own
    (pool_size > 1) skips the reset; a pool handed to it keeps its reset."""
    last_queries = """
        SELECT pid, query FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    """
    async with connection(dreamcatcher_dsn) as observer:
        for size in (1, 2):
            async with DeltaClient.connect(
                dreamcatcher_dsn, stream_id="own", world="pooled", pool_size=size
            ) as dc:
                await dc.insert_delta(1, {"observations": [size]})
                last = [r["query"] for r in await observer.fetch(last_queries)]
                assert any("append_delta" in q for q in last), last  # the call was the last thing it ran
                assert not any("RESET ALL" in q for q in last), last
                await dc.insert_deltas([{"frame": 1, "payload": {"observations": [size, 2]}}])
                assert (await dc.insert_delta(1, {"observations": [size, 3]})).status == "stored"
                if size == 1:  # one connection by default: no pool
                    assert len({r["pid"] for r in await observer.fetch(last_queries)}) == 1
        pool = await asyncpg.create_pool(dreamcatcher_dsn, min_size=1, max_size=1)
        try:
            async with DeltaClient.connect(
                dreamcatcher_dsn, stream_id="given", world="pooled", pool=pool
            ) as dc:
                await dc.insert_delta(1, {"observations": [4]})
                last = [r["query"] for r in await observer.fetch(last_queries)]
                assert any("RESET ALL" in q for q in last), last  # a given pool is left as it is
        finally:
            await pool.close()
