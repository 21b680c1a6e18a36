"""The merge rules of docs/design.md §3, on the real-world shapes of §6.

Every test writes deltas with :class:`DeltaClient`, closes the frames, runs a
:class:`Merger` until it is idle and reads the public views with asyncpg.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from dreamcatcher_pg import DeltaClient, Merger, MergeResult
from tests.support.helpers import fetch

WORLD = "default"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """A writer's clock reading, ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


async def put(
    dsn: str,
    stream: str,
    frame: int,
    payload: Mapping[str, Any],
    utc: datetime | None = None,
    *,
    world: str = WORLD,
) -> None:
    async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
        receipt = await dc.insert_delta(frame, payload, utc=utc)
    assert receipt.status == "stored"


async def close_and_merge(dsn: str, *frames: int, world: str = WORLD) -> list[MergeResult]:
    async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
        for frame in frames:
            assert await dc.close_frame(frame) in ("closed", "merged")
    merger = Merger(dsn, world)
    try:
        return await merger.run_until_idle()
    finally:
        await merger.aclose()


async def one(dsn: str, sql: str, *args: Any) -> dict[str, Any]:
    rows = await fetch(dsn, sql, *args)
    assert len(rows) == 1, rows
    return rows[0]


async def frame_row(dsn: str, frame: int) -> dict[str, Any]:
    return await one(dsn, "SELECT * FROM dreamcatcher.frames WHERE world = $1 AND frame = $2", WORLD, frame)


# -- posts -------------------------------------------------------------------


async def test_posts_field_lww_across_streams_and_frames(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    # frame 1: two streams write post 1; the later utc wins each field it sets
    await put(dsn, "stream-a", 1, {"posts_created": [{"number": 1, "title": "A", "channel": "c"}]}, at(2))
    await put(dsn, "stream-b", 1, {"posts_created": [{"number": 1, "title": "B", "author": "bob"}]}, at(1))
    await close_and_merge(dsn, 1)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 1")
    assert post["data"] == {"number": 1, "title": "A", "channel": "c", "author": "bob"}

    # frame 2 beats frame 1 even with an earlier utc: the order is (frame, utc, stream_id, position)
    await put(dsn, "stream-b", 2, {"posts_created": [{"number": 1, "title": "B2"}]}, at(0))
    await close_and_merge(dsn, 2)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 1")
    assert post["data"] == {"number": 1, "title": "B2", "channel": "c", "author": "bob"}
    assert (post["first_frame"], post["last_frame"]) == (1, 2)


async def test_posts_utc_tie_goes_to_greater_stream_id(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    same = at(5)
    # inserted in the opposite order to the stream ids: arrival order must not matter
    await put(dsn, "stream-2", 1, {"posts_created": [{"number": 7, "title": "from 2"}]}, same)
    await put(dsn, "stream-1", 1, {"posts_created": [{"number": 7, "title": "from 1"}]}, same)
    # stream ids compare by code point ("Z" < "a"), whatever the database's collation
    await put(dsn, "a-stream", 1, {"posts_created": [{"number": 8, "title": "from a"}]}, same)
    await put(dsn, "Z-stream", 1, {"posts_created": [{"number": 8, "title": "from Z"}]}, same)
    await close_and_merge(dsn, 1)
    titles = {
        r["number"]: r["data"]["title"]
        for r in await fetch(dsn, "SELECT number, data FROM dreamcatcher.posts")
    }
    assert titles == {7: "from 2", 8: "from a"}
    assert max("stream-1", "stream-2") == "stream-2" and max("a-stream", "Z-stream") == "a-stream"


async def test_post_field_set_only_by_earlier_delta_survives_partial_update(
    dreamcatcher_dsn: str,
) -> None:
    dsn = dreamcatcher_dsn
    full = {"number": 3, "title": "t", "channel": "general", "author": "ann", "score": 1}
    await put(dsn, "stream-a", 1, {"posts_created": [full]}, at(1))
    # a later partial update in the same frame, from another stream
    await put(dsn, "stream-b", 1, {"posts_updated": [{"number": 3, "score": 2}]}, at(2))
    await close_and_merge(dsn, 1)
    # and one in a later frame
    await put(dsn, "stream-c", 2, {"posts_updated": [{"number": 3, "title": "t2"}]}, at(3))
    await close_and_merge(dsn, 2)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 3")
    assert post["data"] == {**full, "score": 2, "title": "t2"}


async def test_later_position_in_one_delta_wins(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn,
        "stream-a",
        1,
        {"posts_created": [{"number": 4, "title": "first"}, {"number": 4, "title": "second"}]},
        at(1),
    )
    await close_and_merge(dsn, 1)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 4")
    assert post["data"]["title"] == "second"


async def test_posts_as_bare_ints_and_numeric_strings(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"posts_created": [7, "8", " 9 ", {"number": "10", "title": "ten"}]})
    await close_and_merge(dsn, 1)
    posts = {r["number"]: r["data"] for r in await fetch(dsn, "SELECT * FROM dreamcatcher.posts")}
    assert posts == {
        7: {"number": 7},
        8: {"number": 8},
        9: {"number": 9},
        10: {"number": 10, "title": "ten"},
    }
    # a bare int later filled in by an object keeps one post
    await put(dsn, "stream-b", 2, {"posts_created": [{"number": 7, "title": "seven"}]})
    await close_and_merge(dsn, 2)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 7")
    assert post["data"] == {"number": 7, "title": "seven"}
    assert (post["first_frame"], post["last_frame"]) == (1, 2)


async def test_posts_updated_is_field_lww(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"posts_created": [{"number": 5, "title": "x", "state": "open"}]})
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-a", 2, {"posts_updated": [{"number": 5, "state": "closed"}]}, at(2))
    await put(dsn, "stream-b", 2, {"posts_updated": [{"number": "5", "state": "locked"}]}, at(1))
    await close_and_merge(dsn, 2)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts WHERE number = 5")
    assert post["data"] == {"number": 5, "title": "x", "state": "closed"}


