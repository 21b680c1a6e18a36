"""Hypothesis strategies and database helpers shared by the property and fuzz tests.

Items are generated with a label saying what the rules of docs/design.md §3/§6 must
make of them, so a test can check that every unreadable item is quarantined and
every readable one reaches the state, without re-implementing the rules.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from dreamcatcher_pg import DeltaClient, Merger

#: Writer clocks: few distinct instants, so utc ties between streams are common.
T0 = datetime(2031, 3, 1, tzinfo=UTC)
#: Streams that sort B < Z < a < c in the "C" collation and a < B < c < Z in most others.
STREAMS = ("B", "Z", "a", "c")

_worlds = itertools.count(1)


def new_world(tag: str) -> str:
    """A world name no other example of this session uses (worlds are independent)."""
    return f"{tag}-{os.getpid()}-{next(_worlds)}"


def examples(n: int) -> int:
    """``n`` scaled by ``DC_PROPERTY_SCALE`` (default 1; e.g. 10 for a long local run)."""
    return max(1, int(n * float(os.environ.get("DC_PROPERTY_SCALE", "1"))))


def db_settings(n: int) -> settings:
    """Hypothesis settings for a test that talks to PostgreSQL: few, slow examples."""
    return settings(
        max_examples=examples(n),
        deadline=None,
        # one database per test function, a fresh world per example
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        print_blob=True,
    )


# -- labelled items ------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One item of a delta key and what the merge must make of it.

    ``expect`` is ``("bad",)`` (quarantined), ``("post", n)``, ``("agent", id)``,
    ``("comment_id", id)``, ``("comment_content", folded_object)``,
    ``("reaction", target, type, author_or_None)``, ``("tally",)``,
    ``("chapter", book, agent, chapter)`` or ``("observation",)``.
    """

    value: Any
    expect: tuple[Any, ...] = field(hash=False)


BAD = ("bad",)

texts = st.sampled_from(
    ["t1", "t2", "x", "", " ", "é", "e\u0301", "👍🏽", "\u202eabc", "a:b", "x on y", "$$", "'); --"]
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), texts, st.floats(-1e6, 1e6, allow_nan=False, width=32)
)
#: Few distinct values, so last-write-wins has something to decide.
titles = st.sampled_from(["t1", "t2", "t3"])
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["k", "title", "n", "x", "é"]), children, max_size=3)
    ),
    max_leaves=6,
)
#: Unreadable under every rule that wants an object or a name.
not_objects = st.sampled_from([True, False, None, 2.5, [1], [], ["x"]])


def _extra(keys: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(list(keys)), json_values, max_size=2)


# posts: {number, ...} or a bare number (int or digit string)
post_numbers = st.integers(0, 2)


@st.composite
def post_items(draw: st.DrawFn) -> Item:
    n = draw(post_numbers)
    form = draw(st.sampled_from(["object", "object", "object", "object-str", "int", "str", "bad"]))
    if form == "object":
        fields = {"title": draw(titles), **draw(_extra(["channel", "author", "n"]))}
        return Item({"number": n, **fields}, ("post", n))
    if form == "object-str":
        return Item({"title": draw(titles), **draw(_extra(["channel"])), "number": str(n)}, ("post", n))
    if form == "int":
        return Item(n, ("post", n))
    if form == "str":
        return Item(draw(st.sampled_from([str(n), f" {n} "])), ("post", n))
    bad = draw(
        st.sampled_from(
            [
                {"title": "no number"},
                {"number": "abc"},
                {"number": 1.5},
                {"number": 3.0},
                {"number": True},
                {"number": None},
                {"number": [1]},
                {"number": 10**19},
                "abc",
                "",
                2.5,
                True,
                None,
                [1],
                {},
            ]
        )
    )
    return Item(bad, BAD)


agent_ids = st.sampled_from(["Z", "a", "ag-1", "é"])


@st.composite
def agent_items(draw: st.DrawFn) -> Item:
    if draw(st.booleans()):
        agent = draw(agent_ids)
        key = draw(st.sampled_from(["id", "agent_id", "agent"]))
        return Item({key: agent, "mood": draw(titles), **draw(_extra(["status", "n"]))}, ("agent", agent))
    bad = draw(
        st.sampled_from([{"mood": "x"}, {"id": None}, {"id": ""}, {"id": "  "}, {"id": {"x": 1}}, "Z", 5])
    )
    return Item(bad, BAD)


comment_ids = st.sampled_from(["c1", "c2", "c3", "👍🏽"])
_COMMENT_FIELDS = {
    "author": ["agent"],
    "discussion": [],
    "body": ["content", "summary"],
    "reply_to": ["replied_to"],
}
comment_field_values = st.sampled_from(["a", "B", 1, 2, "hi", "é", "x on y"])


