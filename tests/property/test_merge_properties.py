"""Properties of the merge rules, on a real PostgreSQL (issue 3, item 5).

Hypothesis generates the deltas of a frame over every rule and the messy shapes
of docs/design.md §6 (posts as objects, ints and digit strings; comments with and
without ids, under every alias; reactions as objects, "NODE:TYPE", "TYPE on
NODE" and tallies; chapters with targets; observations; unknown and envelope
keys; unreadable items of every kind), with streams and clocks chosen so that
utc ties between streams are common. One database per test function, a fresh
world per example: worlds are independent.

Sizes: ``DC_PROPERTY_SCALE`` multiplies the number of examples (default 1).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from hypothesis import given
from hypothesis import strategies as st

from dreamcatcher_pg import Merger
from tests.support.strategies import (
    DEDUPE_KEYS,
    T0,
    UNKNOWN_KEYS,
    Delta,
    close,
    db_settings,
    frame_deltas,
    insert_one_by_one,
    insert_runs,
    merge,
    new_world,
    world_state,
)


async def insert_close_merge(dsn: str, pool: asyncpg.Pool, world: str, deltas: list[Delta]) -> None:
    """Insert in order, frame by frame; close and merge each frame before writing the next."""
    merger = Merger(dsn, world)
    try:
        for frame in sorted({d.frame for d in deltas}):
            assert set(await insert_one_by_one(pool, world, [d for d in deltas if d.frame == frame])) == {
                "stored"
            }
            await close(pool, world, [frame])
            assert [r.frame for r in await merger.run_until_idle()] == [frame]
    finally:
        await merger.aclose()


# -- (a) the order of a frame's deltas does not matter ----------------------------------


@db_settings(30)
@given(frame1=frame_deltas(1), frame2=frame_deltas(2), data=st.data())
async def test_merged_state_does_not_depend_on_insert_order(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, frame1: list[Delta], frame2: list[Delta], data: st.DataObject
) -> None:
    deltas = frame1 + frame2
    in_order, shuffled = new_world("order-a"), new_world("order-b")
    await insert_close_merge(dreamcatcher_dsn, pool, in_order, deltas)

    # the other world: any interleaving of both frames, runs of one stream as batches,
    # frames closed backwards and merged together
    order = data.draw(st.permutations(deltas), label="insert order")
    assert set(await insert_runs(pool, shuffled, order)) == {"stored"}
    await close(pool, shuffled, [2, 1])
    assert await merge(dreamcatcher_dsn, shuffled) == [1, 2]

    a, b = await world_state(pool, in_order), await world_state(pool, shuffled)
    assert a["frames"] == b["frames"]  # statuses, counts, stats and state hashes
    assert a["versions"] == b["versions"]  # every version of every entity
    assert a["quarantine"] == b["quarantine"]


# -- (b) applying a delta twice equals applying it once -----------------------------------


@db_settings(20)
@given(frame1=frame_deltas(1), frame2=frame_deltas(2))
async def test_applying_a_delta_twice_equals_applying_it_once(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, frame1: list[Delta], frame2: list[Delta]
) -> None:
    deltas = frame1 + frame2
    once, twice = new_world("once"), new_world("twice")
    await insert_close_merge(dreamcatcher_dsn, pool, once, deltas)

    assert set(await insert_runs(pool, twice, deltas)) == {"stored"}
    # retries: one by one, and as batches in the reverse order; nothing is written again
    assert set(await insert_one_by_one(pool, twice, deltas)) == {"duplicate"}
    assert set(await insert_runs(pool, twice, deltas[::-1])) == {"duplicate"}
    await close(pool, twice, [1])
    # a retry after the frame closed is still a duplicate (not a late delta)
    assert set(await insert_one_by_one(pool, twice, frame1)) == {"duplicate"}
    await close(pool, twice, [2])
    assert await merge(dreamcatcher_dsn, twice) == [1, 2]
    assert set(await insert_runs(pool, twice, deltas)) == {"duplicate"}  # and after the merge

    assert await world_state(pool, once) == await world_state(pool, twice)


def echo(delta: Delta, frame: int, index: int) -> Delta:
    """The dedupe-kind content of ``delta``, sent again by another stream, later."""
    payload: dict[str, Any] = {k: v for k, v in delta.payload.items() if k in DEDUPE_KEYS}
    utc = T0 + timedelta(hours=1, microseconds=index)
    return replace(delta, frame=frame, stream=f"echo-{delta.stream}", utc=utc, payload=payload, items=())


async def deduped_rows(pool: asyncpg.Pool, world: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every version of every comment, reaction and chapter; and each book's chapter count."""
    async with pool.acquire() as conn:
        versions = await conn.fetch(
            "SELECT kind, ekey, data::text, first_frame, valid_from, valid_to"
            " FROM dreamcatcher.entity_versions"
            " WHERE world = $1 AND kind IN ('comment', 'reaction', 'chapter')"
            ' ORDER BY kind, ekey COLLATE "C", valid_from',
            world,
        )
        book_rows = await conn.fetch(
            "SELECT book, data -> 'chapters' AS chapters FROM dreamcatcher.books"
            " WHERE world = $1 ORDER BY book",
            world,
        )
    return [tuple(r) for r in versions], [tuple(r) for r in book_rows]