# -- agents ------------------------------------------------------------------


async def test_agents_updated_lww_with_id_and_agent_id_alias(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"agents_updated": [{"id": "ag-1", "mood": "calm", "level": 1}]}, at(1))
    await put(dsn, "stream-b", 1, {"agents_updated": [{"agent_id": "ag-1", "mood": "busy"}]}, at(2))
    await put(dsn, "stream-c", 1, {"agents_updated": [{"agent_id": "ag-2", "mood": "new"}]}, at(3))
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-a", 2, {"agents_updated": {"agent_id": "ag-1", "level": 2}}, at(0))
    await close_and_merge(dsn, 2)
    agents = {r["id"]: r for r in await fetch(dsn, "SELECT * FROM dreamcatcher.agents")}
    assert set(agents) == {"ag-1", "ag-2"}
    assert agents["ag-1"]["data"] == {"id": "ag-1", "mood": "busy", "level": 2}
    assert (agents["ag-1"]["first_frame"], agents["ag-1"]["last_frame"]) == (1, 2)
    assert agents["ag-2"]["data"] == {"id": "ag-2", "mood": "new"}


# -- comments ----------------------------------------------------------------


async def test_comments_dedupe_by_id_across_streams_and_frames(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    first = {"id": "c-1", "author": "ann", "discussion": 42, "body": "first"}
    await put(dsn, "stream-a", 1, {"comments_added": [first]}, at(1))
    await put(
        dsn,
        "stream-b",
        1,
        {"comments_added": [{"comment_id": "c-1", "agent": "bob", "content": "second"}]},
        at(2),
    )
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-c", 2, {"comments_added": [{"id": "c-1", "body": "third"}]})
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.comments")
    assert len(rows) == 1
    # append, dedupe: the first occurrence stays, later copies change nothing
    assert rows[0]["data"] == first
    assert (rows[0]["id"], rows[0]["discussion"], rows[0]["author"]) == ("c-1", 42, "ann")
    assert (rows[0]["first_frame"], rows[0]["last_frame"]) == (1, 1)


async def test_comments_without_id_dedupe_by_exact_content(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    base = {"author": "ann", "discussion": 42, "body": "hello"}
    await put(dsn, "stream-a", 1, {"comments_added": [base]})
    await put(
        dsn,
        "stream-b",
        1,
        {
            "comments_added": [
                {"body": "hello", "discussion": 42, "author": "ann"},  # same content, other key order
                {"agent": "ann", "discussion": 42, "content": "hello"},  # same content, aliased
                {**base, "body": "hello!"},  # other text
                {**base, "author": "bob"},  # other author
                {**base, "discussion": 43},  # other target
            ]
        },
    )
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-c", 2, {"comments_added": [base]})
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.comments ORDER BY data::text")
    assert sorted(json.dumps(r["data"], sort_keys=True) for r in rows) == sorted(
        json.dumps(d, sort_keys=True)
        for d in (
            base,
            {**base, "body": "hello!"},
            {**base, "author": "bob"},
            {**base, "discussion": 43},
        )
    )
    assert all(r["id"] is None for r in rows)
    assert all(r["first_frame"] == 1 for r in rows)


async def test_bare_string_comments_are_ids(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"comments_added": ["c-10", "c-11"]})
    await put(dsn, "stream-b", 1, {"comments_added": ["c-10"]})
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-c", 2, {"comments_added": [{"id": "c-10", "body": "later"}]})
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.comments ORDER BY id")
    # dedupe never overwrites, but a later occurrence may add fields the comment lacked
    assert [(r["id"], r["data"], r["first_frame"], r["last_frame"]) for r in rows] == [
        ("c-10", {"id": "c-10", "body": "later"}, 1, 2),
        ("c-11", {"id": "c-11"}, 1, 1),
    ]
    assert [(r["discussion"], r["author"]) for r in rows] == [(None, None), (None, None)]


async def test_a_dedupe_never_overwrites_a_field(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"comments_added": [{"id": "c1", "author": "ann", "body": "first"}]})
    await put(dsn, "stream-b", 2, {"comments_added": [{"id": "c1", "author": "bob", "discussion": 5}]})
    await close_and_merge(dsn, 1)
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT id, author, discussion, data FROM dreamcatcher.comments")
    assert [(r["id"], r["author"], r["discussion"]) for r in rows] == [("c1", "ann", 5)]
    assert rows[0]["data"] == {"id": "c1", "author": "ann", "body": "first", "discussion": 5}