@st.composite
def comment_items(draw: st.DrawFn) -> Item:
    form = draw(st.sampled_from(["id", "bare", "content", "bad"]))
    if form == "bare":
        cid = draw(comment_ids)
        return Item(cid, ("comment_id", cid))
    fields = draw(st.lists(st.sampled_from(list(_COMMENT_FIELDS)), unique=True, min_size=1, max_size=3))
    item: dict[str, Any] = {}
    folded: dict[str, Any] = {}
    for canon in fields:
        key = draw(st.sampled_from([canon, *_COMMENT_FIELDS[canon]]))
        value = draw(comment_field_values)
        item[key] = value
        folded[canon] = value
    if form == "id":
        cid = draw(comment_ids)
        item[draw(st.sampled_from(["id", "comment_id"]))] = cid
        return Item(item, ("comment_id", cid))
    if form == "content":
        return Item(item, ("comment_content", folded))
    return Item(draw(st.sampled_from([{}, 5, 2.5, True, None, [], ["c1"], "", "   "])), BAD)


targets = st.sampled_from(["1", "2", "n-3"])
rtypes = st.sampled_from(["+1", "heart", "🎉"])


@st.composite
def reaction_items(draw: st.DrawFn) -> Item:
    form = draw(st.sampled_from(["object", "colon", "on", "tally", "bad"]))
    target, rtype = draw(targets), draw(rtypes)
    if form == "object":
        item: dict[str, Any] = {
            draw(st.sampled_from(["target", "node"])): target,
            draw(st.sampled_from(["type", "reaction"])): rtype,
        }
        author = draw(st.none() | st.sampled_from(["B", "a"]))
        if author is not None:
            item[draw(st.sampled_from(["author", "agent"]))] = author
        return Item(item, ("reaction", target, rtype, author))
    if form == "colon":
        return Item(f"{target}:{rtype}", ("reaction", target, rtype, None))
    if form == "on":
        return Item(f"{rtype} on {target}", ("reaction", target, rtype, None))
    if form == "tally":
        tally = draw(
            st.sampled_from(
                [
                    {"type": rtype, "count": 3},
                    {"agent": "a", "count": 2},
                    {"batch": 1, "count": 5, "types": [rtype]},
                    {"target": target, "count": 1},
                    4,
                    0,
                    2.5,
                ]
            )
        )
        return Item(tally, ("tally",))
    bad = draw(
        st.sampled_from(
            [{}, {"target": target}, {"type": rtype}, "garbage", "", ":x", "x:", " : ", True, None, [1]]
        )
    )
    return Item(bad, BAD)


books = st.sampled_from(["bk1", "bk2"])


@st.composite
def chapter_items(draw: st.DrawFn) -> Item:
    book, agent, chapter = draw(books), draw(st.sampled_from(["a", "B"])), draw(st.integers(1, 4))
    if draw(st.integers(0, 3)) > 0:
        item: dict[str, Any] = {
            "book": book,
            draw(st.sampled_from(["agent", "author"])): agent,
            "chapter": draw(st.sampled_from([chapter, str(chapter)])),
        }
        if draw(st.booleans()):
            item["target"] = draw(st.integers(1, 4))
        return Item(item, ("chapter", book, agent, chapter))
    bad: Any = draw(
        st.sampled_from(
            [
                {"agent": agent, "chapter": chapter},
                {"book": book, "chapter": chapter},
                {"book": book, "agent": agent},
                {"book": book, "agent": agent, "chapter": "x"},
                {"book": book, "agent": agent, "chapter": 1, "target": 0},
                {"book": book, "agent": agent, "chapter": 1, "target": -1},
                {"book": book, "agent": agent, "chapter": 1, "target": "x"},
                {"book": book, "agent": agent, "chapter": 1, "target": None},
                "bk1",
                3,
                None,
                [],
            ]
        )
    )
    return Item(bad, BAD)


@st.composite
def observation_items(draw: st.DrawFn) -> Item:
    return Item(draw(json_values), ("observation",))


RULES: dict[str, st.SearchStrategy[Item]] = {
    "posts_created": post_items(),
    "posts_updated": post_items(),
    "agents_updated": agent_items(),
    "comments_added": comment_items(),
    "reactions_added": reaction_items(),
    "chapters": chapter_items(),
    "observations": observation_items(),
}
#: Keys no rule reads (kept in the log, counted) and envelope keys (neither merged nor counted).
UNKNOWN_KEYS = ("agents_activated", "discussions_engaged")
META_KEYS = ("_meta", "completed_at")
DEDUPE_KEYS = ("comments_added", "reactions_added", "chapters")
LWW_KEYS = ("posts_created", "posts_updated", "agents_updated")


