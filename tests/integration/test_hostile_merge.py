"""What one writer's deltas can make the merge do: bounded work, bounded rows, never a stuck frame.

Each test stores its hostile delta with the SQL function a worker may call directly
(``dreamcatcher.append_delta``), not through the client, whose validation would refuse some
of it first: the database and the merge must hold on their own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tests.support.helpers import connection, fetch, merge_until_idle

WORLD = "hostile"

#: A merge that should take about a second; a stuck or quadratic one takes minutes.
MERGE_DEADLINE = 60.0


async def _store(dsn: str, stream: str, frame: int, payload: dict[str, Any], utc: str) -> str:
    async with connection(dsn) as conn:
        status: str = await conn.fetchval(
            "SELECT dreamcatcher.append_delta($1, $2, $3, $4::text::timestamptz, $5::text::jsonb)",
            WORLD,
            stream,
            frame,
            utc,
            orjson.dumps(payload).decode(),
        )
        return status


async def _close_and_merge(dsn: str, frame: int) -> None:
    async with connection(dsn) as conn:
        await conn.fetchval("SELECT dreamcatcher.close_frame($1, $2)", WORLD, frame)
    await asyncio.wait_for(merge_until_idle(dsn, WORLD), MERGE_DEADLINE)
    status = await fetch(
        dsn, "SELECT status FROM dreamcatcher.frames WHERE world = $1 AND frame = $2", WORLD, frame
    )
    assert status == [{"status": "merged"}]


async def test_one_entity_given_thousands_of_fields_in_one_frame_merges(dreamcatcher_dsn: str) -> None:
    """Folding an entity's items copied the growing object once per item: 40,000 updates of one
    post, each naming a new field, took minutes. The fold must stay linear in the fields."""
    dsn = dreamcatcher_dsn
    n = 40_000
    posts = [{"number": 7, f"f{i}": i} for i in range(n)] + [{"number": 7, "f0": "last"}]
    comments = [{"id": "c-1", f"g{i}": i} for i in range(n)] + [{"id": "c-1", "g0": "second"}]
    assert (
        await _store(dsn, "s", 1, {"posts_updated": posts, "comments_added": comments}, "2026-01-01 00:00Z")
        == "stored"
    )
    await _close_and_merge(dsn, 1)

    post = (await fetch(dsn, "SELECT data FROM dreamcatcher.posts WHERE world = $1", WORLD))[0]["data"]
    assert len(post) == n + 1  # every field, and the number
    assert post["f0"] == "last" and post[f"f{n - 1}"] == n - 1  # last write wins
    comment = (await fetch(dsn, "SELECT data FROM dreamcatcher.comments WHERE world = $1", WORLD))[0]["data"]
    assert len(comment) == n + 1
    assert comment["g0"] == 0  # a comment keeps its first value of a field


async def test_many_fields_fold_like_few(dreamcatcher_dsn: str) -> None:
    """The linear fold (for an entity with many items in a frame) gives what the plain fold gives."""
    dsn = dreamcatcher_dsn
    items = [{"number": k % 3, "a": i, f"x{i % 7}": i, "t": {"i": i}} for i, k in enumerate(range(600))]
    # frame 1: many items per post (linear fold); frame 2: the same items, few per delta (plain fold)
    assert await _store(dsn, "s", 1, {"posts_updated": items}, "2026-01-01 00:00Z") == "stored"
    await _close_and_merge(dsn, 1)
    many = {r["number"]: r["data"] for r in await fetch(dsn, "SELECT number, data FROM dreamcatcher.posts")}
    for i in range(0, len(items), 3):  # three items per delta: one per post
        chunk = items[i : i + 3]
        await _store(
            dsn,
            "s",
            2,
            {"posts_updated": [{**d, "number": d["number"] + 10} for d in chunk]},
            f"2026-01-02T00:00:00.{i:06d}Z",
        )
    await _close_and_merge(dsn, 2)
    few = {
        r["number"] - 10: {**r["data"], "number": r["number"] - 10}
        for r in await fetch(dsn, "SELECT number, data FROM dreamcatcher.posts WHERE number >= 10")
    }
    assert many == few
    assert many[0]["a"] == 597 and many[0]["t"] == {"i": 597}


async def test_quarantine_rows_per_delta_are_bounded(dreamcatcher_dsn: str) -> None:
    """100,000 tiny unreadable items in one delta: 100 quarantine rows and one that counts the rest;
    the frame's stats still count every one, and the readable item of the delta merges."""
    dsn = dreamcatcher_dsn
    bad = [[]] * 100_000
    payload = {"posts_created": [*bad, {"number": 1, "title": "ok"}], "chapters": [1, 2]}
    assert await _store(dsn, "s", 1, payload, "2026-01-01 00:00Z") == "stored"
    assert await _store(dsn, "t", 1, {"posts_created": [[]]}, "2026-01-01 00:00Z") == "stored"
    await _close_and_merge(dsn, 1)

    rows = await fetch(
        dsn, "SELECT stream_id, key, position, reason, item FROM dreamcatcher.quarantine ORDER BY id"
    )
    mine = [r for r in rows if r["stream_id"] == "s"]
    assert len(mine) == 101
    assert all(r["item"] == [] and r["key"] == "posts_created" for r in mine[:100])
    summary = mine[100]
    assert summary["item"] is None and summary["position"] == 101
    assert summary["reason"].startswith("99902 more unreadable items of this delta")  # 100,000 + 2 - 100
    assert [r["item"] for r in rows if r["stream_id"] == "t"] == [[]]
    stats = (await fetch(dsn, "SELECT stats FROM dreamcatcher.frames WHERE world = $1", WORLD))[0]["stats"]
    assert stats["quarantined"] == 100_003
    assert [r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")] == [1]