async def test_comment_aliases_are_folded(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn,
        "stream-a",
        1,
        {
            "comments_added": [
                {"comment_id": "c-1", "agent": "ann", "discussion": 1, "content": "a", "replied_to": "c-0"},
                {"id": "c-2", "author": "bob", "discussion": "1", "summary": "b", "replyTo": "c-1"},
                {"id": "c-3", "agent": "cy", "discussion": 1, "body": "c", "target": "c-2"},
                {"id": "c-4", "author": "di", "discussion": 1, "body": "d", "reply_to": "c-3"},
            ]
        },
    )
    await close_and_merge(dsn, 1)
    rows = {r["id"]: r for r in await fetch(dsn, "SELECT * FROM dreamcatcher.comments")}
    assert rows["c-1"]["data"] == {
        "id": "c-1",
        "author": "ann",
        "discussion": 1,
        "body": "a",
        "reply_to": "c-0",
    }
    assert rows["c-2"]["data"] == {
        "id": "c-2",
        "author": "bob",
        "discussion": "1",
        "body": "b",
        "reply_to": "c-1",
    }
    assert rows["c-3"]["data"] == {
        "id": "c-3",
        "author": "cy",
        "discussion": 1,
        "body": "c",
        "reply_to": "c-2",
    }
    assert rows["c-4"]["data"] == {
        "id": "c-4",
        "author": "di",
        "discussion": 1,
        "body": "d",
        "reply_to": "c-3",
    }
    assert {i: (r["author"], r["discussion"]) for i, r in rows.items()} == {
        "c-1": ("ann", 1),
        "c-2": ("bob", 1),
        "c-3": ("cy", 1),
        "c-4": ("di", 1),
    }