@dataclass(frozen=True)
class Delta:
    """A generated delta: its key, its payload, and its labelled items (key, position, item)."""

    frame: int
    stream: str
    utc: datetime
    payload: dict[str, Any] = field(hash=False)
    items: tuple[tuple[str, int, Item], ...] = field(hash=False)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[tuple[str, int, Item], ...]]:
    # the last-write-wins keys twice as likely: they are where order could matter
    keys = draw(
        st.lists(st.sampled_from([*RULES, *LWW_KEYS, *UNKNOWN_KEYS, *META_KEYS]), unique=True, max_size=4)
    )
    payload: dict[str, Any] = {}
    labelled: list[tuple[str, int, Item]] = []
    for key in keys:
        if key not in RULES:
            payload[key] = draw(json_values)
            continue
        shape = draw(st.sampled_from(["list", "list", "list", "single", "null"]))
        if shape == "null":
            payload[key] = None
        elif shape == "single":
            item = draw(RULES[key])
            # a single value that is an array would be read as the list of items, and a null
            # as no item at all: those go in a list of one
            payload[key] = [item.value] if item.value is None or isinstance(item.value, list) else item.value
            labelled.append((key, 1, item))
        else:
            items = draw(st.lists(RULES[key], max_size=4))
            payload[key] = [i.value for i in items]
            labelled.extend((key, position, i) for position, i in enumerate(items, 1))
    # hot entities: many deltas touch post 1 and agent Z, so ties have something to decide
    for key, hot in (("posts_updated", {"number": 1}), ("agents_updated", {"id": "Z"})):
        if key not in payload and draw(st.booleans()):
            value = {**hot, "title": draw(titles), "mood": draw(titles)}
            payload[key] = [value]
            labelled.append((key, 1, Item(value, ("post", 1) if key == "posts_updated" else ("agent", "Z"))))
    return payload, tuple(labelled)


def frame_deltas(frame: int, *, max_size: int = 6) -> st.SearchStrategy[list[Delta]]:
    """The deltas of one frame: distinct (stream, utc), utc ties across streams likely."""

    @st.composite
    def one(draw: st.DrawFn) -> Delta:
        stream = draw(st.sampled_from(STREAMS))
        utc = T0 + timedelta(seconds=frame, microseconds=draw(st.integers(0, 2)))
        payload, items = draw(payloads())
        return Delta(frame, stream, utc, payload, items)

    return st.lists(one(), min_size=2, max_size=max_size, unique_by=lambda d: (d.stream, d.utc))


# -- writing, merging, reading back ---------------------------------------------------


async def insert_one_by_one(pool: asyncpg.Pool, world: str, deltas: Sequence[Delta]) -> list[str]:
    statuses: list[str] = []
    for d in deltas:
        async with DeltaClient.connect("", stream_id=d.stream, world=world, pool=pool) as dc:
            statuses.append((await dc.insert_delta(d.frame, d.payload, utc=d.utc)).status)
    return statuses


async def insert_runs(pool: asyncpg.Pool, world: str, deltas: Sequence[Delta]) -> list[str]:
    """Insert in order; consecutive deltas of one stream go in one ``insert_deltas`` batch."""
    statuses: list[str] = []
    for _stream, run in itertools.groupby(deltas, key=lambda d: d.stream):
        batch = list(run)
        async with DeltaClient.connect("", stream_id=batch[0].stream, world=world, pool=pool) as dc:
            if len(batch) == 1:
                statuses.append(
                    (await dc.insert_delta(batch[0].frame, batch[0].payload, utc=batch[0].utc)).status
                )
            else:
                receipts = await dc.insert_deltas(
                    [{"frame": d.frame, "payload": d.payload, "utc": d.utc} for d in batch]
                )
                statuses.extend(r.status for r in receipts)
    return statuses


async def close(pool: asyncpg.Pool, world: str, frames: Sequence[int]) -> None:
    async with DeltaClient.connect("", stream_id="closer", world=world, pool=pool) as dc:
        for frame in frames:
            assert await dc.close_frame(frame) in ("closed", "merged")


async def merge(dsn: str, world: str) -> list[int]:
    """Merge everything ready with a fresh Merger; the merged frames."""
    merger = Merger(dsn, world)
    try:
        results = await merger.run_until_idle()
        assert merger.get_stats()["is_leader"]
        return [r.frame for r in results]
    finally:
        await merger.aclose()


async def world_state(pool: asyncpg.Pool, world: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a merge produces for ``world`` (no ids, no times, no world name)."""
    async with pool.acquire() as conn:
        versions = await conn.fetch(
            "SELECT kind, ekey, data::text, first_frame, valid_from, valid_to"
            " FROM dreamcatcher.entity_versions"
            ' WHERE world = $1 ORDER BY kind, ekey COLLATE "C", valid_from',
            world,
        )
        quarantine = await conn.fetch(
            "SELECT frame, stream_id, utc, key, position, reason, item::text, merged_in"
            " FROM dreamcatcher.quarantine"
            ' WHERE world = $1 ORDER BY frame, utc, stream_id COLLATE "C", key, position',
            world,
        )
        frames = await conn.fetch(
            "SELECT frame, status, delta_count, state_hash, stats::text FROM dreamcatcher.frames"
            " WHERE world = $1 ORDER BY frame",
            world,
        )
    return {
        "versions": [tuple(r) for r in versions],
        "quarantine": [tuple(r) for r in quarantine],
        "frames": [tuple(r) for r in frames],
    }
