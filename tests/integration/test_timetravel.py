"""Time travel and the public SQL surface (docs/design.md §5): views, *_at functions, diff."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import DeltaClient, Merger

WORLD = "default"

#: docs/design.md §5: every entity view and *_at function has world, its key columns,
#: data jsonb, first_frame and last_frame.
ENTITY_KEYS: dict[str, list[str]] = {
    "posts": ["number"],
    "comments": ["id", "discussion", "author"],
    "reactions": ["target", "type", "author"],
    "chapters": ["book", "agent", "chapter"],
    "books": ["book", "target", "compiled_frame"],
    "agents": ["id"],
    "observations": ["frame", "stream_id"],
}
ENTITIES = sorted(ENTITY_KEYS)

#: The other views of §5 (and late_attempts, §4) with the columns they must have.
OTHER_VIEWS: dict[str, list[str]] = {
    "deltas": ["world", "frame", "stream_id", "utc", "payload"],
    "frames": ["world", "frame", "status", "delta_count", "state_hash", "closed_at", "merged_at"],
    "quarantine": ["world", "frame", "stream_id", "reason", "item"],
    "late_attempts": ["world", "frame", "stream_id", "utc", "payload"],
}


async def put(dsn: str, stream: str, frame: int, payload: Mapping[str, Any]) -> None:
    async with DeltaClient.connect(dsn, stream_id=stream, world=WORLD) as dc:
        await dc.insert_delta(frame, payload)


async def close_and_merge(dsn: str, *frames: int) -> None:
    async with DeltaClient.connect(dsn, stream_id="closer", world=WORLD) as dc:
        for frame in frames:
            await dc.close_frame(frame)
    merger = Merger(dsn, WORLD)
    try:
        results = await merger.run_until_idle()
    finally:
        await merger.aclose()
    assert sorted(r.frame for r in results) == sorted(frames)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    return conn


async def state_at(conn: asyncpg.Connection, entity: str, frame: int) -> list[str]:
    """The rows of ``<entity>_at(world, frame)`` as sorted canonical JSON strings."""
    rows = await conn.fetch(f"SELECT * FROM dreamcatcher.{entity}_at($1, $2)", WORLD, frame)
    return sorted(json.dumps(dict(r), sort_keys=True, default=str) for r in rows)


FRAME_1 = {
    "posts_created": [{"number": 1, "title": "old", "channel": "general"}],
    "agents_updated": [{"id": "ag-1", "mood": "calm"}],
    "comments_added": [{"id": "c-1", "author": "ann", "discussion": 1, "body": "hi"}],
    "reactions_added": [{"target": "c-1", "type": "like", "author": "bob"}],
    "chapters": [{"book": "b-1", "agent": "ann", "chapter": 1, "target": 2}],
    "observations": [{"kind": "weather", "value": "sun"}],
}
FRAME_3 = {
    "posts_updated": [{"number": 1, "title": "new"}],
    "posts_created": [{"number": 2, "title": "second"}],
    "agents_updated": [{"id": "ag-1", "mood": "busy"}, {"id": "ag-2", "mood": "new"}],
    "comments_added": [{"id": "c-2", "author": "bob", "discussion": 1, "reply_to": "c-1"}],
    "reactions_added": ["c-2:heart"],
    "chapters": [{"book": "b-1", "agent": "bob", "chapter": 2}, {"book": "b-2", "agent": "cy", "chapter": 1}],
    "observations": {"kind": "weather", "value": "rain"},
}


async def three_frames(dsn: str) -> None:
    await put(dsn, "s1", 1, FRAME_1)
    await close_and_merge(dsn, 1)
    await put(dsn, "s1", 2, {"unrelated": True})
    await close_and_merge(dsn, 2)
    await put(dsn, "s2", 3, FRAME_3)
    await close_and_merge(dsn, 3)


async def test_posts_at_shows_the_state_right_after_a_frame(dreamcatcher_dsn: str) -> None:
    await three_frames(dreamcatcher_dsn)
    conn = await connect(dreamcatcher_dsn)
    try:
        sql = "SELECT number, data->>'title' AS title FROM dreamcatcher.posts_at($1, $2) ORDER BY number"
        assert [tuple(r) for r in await conn.fetch(sql, WORLD, 0)] == []
        assert [tuple(r) for r in await conn.fetch(sql, WORLD, 1)] == [(1, "old")]
        assert [tuple(r) for r in await conn.fetch(sql, WORLD, 2)] == [(1, "old")]
        assert [tuple(r) for r in await conn.fetch(sql, WORLD, 3)] == [(1, "new"), (2, "second")]
        post = await conn.fetchrow("SELECT * FROM dreamcatcher.posts_at($1, 2) WHERE number = 1", WORLD)
        assert post is not None
        assert post["data"] == {"number": 1, "title": "old", "channel": "general"}
        assert (post["first_frame"], post["last_frame"]) == (1, 1)
        post = await conn.fetchrow("SELECT * FROM dreamcatcher.posts_at($1, 3) WHERE number = 1", WORLD)
        assert post is not None
        assert post["data"] == {"number": 1, "title": "new", "channel": "general"}
        assert (post["first_frame"], post["last_frame"]) == (1, 3)
    finally:
        await conn.close()


async def test_every_at_function_travels_in_time(dreamcatcher_dsn: str) -> None:
    await three_frames(dreamcatcher_dsn)
    conn = await connect(dreamcatcher_dsn)
    try:

        async def keys(entity: str, frame: int) -> set[tuple[Any, ...]]:
            cols = ", ".join(ENTITY_KEYS[entity][:1] if entity == "books" else ENTITY_KEYS[entity])
            rows = await conn.fetch(f"SELECT {cols} FROM dreamcatcher.{entity}_at($1, $2)", WORLD, frame)
            return {tuple(r) for r in rows}

        at2 = {e: await keys(e, 2) for e in ENTITIES}
        at3 = {e: await keys(e, 3) for e in ENTITIES}
        assert at2 == {
            "posts": {(1,)},
            "agents": {("ag-1",)},
            "comments": {("c-1", 1, "ann")},
            "reactions": {("c-1", "like", "bob")},
            "chapters": {("b-1", "ann", 1)},
            "books": {("b-1",)},
            "observations": {(1, "s1")},
        }
        # entities that first appear in frame 3 are absent at 2, present at 3
        assert at3 == {
            "posts": {(1,), (2,)},
            "agents": {("ag-1",), ("ag-2",)},
            "comments": {("c-1", 1, "ann"), ("c-2", 1, "bob")},
            "reactions": {("c-1", "like", "bob"), ("c-2", "heart", None)},
            "chapters": {("b-1", "ann", 1), ("b-1", "bob", 2), ("b-2", "cy", 1)},
            "books": {("b-1",), ("b-2",)},
            "observations": {(1, "s1"), (3, "s2")},
        }
        agent = await conn.fetchrow("SELECT data FROM dreamcatcher.agents_at($1, 2) WHERE id = 'ag-1'", WORLD)
        assert agent is not None and agent["data"]["mood"] == "calm"
        book = await conn.fetch(
            "SELECT book, target, compiled_frame FROM dreamcatcher.books_at($1, $2) ORDER BY book", WORLD, 2
        )
        assert [tuple(r) for r in book] == [("b-1", 2, None)]
        book = await conn.fetch(
            "SELECT book, target, compiled_frame FROM dreamcatcher.books_at($1, $2) ORDER BY book", WORLD, 3
        )
        assert [tuple(r) for r in book] == [("b-1", 2, 3), ("b-2", 10, None)]
        # the current views agree with the state after the last frame
        for entity in ENTITIES:
            current = await conn.fetch(f"SELECT * FROM dreamcatcher.{entity}")
            assert sorted(
                json.dumps(dict(r), sort_keys=True, default=str) for r in current
            ) == await state_at(conn, entity, 3), entity
    finally:
        await conn.close()


async def test_a_frame_between_merged_frames_shows_the_earlier_state(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "s1", 10, FRAME_1)
    await put(dsn, "s1", 14, FRAME_3)
    await close_and_merge(dsn, 10, 14)
    conn = await connect(dsn)
    try:
        for entity in ENTITIES:
            at10, at12, at13, at14 = [await state_at(conn, entity, f) for f in (10, 12, 13, 14)]
            assert at10, entity
            assert at12 == at10, entity
            assert at13 == at10, entity
            assert at14 != at10, entity
            assert await state_at(conn, entity, 9) == [], entity
            assert await state_at(conn, entity, 1000) == at14, entity
    finally:
        await conn.close()


@pytest.mark.parametrize("entity", ENTITIES)
async def test_at_function_has_the_columns_of_design(dreamcatcher_dsn: str, entity: str) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        stmt = await conn.prepare(f"SELECT * FROM dreamcatcher.{entity}_at($1, $2)")
        columns = {a.name: a.type.name for a in stmt.get_attributes()}
    finally:
        await conn.close()
    expected = ["world", *ENTITY_KEYS[entity], "data", "first_frame", "last_frame"]
    assert set(expected) <= set(columns), (entity, columns)
    assert columns["data"] == "jsonb"
    assert columns["first_frame"] == columns["last_frame"] == "int8"
    assert columns["world"] == "text"


@pytest.mark.parametrize("entity", ENTITIES)
async def test_entity_view_has_the_columns_of_design(dreamcatcher_dsn: str, entity: str) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        stmt = await conn.prepare(f"SELECT * FROM dreamcatcher.{entity}")
        view_columns = {a.name: a.type.name for a in stmt.get_attributes()}
        stmt = await conn.prepare(f"SELECT * FROM dreamcatcher.{entity}_at($1, $2)")
        at_columns = {a.name: a.type.name for a in stmt.get_attributes()}
    finally:
        await conn.close()
    expected = ["world", *ENTITY_KEYS[entity], "data", "first_frame", "last_frame"]
    assert set(expected) <= set(view_columns), (entity, view_columns)
    assert view_columns["data"] == "jsonb"
    # the view and its *_at function have the same shape
    assert view_columns == at_columns


@pytest.mark.parametrize("view", sorted(OTHER_VIEWS))
async def test_other_views_have_their_columns(dreamcatcher_dsn: str, view: str) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        stmt = await conn.prepare(f"SELECT * FROM dreamcatcher.{view}")
        columns = {a.name: a.type.name for a in stmt.get_attributes()}
    finally:
        await conn.close()
    assert set(OTHER_VIEWS[view]) <= set(columns), (view, columns)
    if view == "quarantine":
        assert columns["item"] == "jsonb"
    if view in ("deltas", "late_attempts"):
        assert columns["payload"] == "jsonb"


async def test_diff_reports_added_and_changed_rows(dreamcatcher_dsn: str) -> None:
    await three_frames(dreamcatcher_dsn)
    conn = await connect(dreamcatcher_dsn)
    try:
        rows = await conn.fetch("SELECT * FROM dreamcatcher.diff($1, 1, 3)", WORLD)
        assert await conn.fetch("SELECT * FROM dreamcatcher.diff($1, 1, 2)", WORLD) == []
        assert await conn.fetch("SELECT * FROM dreamcatcher.diff($1, 3, 3)", WORLD) == []
        backwards = await conn.fetch("SELECT * FROM dreamcatcher.diff($1, 3, 1)", WORLD)
    finally:
        await conn.close()
    by_change: dict[str, list[Any]] = {}
    for r in rows:
        by_change.setdefault(r["change"], []).append(r)
    assert set(by_change) == {"added", "changed"}

    changed = {(r["kind"], r["ekey"]): r for r in by_change["changed"]}
    assert set(changed) == {("post", "1"), ("agent", "ag-1"), ("book", "b-1")}
    post = changed[("post", "1")]
    assert post["fields"] == ["title"]
    assert (post["before"]["title"], post["after"]["title"]) == ("old", "new")
    assert changed[("agent", "ag-1")]["fields"] == ["mood"]
    assert "compiled_frame" in changed[("book", "b-1")]["fields"]

    added = by_change["added"]
    assert sorted(r["kind"] for r in added) == sorted(
        ["post", "agent", "comment", "reaction", "chapter", "chapter", "book", "observation"]
    )
    assert all(r["before"] is None and r["after"] is not None for r in added)
    assert {r["after"]["id"] for r in added if r["kind"] == "comment"} == {"c-2"}

    # the other way round, what was added is removed
    assert sorted((r["kind"], r["ekey"]) for r in backwards if r["change"] == "removed") == sorted(
        (r["kind"], r["ekey"]) for r in added
    )