async def test_comment_alias_beside_its_canonical_field_is_kept(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    item = {
        "id": "c-5",
        "comment_id": "legacy-5",
        "author": "ann",
        "agent": "writer-bot",
        "body": "text",
        "content": "other text",
        "reply_to": "c-1",
        "target": "c-2",
        "replied_to": "c-3",
    }
    await put(dsn, "stream-a", 1, {"comments_added": [item]})
    await close_and_merge(dsn, 1)
    row = await one(dsn, "SELECT * FROM dreamcatcher.comments")
    assert row["data"] == item  # nothing renamed over, nothing lost
    assert (row["id"], row["author"]) == ("c-5", "ann")


# -- reactions ---------------------------------------------------------------


async def test_reactions_object_forms_dedupe(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn,
        "stream-a",
        1,
        {
            "reactions_added": [
                {"target": "post-1", "type": "like", "author": "ann"},
                {"target": "post-1", "type": "like", "author": "bob"},
                {"target": "post-1", "type": "heart", "author": "ann"},
            ]
        },
    )
    await put(
        dsn,
        "stream-b",
        1,
        {"reactions_added": [{"node": "post-1", "reaction": "like", "agent": "ann"}]},
    )
    await close_and_merge(dsn, 1)
    rows = await fetch(dsn, "SELECT target, type, author, data FROM dreamcatcher.reactions")
    assert sorted((r["target"], r["type"], r["author"]) for r in rows) == [
        ("post-1", "heart", "ann"),
        ("post-1", "like", "ann"),
        ("post-1", "like", "bob"),
    ]
    for r in rows:
        assert {k: r["data"][k] for k in ("target", "type", "author")} == {
            "target": r["target"],
            "type": r["type"],
            "author": r["author"],
        }


async def test_reaction_strings_have_no_author_and_dedupe_across_streams(
    dreamcatcher_dsn: str,
) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"reactions_added": ["post-42:like", "rocket on post-42"]})
    await put(dsn, "stream-b", 1, {"reactions_added": ["post-42:like", "like on post-42"]})
    # a node that itself holds colons: the type is after the last one
    await put(dsn, "stream-c", 1, {"reactions_added": ["discussion:7:eyes"]})
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-d", 2, {"reactions_added": "post-42:like"})
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT target, type, author, first_frame FROM dreamcatcher.reactions")
    assert sorted((r["target"], r["type"], r["author"]) for r in rows) == [
        ("discussion:7", "eyes", None),
        ("post-42", "like", None),
        ("post-42", "rocket", None),
    ]
    assert {r["first_frame"] for r in rows} == {1}


async def test_reaction_tallies_are_counted_never_rows(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn,
        "stream-a",
        1,
        {
            "reactions_added": [
                {"type": "like", "count": 3},
                {"agent": "ann", "count": 2},
                {"batch": 1, "count": 5, "types": ["like", "heart"]},
                4,
            ]
        },
    )
    await put(dsn, "stream-b", 1, {"reactions_added": 7})  # a bare int for the whole key
    await close_and_merge(dsn, 1)
    assert await fetch(dsn, "SELECT * FROM dreamcatcher.reactions") == []
    assert await fetch(dsn, "SELECT * FROM dreamcatcher.quarantine") == []
    stats = (await frame_row(dsn, 1))["stats"]
    assert stats["tallies"] == 5
    assert stats["tally_count"] == 3 + 2 + 5 + 4 + 7


# -- chapters and books ------------------------------------------------------


async def test_chapters_dedupe_by_book_agent_chapter(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn,
        "stream-a",
        1,
        {
            "chapters": [
                {"book": "b1", "agent": "ann", "chapter": 1, "title": "one"},
                {"book": "b1", "agent": "bob", "chapter": 1},
                {"book": "b2", "agent": "ann", "chapter": 1},
            ]
        },
        at(1),
    )
    await put(
        dsn,
        "stream-b",
        1,
        {"chapters": [{"book": "b1", "author": "ann", "chapter": "1", "title": "copy"}]},
        at(2),
    )
    await close_and_merge(dsn, 1)
    await put(dsn, "stream-c", 2, {"chapters": [{"book": "b1", "agent": "ann", "chapter": 1}]})
    await close_and_merge(dsn, 2)
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.chapters")
    assert sorted((r["book"], r["agent"], r["chapter"]) for r in rows) == [
        ("b1", "ann", 1),
        ("b1", "bob", 1),
        ("b2", "ann", 1),
    ]
    first = next(r for r in rows if (r["book"], r["agent"]) == ("b1", "ann"))
    assert first["data"]["title"] == "one"
    assert (first["first_frame"], first["last_frame"]) == (1, 1)
    books = {r["book"]: r for r in await fetch(dsn, "SELECT * FROM dreamcatcher.books")}
    assert books["b1"]["data"]["chapters"] == 2  # duplicates do not count