@db_settings(20)
@given(frame1=frame_deltas(1))
async def test_the_same_content_again_under_another_stream_and_clock_adds_no_rows(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, frame1: list[Delta]
) -> None:
    base, same_frame, next_frame = new_world("echo-base"), new_world("echo-same"), new_world("echo-next")
    await insert_close_merge(dreamcatcher_dsn, pool, base, frame1)
    expected = await deduped_rows(pool, base)

    # the echoes in the same frame, after the originals
    echoes = [echo(d, 1, i) for i, d in enumerate(frame1)]
    await insert_close_merge(dreamcatcher_dsn, pool, same_frame, frame1 + echoes)
    assert await deduped_rows(pool, same_frame) == expected

    # the echoes in the next frame: no new version of any comment, reaction or chapter
    await insert_close_merge(
        dreamcatcher_dsn, pool, next_frame, frame1 + [echo(d, 2, i) for i, d in enumerate(frame1)]
    )
    assert await deduped_rows(pool, next_frame) == expected


# -- (c) unreadable items are quarantined, never dropped; readable ones reach the state ----


async def normalised(conn: Any, values: list[Any]) -> Counter[str]:
    """JSON values as PostgreSQL prints them back from jsonb (a multiset)."""
    texts = [orjson.dumps(v).decode() for v in values]
    rows = await conn.fetch("SELECT x::jsonb::text AS t FROM unnest($1::text[]) AS x", texts)
    return Counter(r["t"] for r in rows)


@db_settings(40)
@given(deltas=frame_deltas(1, max_size=8))
async def test_unreadable_items_are_quarantined_and_readable_ones_reach_the_state(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, deltas: list[Delta]
) -> None:
    world = new_world("read")
    await insert_close_merge(dreamcatcher_dsn, pool, world, deltas)

    labelled = [(d, key, pos, item) for d in deltas for key, pos, item in d.items]
    expect: dict[str, set[Any]] = {}
    bad: list[tuple[Any, ...]] = []
    bad_values: list[Any] = []
    tallies = 0
    observations: Counter[str] = Counter()
    for d, key, pos, item in labelled:
        kind, *rest = item.expect
        if kind == "bad":
            bad.append((d.frame, d.stream, d.utc, key, pos))
            bad_values.append(item.value)
        elif kind == "tally":
            tallies += 1
        elif kind == "observation":
            observations[d.stream] += 1
        elif kind == "comment_content":
            expect.setdefault(kind, set()).add(orjson.dumps(rest[0]).decode())
        else:
            expect.setdefault(kind, set()).add(rest[0] if len(rest) == 1 else tuple(rest))
        if kind == "chapter":
            expect.setdefault("book", set()).add(rest[0])

    async with pool.acquire() as conn:
        # every unreadable item is in quarantine, where it was, as it was; nothing else is
        rows = await conn.fetch(
            "SELECT frame, stream_id, utc, key, position, item::text AS item, reason, merged_in"
            " FROM dreamcatcher.quarantine WHERE world = $1",
            world,
        )
        assert sorted(
            (r["frame"], r["stream_id"], r["utc"], r["key"], r["position"]) for r in rows
        ) == sorted(bad)
        assert Counter(r["item"] for r in rows) == await normalised(conn, bad_values)
        assert all(r["reason"] and r["merged_in"] == 1 for r in rows)

        stats = orjson.loads(
            await conn.fetchval(
                "SELECT stats::text FROM dreamcatcher.frames WHERE world = $1 AND frame = 1", world
            )
        )
        assert stats["items"] == len(labelled)
        assert stats["quarantined"] == len(bad)
        assert stats["tallies"] == tallies
        assert stats["unmerged_keys"] == {
            k: n for k in UNKNOWN_KEYS if (n := sum(k in d.payload for d in deltas))
        }

        # every readable item is reflected in the state (and nothing else is there)
        async def found(sql: str) -> set[Any]:
            return {r[0] if len(r) == 1 else tuple(r) for r in await conn.fetch(sql, world)}

        assert await found("SELECT number FROM dreamcatcher.posts WHERE world = $1") == expect.get(
            "post", set()
        )
        assert await found("SELECT id FROM dreamcatcher.agents WHERE world = $1") == expect.get(
            "agent", set()
        )
        assert await found(
            "SELECT id FROM dreamcatcher.comments WHERE world = $1 AND id IS NOT NULL"
        ) == expect.get("comment_id", set())
        contents = await found("SELECT data::text FROM dreamcatcher.comments WHERE world = $1 AND id IS NULL")
        assert contents == set(
            await normalised(conn, [orjson.loads(c) for c in expect.get("comment_content", ())])
        )
        assert await found(
            "SELECT target, type, author FROM dreamcatcher.reactions WHERE world = $1"
        ) == expect.get("reaction", set())
        assert await found(
            "SELECT book, agent, chapter FROM dreamcatcher.chapters WHERE world = $1"
        ) == expect.get("chapter", set())
        assert await found("SELECT book FROM dreamcatcher.books WHERE world = $1") == expect.get(
            "book", set()
        )
        got_observations = await conn.fetch(
            "SELECT stream_id, count(*) AS n FROM dreamcatcher.observations"
            " WHERE world = $1 GROUP BY stream_id",
            world,
        )
        assert {r["stream_id"]: r["n"] for r in got_observations} == dict(observations)
