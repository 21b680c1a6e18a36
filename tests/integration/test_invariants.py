"""docs/design.md §2 invariants 1, 2, 4, 5, 6 and 8, each on a real PostgreSQL.

(Invariant 3, the frame fence, is in test_fence.py; 7, the single writer, in test_leader.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from dreamcatcher_pg import (
    AppendOnlyViolation,
    DeltaClient,
    DeltaConflictError,
    DreamcatcherError,
    FrameClosedError,
    Merger,
)
from dreamcatcher_pg.errors import map_db_error
from tests.support.helpers import (
    SCENARIO_BOOK_COMPILED,
    SCENARIO_POSTS,
    D,
    at,
    close_frames,
    connection,
    current_entities,
    entity_history,
    extra_database,
    frame_table,
    insert_batches,
    insert_each,
    log_rows,
    make_rng,
    merge_until_idle,
    quarantine_rows,
    recomputed_hash,
    scenario,
    terminate_backend,
)

WORLD = "inv"
OBS = {"observations": [{"id": "x"}]}


# -- 1. append-only log --------------------------------------------------------


async def test_log_refuses_update_delete_truncate_even_for_its_owner(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        await dc.insert_delta(1, OBS, utc=at(1))
    async with connection(dreamcatcher_dsn) as conn:
        before = await conn.fetch(
            "SELECT world, frame, stream_id, utc, payload::text FROM dreamcatcher.delta_log"
        )
        assert len(before) == 1
        statements = [
            "UPDATE dreamcatcher.delta_log SET payload = '{\"observations\": []}'",
            "UPDATE dreamcatcher.delta_log SET frame = 2",
            "DELETE FROM dreamcatcher.delta_log",
            "TRUNCATE dreamcatcher.delta_log",
            "TRUNCATE dreamcatcher.delta_log CASCADE",
            # the public view is auto-updatable: it must not be a way around the trigger
            "UPDATE dreamcatcher.deltas SET payload = '{}'",
            "DELETE FROM dreamcatcher.deltas",
        ]
        for statement in statements:
            with pytest.raises(asyncpg.PostgresError) as caught:
                await conn.execute(statement)
            assert caught.value.sqlstate == "DCA01", statement
            mapped = map_db_error(caught.value)
            assert isinstance(mapped, AppendOnlyViolation), statement
            assert isinstance(mapped, DreamcatcherError)
        after = await conn.fetch(
            "SELECT world, frame, stream_id, utc, payload::text FROM dreamcatcher.delta_log"
        )
        assert after == before


@contextlib.asynccontextmanager
async def throwaway_role(dsn: str) -> AsyncIterator[str]:
    """A LOGIN role (roles are cluster-wide: unique name, dropped after)."""
    role = f"dc_writer_{secrets.token_hex(5)}"
    async with connection(dsn) as admin:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            yield role
        finally:
            await admin.execute(f'DROP OWNED BY "{role}"')  # its grants in this database
            await admin.execute(f'DROP ROLE "{role}"')


async def test_privileges_refuse_update_and_delete_to_a_writer_role(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        await dc.insert_delta(1, OBS, utc=at(1))
    async with throwaway_role(dreamcatcher_dsn) as role, connection(dreamcatcher_dsn) as admin:
        await admin.execute(f'GRANT USAGE ON SCHEMA dreamcatcher TO "{role}"')
        await admin.execute(f'GRANT SELECT, INSERT ON dreamcatcher.delta_log TO "{role}"')
        # nothing granted to PUBLIC beyond the defaults, nothing to the role beyond the above
        public_acl = await admin.fetchval(
            "SELECT count(*) FROM information_schema.role_table_grants"
            " WHERE table_schema = 'dreamcatcher' AND table_name = 'delta_log' AND grantee = 'PUBLIC'"
        )
        assert public_acl == 0
        as_role = make_conninfo(dreamcatcher_dsn, user=role)
        async with await psycopg.AsyncConnection.connect(as_role, autocommit=True) as conn:
            cur = await conn.execute("SELECT current_user, count(*) FROM dreamcatcher.delta_log")
            assert await cur.fetchone() == (role, 1)  # it really is that role, and it can read
            for statement in (
                "UPDATE dreamcatcher.delta_log SET payload = '{}'",
                "DELETE FROM dreamcatcher.delta_log",
                "TRUNCATE dreamcatcher.delta_log",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                    await conn.execute(statement)
                assert caught.value.sqlstate == "42501", statement

            # the two layers are independent: a role somebody wrongly granted UPDATE/DELETE
            # still meets the trigger
            await admin.execute(f'GRANT UPDATE, DELETE ON dreamcatcher.delta_log TO "{role}"')
            for statement in (
                "UPDATE dreamcatcher.delta_log SET payload = '{}'",
                "DELETE FROM dreamcatcher.delta_log",
            ):
                with pytest.raises(psycopg.Error) as caught_db:
                    await conn.execute(statement)
                assert caught_db.value.sqlstate == "DCA01", statement
        assert await admin.fetchval("SELECT payload::text FROM dreamcatcher.delta_log") == (
            '{"observations": [{"id": "x"}]}'
        )


# -- 2. identity ------------------------------------------------------------------


async def test_identical_reinsert_is_a_duplicate_and_writes_nothing(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        first = await dc.insert_delta(7, OBS, utc=at(5))
        again = await dc.insert_delta(7, dict(OBS), utc=at(5))
        # the same payload with its keys in another order is the same document
        payload = {"posts_created": [{"number": 1, "title": "t"}], "observations": [{"id": "y"}]}
        await dc.insert_delta(7, payload, utc=at(6))
        reordered = await dc.insert_delta(7, dict(reversed(list(payload.items()))), utc=at(6))
    assert first.status == "stored"
    assert again.status == "duplicate"
    assert reordered.status == "duplicate"
    assert (again.world, again.frame, again.stream_id, again.utc) == (WORLD, 7, "s1", at(5))
    assert len(await log_rows(dreamcatcher_dsn, WORLD)) == 2


async def test_same_key_with_another_payload_is_a_conflict_and_overwrites_nothing(
    dreamcatcher_dsn: str,
) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        await dc.insert_delta(7, OBS, utc=at(5))
        before = await log_rows(dreamcatcher_dsn, WORLD)
        with pytest.raises(DeltaConflictError) as caught:
            await dc.insert_delta(7, {"observations": [{"id": "other"}]}, utc=at(5))
        assert caught.value.key == (WORLD, 7, "s1", at(5))
        with pytest.raises(DeltaConflictError):  # the batch path too
            await dc.insert_deltas([{"frame": 7, "payload": {"observations": []}, "utc": at(5)}])
    assert await log_rows(dreamcatcher_dsn, WORLD) == before


async def test_one_microsecond_apart_is_two_deltas(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        a = await dc.insert_delta(3, OBS, utc=at(5))
        b = await dc.insert_delta(3, OBS, utc=at(5) + timedelta(microseconds=1))
    assert (a.status, b.status) == ("stored", "stored")
    rows = await log_rows(dreamcatcher_dsn, WORLD)
    assert [r[2] for r in rows] == [at(5), at(5, 1)]


async def test_retry_after_the_frame_closed_or_merged_is_still_a_duplicate(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        assert (await dc.insert_delta(4, OBS, utc=at(1))).status == "stored"
        assert (await dc.insert_deltas([{"frame": 4, "payload": {"a": 1}, "utc": at(2)}]))[
            0
        ].status == "stored"
        assert await dc.close_frame(4) == "closed"
        # a retry whose first attempt did commit (e.g. the ack was lost) is recognised
        assert (await dc.insert_delta(4, OBS, utc=at(1))).status == "duplicate"
        assert [
            r.status for r in await dc.insert_deltas([{"frame": 4, "payload": {"a": 1}, "utc": at(2)}])
        ] == ["duplicate"]
        # a changed payload is still a conflict, not a late delta
        with pytest.raises(DeltaConflictError):
            await dc.insert_delta(4, {"observations": []}, utc=at(1))
        # a new delta is late
        with pytest.raises(FrameClosedError):
            await dc.insert_delta(4, OBS, utc=at(3))
        await merge_until_idle(dreamcatcher_dsn, WORLD)
        assert await dc.frame_status(4) == "merged"
        assert (await dc.insert_delta(4, OBS, utc=at(1))).status == "duplicate"
    async with connection(dreamcatcher_dsn) as conn:
        late = await conn.fetch("SELECT frame, utc FROM dreamcatcher.late_attempts WHERE world = $1", WORLD)
        assert [(r["frame"], r["utc"]) for r in late] == [(4, at(3))]  # retries are not late attempts
        assert (
            await conn.fetchval(
                "SELECT delta_count FROM dreamcatcher.frames WHERE world = $1 AND frame = 4", WORLD
            )
            == 2
        )
    assert len(await log_rows(dreamcatcher_dsn, WORLD)) == 2


async def test_batch_with_repeated_identical_items_stores_once(dreamcatcher_dsn: str) -> None:
    item = {"frame": 9, "payload": {"observations": [{"id": "b"}]}, "utc": at(1)}
    other = {"frame": 9, "payload": {"observations": [{"id": "c"}]}, "utc": at(2)}
    items = [item, dict(item), other, dict(item)]
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world=WORLD) as dc:
        receipts = await dc.insert_deltas(items)
        # one receipt per item, in order (a caller zips them), the repeats reported as such
        assert [(r.frame, r.utc) for r in receipts] == [(i["frame"], i["utc"]) for i in items]
        assert [r.status for r in receipts] == ["stored", "duplicate", "stored", "duplicate"]
        # the whole batch again: every item is a duplicate
        assert [r.status for r in await dc.insert_deltas(items)] == ["duplicate"] * 4
        # a repeat with another payload inside one batch is a conflict; the rest is stored
        clash = {"frame": 9, "payload": {"observations": [{"id": "d"}]}, "utc": at(3)}
        with pytest.raises(DeltaConflictError) as caught:
            await dc.insert_deltas([clash, {**clash, "payload": {"observations": []}}])
        assert [(r.utc, r.status) for r in caught.value.receipts] == [(at(3), "stored")]  # type: ignore[attr-defined]
    # the SQL function itself, handed the same delta twice in one batch
    async with connection(dreamcatcher_dsn) as conn:
        statuses = await conn.fetchval(
            "SELECT dreamcatcher.append_deltas($1, 's2', ARRAY[9, 9]::bigint[],"
            " ARRAY[$2, $2]::timestamptz[], ARRAY['{\"a\": 1}', '{\"a\": 1}']::jsonb[])",
            WORLD,
            at(1),
        )
        assert statuses == ["stored", "duplicate"]
    rows = await log_rows(dreamcatcher_dsn, WORLD)
    assert [(r[1], r[2]) for r in rows] == [("s1", at(1)), ("s1", at(2)), ("s1", at(3)), ("s2", at(1))]
    assert rows[2][3] == '{"observations": [{"id": "d"}]}'


# -- 5. additive --------------------------------------------------------------------


async def test_comments_of_different_streams_on_one_post_coexist(dreamcatcher_dsn: str) -> None:
    post = {"posts_created": [{"number": 42, "title": "the post"}]}
    alice = {"discussion": 42, "author": "alice", "body": "I agree"}
    bob = {"discussion": 42, "author": "bob", "body": "I do not"}
    deltas = [
        D("s-post", 1, at(0), post),
        D(
            "s-alice",
            1,
            at(1),
            {
                "comments_added": [alice],
                "reactions_added": [{"target": "42", "type": "+1", "author": "alice"}],
            },
        ),
        D(
            "s-bob",
            1,
            at(1),
            {"comments_added": [bob], "reactions_added": [{"target": "42", "type": "+1", "author": "bob"}]},
        ),
        D("s-echo", 1, at(2), {"comments_added": [dict(alice)]}),  # identical content: dedupes
        # a later frame: an identical comment dedupes against the state, a new one adds
        D("s-echo", 2, at(3), {"comments_added": [dict(bob), {**bob, "body": "I do not!"}]}),
    ]
    assert await insert_each(dreamcatcher_dsn, WORLD, deltas, concurrent=True) == ["stored"] * 5
    await close_frames(dreamcatcher_dsn, WORLD, [1, 2])
    await merge_until_idle(dreamcatcher_dsn, WORLD)
    async with connection(dreamcatcher_dsn) as conn:
        after_1 = await conn.fetch(
            "SELECT author, data ->> 'body' AS body FROM dreamcatcher.comments_at($1, 1)"
            " WHERE discussion = 42 ORDER BY author, body",
            WORLD,
        )
        assert [tuple(r) for r in after_1] == [("alice", "I agree"), ("bob", "I do not")]
        now = await conn.fetch(
            "SELECT id, author, data ->> 'body' AS body, first_frame FROM dreamcatcher.comments"
            " WHERE world = $1 AND discussion = 42 ORDER BY author, body",
            WORLD,
        )
        assert [tuple(r) for r in now] == [
            (None, "alice", "I agree", 1),
            (None, "bob", "I do not", 1),
            (None, "bob", "I do not!", 2),
        ]
        reactions = await conn.fetch(
            "SELECT target, type, author FROM dreamcatcher.reactions WHERE world = $1 ORDER BY author", WORLD
        )
        assert [tuple(r) for r in reactions] == [("42", "+1", "alice"), ("42", "+1", "bob")]
        posts = await conn.fetch(
            "SELECT number, data ->> 'title' FROM dreamcatcher.posts WHERE world = $1", WORLD
        )
        assert [tuple(r) for r in posts] == [(42, "the post")]


# -- 4. deterministic merge ------------------------------------------------------------


async def _check_scenario_outcome(conn: asyncpg.Connection, world: str) -> None:
    """The winners the rules prescribe (so a deterministic but wrong order fails too)."""
    for (frame, number), fields in SCENARIO_POSTS.items():
        data = await conn.fetchval(
            "SELECT data FROM dreamcatcher.posts_at($1, $2) WHERE number = $3", world, frame, number
        )
        assert data is not None, (world, frame, number)
        got = json.loads(data)
        for key, value in fields.items():
            assert got.get(key) == value, (
                f"{world}: post {number} after frame {frame}: {key}={got.get(key)!r}"
            )
    c1 = await conn.fetchrow(
        "SELECT author, data ->> 'body' AS body FROM dreamcatcher.comments WHERE world = $1 AND id = 'c1'",
        world,
    )
    assert tuple(c1) == ("B", "first")  # utc tie: "B" < "a" in the C collation, the first one wins
    c2 = await conn.fetchrow(
        "SELECT author, data ->> 'body' AS body FROM dreamcatcher.comments WHERE world = $1 AND id = 'c2'",
        world,
    )
    assert tuple(c2) == ("B", "late")
    book = await conn.fetchrow(
        "SELECT target, compiled_frame FROM dreamcatcher.books WHERE world = $1", world
    )
    assert tuple(book) == (3, SCENARIO_BOOK_COMPILED)
    obs = await conn.fetch(
        "SELECT frame, stream_id, data ->> 'id' AS id FROM dreamcatcher.observations WHERE world = $1"
        ' ORDER BY frame, stream_id COLLATE "C", data ->> \'id\' COLLATE "C"',
        world,
    )
    assert [tuple(r) for r in obs] == [(1, "Z", "o1"), (3, "Z", "o2"), (3, "Z", "o2"), (3, "a", "o3")]
    assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.reactions WHERE world = $1", world) == 2
    assert (
        await conn.fetchval(
            "SELECT data ->> 'mood' FROM dreamcatcher.agents WHERE world = $1 AND id = 'Z'", world
        )
        == "busy"
    )


async def test_merge_is_deterministic_across_orders_worlds_and_databases(
    dreamcatcher_dsn: str, dreamcatcher_server_dsn: str, dreamcatcher_template_db: str
) -> None:
    rng, seed = make_rng()
    deltas = scenario()
    frames = sorted({d.frame for d in deltas})

    # (a) world w1: in order, one at a time, every frame merged at the end
    assert set(await insert_each(dreamcatcher_dsn, "w1", deltas)) == {"stored"}
    await close_frames(dreamcatcher_dsn, "w1", frames)
    await merge_until_idle(dreamcatcher_dsn, "w1")

    # (b) world w2: shuffled, half concurrently one by one and half in batches, then
    # retries; each frame closed and merged on its own
    shuffled = rng.sample(deltas, len(deltas))
    half = len(shuffled) // 2
    singles, batched = shuffled[:half], shuffled[half:]
    statuses = await asyncio.gather(
        insert_each(dreamcatcher_dsn, "w2", singles, concurrent=True),
        insert_batches(dreamcatcher_dsn, "w2", batched),
    )
    assert set(statuses[0] + statuses[1]) == {"stored"}
    retries = rng.sample(deltas, 4)
    assert set(await insert_each(dreamcatcher_dsn, "w2", retries, concurrent=True)) == {"duplicate"}
    for frame in frames:
        await close_frames(dreamcatcher_dsn, "w2", [frame])
        await merge_until_idle(dreamcatcher_dsn, "w2")

    async with extra_database(dreamcatcher_server_dsn, dreamcatcher_template_db, icu=True) as (
        other_dsn,
        how,
    ):
        # (c) another database, world "elsewhere": reversed, all at once, frames closed backwards.
        # Where the server has ICU, that database sorts text a < B < c < Z: a merge that
        # broke utc ties in the database's collation instead of "C" picks other winners.
        if how == "icu":
            async with connection(other_dsn) as conn:
                assert await conn.fetchval(
                    "SELECT array_agg(x ORDER BY x) FROM unnest($1::text[]) x", ["B", "Z", "a", "c"]
                ) == ["a", "B", "c", "Z"]
        assert set(await insert_each(other_dsn, "elsewhere", deltas[::-1], concurrent=True)) == {"stored"}
        await close_frames(other_dsn, "elsewhere", frames[::-1])
        await merge_until_idle(other_dsn, "elsewhere")
        async with connection(other_dsn) as conn:
            c_frames = await frame_table(conn, "elsewhere")
            c_history = await entity_history(conn, "elsewhere")
            c_current = await current_entities(conn, "elsewhere")
            c_quarantine = await quarantine_rows(conn, "elsewhere")
            await _check_scenario_outcome(conn, "elsewhere")

    async with connection(dreamcatcher_dsn) as conn:
        a_frames, b_frames = await frame_table(conn, "w1"), await frame_table(conn, "w2")
        assert [f[1] for f in a_frames] == ["merged"] * len(frames)
        assert a_frames == b_frames == c_frames, f"seed={seed}"
        assert len({f[3] for f in a_frames}) == len(frames)  # every frame changed the state
        assert await entity_history(conn, "w1") == await entity_history(conn, "w2") == c_history, (
            f"seed={seed}"
        )
        assert await current_entities(conn, "w1") == await current_entities(conn, "w2") == c_current
        assert await quarantine_rows(conn, "w1") == await quarantine_rows(conn, "w2") == c_quarantine
        assert len(c_quarantine) == 1
        await _check_scenario_outcome(conn, "w1")
        await _check_scenario_outcome(conn, "w2")


# -- 6. one transaction per frame ------------------------------------------------------


async def test_a_merge_killed_before_commit_leaves_nothing_and_is_redone(dreamcatcher_dsn: str) -> None:
    deltas = scenario()
    for world in ("crash", "clean"):
        await insert_each(dreamcatcher_dsn, world, deltas)
        await close_frames(dreamcatcher_dsn, world, [1])

    victim = await asyncpg.connect(dreamcatcher_dsn)
    try:
        assert await victim.fetchval("SELECT dreamcatcher.claim_next_frame('crash')") == 1
        tx = victim.transaction()
        await tx.start()
        stats = await victim.fetchval("SELECT dreamcatcher.merge_frame('crash', 1)::text")
        assert stats is not None and '"quarantined": 1' in stats  # it did write, uncommitted
        async with connection(dreamcatcher_dsn) as killer:
            await terminate_backend(killer, victim.get_server_pid())
    finally:
        victim.terminate()

    async with connection(dreamcatcher_dsn) as conn:
        assert (
            await conn.fetchval("SELECT status FROM dreamcatcher.frames WHERE world = 'crash' AND frame = 1")
            == "closed"
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dreamcatcher.entity_versions WHERE world = 'crash' AND valid_from = 1"
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dreamcatcher.quarantine_log WHERE world = 'crash' AND merged_in = 1"
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "SELECT state_hash FROM dreamcatcher.frame_log WHERE world = 'crash' AND frame = 1"
            )
            is None
        )

    merged = await merge_until_idle(dreamcatcher_dsn, "crash")
    assert [r.frame for r in merged] == [1]
    for world in ("clean", "crash"):
        await close_frames(dreamcatcher_dsn, world, [2, 3, 4])
        await merge_until_idle(dreamcatcher_dsn, world)
    async with connection(dreamcatcher_dsn) as conn:
        crash, clean = await frame_table(conn, "crash"), await frame_table(conn, "clean")
        assert [f[1] for f in crash] == ["merged"] * 4
        assert crash == clean
        assert await entity_history(conn, "crash") == await entity_history(conn, "clean")
        assert await quarantine_rows(conn, "crash") == await quarantine_rows(conn, "clean")


async def test_a_restarted_merger_resumes_at_the_next_unmerged_frame(dreamcatcher_dsn: str) -> None:
    deltas = scenario()
    for world in ("restart", "clean"):
        await insert_each(dreamcatcher_dsn, world, deltas)
    await close_frames(dreamcatcher_dsn, "clean", [1, 2, 3, 4])
    await merge_until_idle(dreamcatcher_dsn, "clean")

    await close_frames(dreamcatcher_dsn, "restart", [1, 2])
    first = Merger(dreamcatcher_dsn, "restart")
    try:
        assert [r.frame for r in await first.run_until_idle()] == [1, 2]
        # it dies: its session (and the leader lock) goes away without a goodbye
        async with connection(dreamcatcher_dsn) as killer:
            pid = await killer.fetchval(
                "SELECT backend_pid FROM dreamcatcher.mergers WHERE world = 'restart'"
            )
            await terminate_backend(killer, pid)
    finally:
        await first.aclose()
    await close_frames(dreamcatcher_dsn, "restart", [3, 4])
    second = Merger(dreamcatcher_dsn, "restart")
    try:
        assert [r.frame for r in await second.run_until_idle()] == [3, 4]
        assert await second.run_until_idle() == []
    finally:
        await second.aclose()
    async with connection(dreamcatcher_dsn) as conn:
        assert await frame_table(conn, "restart") == await frame_table(conn, "clean")
        assert await entity_history(conn, "restart") == await entity_history(conn, "clean")


# -- 8. state fingerprint -----------------------------------------------------------------


async def test_every_recorded_hash_equals_a_recomputation_from_scratch(dreamcatcher_dsn: str) -> None:
    deltas = [
        *scenario(),
        # frame 7: only things already in the state: nothing changes
        D(
            "c",
            7,
            at(40),
            {
                "comments_added": [{"id": "c1", "body": "again"}],
                "posts_updated": [{"number": 2, "title": "a-3"}],
            },
        ),
        # frame 12: post 1 retitled, frame 15: retitled back (frames need not be consecutive)
        D("a", 12, at(50), {"posts_updated": [{"number": 1, "title": "temporary"}]}),
        D("a", 15, at(60), {"posts_updated": [{"number": 1, "title": "a-title"}]}),
        D(
            "B",
            20,
            at(70),
            {"posts_created": [{"number": 3, "title": "three"}], "observations": [{"id": "o20"}]},
        ),
    ]
    frames = sorted({d.frame for d in deltas})
    await insert_each(dreamcatcher_dsn, "fp", deltas, concurrent=True)
    await close_frames(dreamcatcher_dsn, "fp", frames)
    await merge_until_idle(dreamcatcher_dsn, "fp")

    async with connection(dreamcatcher_dsn) as conn:
        recorded = {f[0]: f[3] for f in await frame_table(conn, "fp")}
        assert sorted(recorded) == frames and None not in recorded.values()
        for frame in frames:
            assert await recomputed_hash(conn, "fp", frame) == recorded[frame], f"frame {frame}"
        # content only: no change -> same hash; back to an earlier content -> that content's hash
        assert recorded[7] == recorded[4]
        assert recorded[12] != recorded[7]
        assert recorded[15] == recorded[7]
        assert len({recorded[f] for f in (1, 2, 3, 4, 12, 20)}) == 6
        # the empty state hashes to zero, and a frame with no deltas keeps the hash
        assert await recomputed_hash(conn, "fp", 0) == "0000000000000000"

    # replaying the same log under another world name reproduces every hash
    rng, seed = make_rng()
    await insert_each(dreamcatcher_dsn, "fp-replay", rng.sample(deltas, len(deltas)), concurrent=True)
    await close_frames(dreamcatcher_dsn, "fp-replay", frames)
    await merge_until_idle(dreamcatcher_dsn, "fp-replay")
    async with connection(dreamcatcher_dsn) as conn:
        replay = {f[0]: f[3] for f in await frame_table(conn, "fp-replay")}
        assert replay == recorded, f"seed={seed}"
        counts = Counter(f[2] for f in await frame_table(conn, "fp-replay"))
        assert sum(n * c for n, c in counts.items()) == len(deltas)


async def test_an_empty_frame_keeps_the_previous_hash(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="fp") as dc:
        await dc.insert_delta(1, {"posts_created": [{"number": 1, "title": "t"}]}, utc=at(1))
        await dc.close_frame(1)
        assert await dc.close_frame(2) == "closed"  # a frame with no delta at all
        await dc.insert_delta(3, {"posts_updated": [{"number": 1, "title": "u"}]}, utc=at(2))
        await dc.close_frame(3)
    await merge_until_idle(dreamcatcher_dsn, "fp")
    async with connection(dreamcatcher_dsn) as conn:
        table = await frame_table(conn, "fp")
        assert [(f[0], f[1], f[2]) for f in table] == [(1, "merged", 1), (2, "merged", 0), (3, "merged", 1)]
        assert table[0][3] == table[1][3] != table[2][3]
        for frame, _, _, state_hash in table:
            assert await recomputed_hash(conn, "fp", frame) == state_hash