async def test_book_target_defaults_to_ten_and_compiles_when_reached(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn, "stream-a", 1, {"chapters": [{"book": "b", "agent": "ann", "chapter": c} for c in range(1, 10)]}
    )
    await close_and_merge(dsn, 1)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books WHERE book = 'b'")
    assert (book["target"], book["compiled_frame"]) == (10, None)
    # frame 2: a copy of chapter 9 changes nothing
    await put(dsn, "stream-b", 2, {"chapters": [{"book": "b", "agent": "ann", "chapter": 9}]})
    await close_and_merge(dsn, 2)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books WHERE book = 'b'")
    assert book["compiled_frame"] is None
    # frame 3: the tenth distinct chapter compiles the book in frame 3
    await put(dsn, "stream-b", 3, {"chapters": [{"book": "b", "agent": "bob", "chapter": 9}]})
    await close_and_merge(dsn, 3)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books WHERE book = 'b'")
    assert (book["target"], book["compiled_frame"]) == (10, 3)
    assert (book["first_frame"], book["last_frame"]) == (1, 3)


async def test_book_target_lww_and_stays_compiled_when_raised(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(
        dsn, "stream-a", 1, {"chapters": [{"book": "b", "agent": "ann", "chapter": 1, "target": 5}]}, at(2)
    )
    await put(
        dsn, "stream-b", 1, {"chapters": [{"book": "b", "agent": "bob", "chapter": 1, "target": 2}]}, at(1)
    )
    await close_and_merge(dsn, 1)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books")
    assert (book["target"], book["compiled_frame"]) == (5, None)  # the later utc's target wins
    await put(dsn, "stream-b", 2, {"chapters": [{"book": "b", "agent": "bob", "chapter": 2, "target": 3}]})
    await close_and_merge(dsn, 2)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books")
    assert (book["target"], book["compiled_frame"]) == (3, 2)
    await put(dsn, "stream-b", 3, {"chapters": [{"book": "b", "agent": "bob", "chapter": 3, "target": 50}]})
    await close_and_merge(dsn, 3)
    book = await one(dsn, "SELECT * FROM dreamcatcher.books")
    assert (book["target"], book["compiled_frame"]) == (50, 2)


# -- observations --------------------------------------------------------------


async def test_observations_object_list_and_no_dedupe(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    seen = {"kind": "weather", "value": "rain"}
    await put(dsn, "stream-a", 1, {"observations": seen})  # an object: one observation
    await put(dsn, "stream-b", 1, {"observations": [seen, {"kind": "mood"}, seen]})  # a list: each
    await close_and_merge(dsn, 1)
    rows = await fetch(dsn, "SELECT * FROM dreamcatcher.observations")
    assert sorted((r["stream_id"], json.dumps(r["data"], sort_keys=True)) for r in rows) == sorted(
        [
            ("stream-a", json.dumps(seen, sort_keys=True)),
            ("stream-b", json.dumps(seen, sort_keys=True)),
            ("stream-b", json.dumps(seen, sort_keys=True)),
            ("stream-b", json.dumps({"kind": "mood"}, sort_keys=True)),
        ]
    )
    assert {r["frame"] for r in rows} == {1}


# -- keys with no rule, unreadable items ----------------------------------------


async def test_unknown_keys_stay_in_the_log_and_are_counted(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    payload_a = {"posts_created": [1], "mood": "sunny", "votes": [1, 2], "_meta": {"timestamp": "x"}}
    payload_b = {"mood": "grey", "frame": 1, "stream_id": "stream-b", "utc": "2024-05-01T12:00:00Z"}
    await put(dsn, "stream-a", 1, payload_a)
    await put(dsn, "stream-b", 1, payload_b)
    await close_and_merge(dsn, 1)
    row = await frame_row(dsn, 1)
    assert row["status"] == "merged"
    assert row["stats"]["unmerged_keys"] == {"mood": 2, "votes": 1}
    logged = {
        r["stream_id"]: r["payload"]
        for r in await fetch(dsn, "SELECT stream_id, payload FROM dreamcatcher.deltas WHERE frame = 1")
    }
    assert logged == {"stream-a": payload_a, "stream-b": payload_b}
    assert [r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")] == [1]


async def test_unreadable_items_are_quarantined_and_the_rest_merges(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    bad_post = {"title": "no number"}
    bad_reaction = "just-a-node"
    bad_chapter = {"agent": "ann", "chapter": 1}
    await put(
        dsn,
        "stream-a",
        1,
        {
            "posts_created": [{"number": 1, "title": "ok"}, bad_post],
            "comments_added": [{"id": "c-1", "body": "ok"}, 12345],
            "reactions_added": [bad_reaction, "post-1:like"],
            "chapters": [bad_chapter, {"book": "b", "agent": "ann", "chapter": 1}],
            "observations": [{"ok": True}],
        },
    )
    await put(dsn, "stream-b", 1, {"posts_created": [{"number": 2}]})
    await close_and_merge(dsn, 1)

    assert (await frame_row(dsn, 1))["status"] == "merged"
    q = await fetch(dsn, "SELECT frame, stream_id, reason, item FROM dreamcatcher.quarantine")
    assert sorted(json.dumps(r["item"]) for r in q) == sorted(
        json.dumps(i) for i in (bad_post, 12345, bad_reaction, bad_chapter)
    )
    assert all(r["frame"] == 1 and r["stream_id"] == "stream-a" for r in q)
    reasons = {json.dumps(r["item"]): r["reason"] for r in q}
    assert "number" in reasons[json.dumps(bad_post)]
    assert "comment" in reasons[json.dumps(12345)]
    assert "type" in reasons[json.dumps(bad_reaction)]
    assert "book" in reasons[json.dumps(bad_chapter)]
    assert all(reason for reason in reasons.values())
    assert (await frame_row(dsn, 1))["stats"]["quarantined"] == 4

    # the rest of the same delta, and the other delta of the frame, merged
    assert sorted(r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")) == [1, 2]
    assert [r["id"] for r in await fetch(dsn, "SELECT id FROM dreamcatcher.comments")] == ["c-1"]
    assert [(r["target"], r["type"]) for r in await fetch(dsn, "SELECT * FROM dreamcatcher.reactions")] == [
        ("post-1", "like")
    ]
    assert [r["book"] for r in await fetch(dsn, "SELECT book FROM dreamcatcher.chapters")] == ["b"]
    assert len(await fetch(dsn, "SELECT * FROM dreamcatcher.observations")) == 1


# -- first_frame / last_frame ---------------------------------------------------


async def test_first_and_last_frame_columns(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await put(dsn, "stream-a", 1, {"posts_created": [{"number": 1, "title": "t"}]})
    await close_and_merge(dsn, 1)
    # frame 2 rewrites the same values: nothing changed, last_frame stays
    await put(
        dsn,
        "stream-a",
        2,
        {"posts_created": [{"number": 1, "title": "t"}], "comments_added": [{"id": "c", "body": "b"}]},
    )
    await close_and_merge(dsn, 2)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts")
    assert (post["first_frame"], post["last_frame"]) == (1, 1)
    await put(dsn, "stream-a", 5, {"posts_updated": [{"number": 1, "title": "t5"}], "comments_added": ["c"]})
    await close_and_merge(dsn, 5)
    post = await one(dsn, "SELECT * FROM dreamcatcher.posts")
    assert (post["first_frame"], post["last_frame"]) == (1, 5)
    comment = await one(dsn, "SELECT * FROM dreamcatcher.comments")
    assert (comment["first_frame"], comment["last_frame"]) == (2, 2)
