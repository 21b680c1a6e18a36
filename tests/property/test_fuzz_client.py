"""Hostile input through DeltaClient (issue 3, item 5).

Whatever a worker hands to ``insert_delta``/``insert_deltas`` and the other
client calls gets a receipt or a typed error (a ``DreamcatcherError``; never a
raw driver, pydantic or Python error), an invalid delta writes nothing, the
merger never crashes on what was accepted, and the rest of the frame merges.

Hypothesis explores wrong types, non-JSON values, NUL characters, lone
surrogates, deep and wide values, odd frames and clocks; the named nasties are
spelled out below as explicit cases.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamcatcher_pg import (
    DeltaClient,
    DeltaConflictError,
    InvalidDeltaError,
    Receipt,
)
from dreamcatcher_pg.validation import MAX_DEPTH, MAX_FRAME
from tests.support.strategies import T0, close, db_settings, merge, new_world

#: The client's size limit in these tests (``DeltaClient.connect(max_payload_bytes=...)``).
LIMIT = 4096

SQLISH = [
    "'); DROP TABLE dreamcatcher.delta_log; --",
    "$$; DELETE FROM dreamcatcher.entity_versions; $$",
    "$1",
    "\\",
    "\\\\'",
    '"; --',
    "%s%s%n",
    "{}",
    "null",
]
UNICODE = [
    "\u202eevil\u202c",
    "\u200f",
    "👍🏽",
    "👨‍👩‍👧",
    "e\u0301",
    "é",
    "\ufeff",
    "\uffff",
    "\U0010ffff",
    "Ω≈ç√",
]
SURROGATES = ["\ud800", "x\udcffy", "\udfff"]
NUL = ["\x00", "a\x00b"]

odd_text = st.one_of(
    st.text(max_size=12), st.sampled_from([*SQLISH, *UNICODE, *SURROGATES, *NUL, "", " ", "a" * 300])
)
wild_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),  # NaN and infinities included
    odd_text,
    st.binary(max_size=4),
    st.decimals(allow_nan=True, places=2),
    st.datetimes(),
    st.frozensets(st.integers(0, 3), max_size=2),
    st.builds(object),
)
wild_values = st.recursive(
    wild_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.one_of(odd_text, st.integers(0, 3), st.none()), children, max_size=4)
    ),
    max_leaves=12,
)
wild_payloads = st.one_of(
    st.dictionaries(
        st.one_of(
            st.sampled_from(
                [
                    "posts_created",
                    "comments_added",
                    "reactions_added",
                    "chapters",
                    "observations",
                    "agents_updated",
                    "frame",
                    "stream_id",
                ]
            ),
            odd_text,
        ),
        wild_values,
        max_size=4,
    ),
    wild_values,
)
wild_frames = st.one_of(
    st.integers(0, 3),
    st.integers(-(2**70), 2**70),
    st.sampled_from([MAX_FRAME, MAX_FRAME + 1, -1, 2**64]),
    st.floats(),
    st.booleans(),
    st.none(),
    odd_text,
    st.lists(st.integers(0, 3), max_size=2),
)
edge_zones = st.sampled_from([None, UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=14))])
wild_utcs = st.one_of(
    st.none(),
    st.datetimes(timezones=edge_zones),
    st.integers(-(2**40), 2**40),
    st.floats(),
    odd_text,
    st.sampled_from(["2030-01-01T00:00:00Z", "2030-01-01", "yesterday", "0001-01-01T00:00:00+14:00"]),
)


async def log_rows(pool: asyncpg.Pool, world: str) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", world))


async def stored_equals(pool: asyncpg.Pool, receipt: Receipt, payload: Mapping[str, Any]) -> bool:
    """The log holds exactly ``payload`` under the receipt's key."""
    return bool(
        await pool.fetchval(
            "SELECT payload = $5::jsonb FROM dreamcatcher.delta_log"
            " WHERE world = $1 AND frame = $2 AND stream_id = $3 AND utc = $4",
            receipt.world,
            receipt.frame,
            receipt.stream_id,
            receipt.utc,
            orjson.dumps(dict(payload)).decode(),
        )
    )


GOOD_POST = 424242
GOOD: dict[str, Any] = {
    "posts_created": [{"number": GOOD_POST, "title": "survivor"}],
    "comments_added": [{"id": "c-ok", "discussion": GOOD_POST}],
}


async def good_survived(pool: asyncpg.Pool, world: str) -> None:
    """The well-formed delta of the frame was merged next to whatever else was accepted."""
    title = await pool.fetchval(
        "SELECT data ->> 'title' FROM dreamcatcher.posts WHERE world = $1 AND number = $2", world, GOOD_POST
    )
    assert title == "survivor"
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM dreamcatcher.comments WHERE world = $1 AND id = 'c-ok'", world
        )
        == 1
    )


# -- hypothesis ------------------------------------------------------------------------


@db_settings(40)
@given(attempts=st.lists(st.tuples(wild_frames, wild_payloads, wild_utcs), min_size=1, max_size=5))
async def test_fuzzed_inserts_get_a_receipt_or_a_typed_error_and_the_frame_merges(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, attempts: list[tuple[Any, Any, Any]]
) -> None:
    world = new_world("fuzz")
    frames = {1}
    async with DeltaClient.connect("", stream_id="fz", world=world, pool=pool, max_payload_bytes=LIMIT) as dc:
        assert (await dc.insert_delta(1, GOOD, utc=T0)).status == "stored"
        for frame, payload, utc in attempts:
            before = await log_rows(pool, world)
            try:
                receipt = await dc.insert_delta(frame, payload, utc=utc)
            except (InvalidDeltaError, DeltaConflictError):
                assert await log_rows(pool, world) == before  # refused: nothing written
                continue
            assert receipt.status in ("stored", "duplicate")
            assert await stored_equals(pool, receipt, payload)
            frames.add(receipt.frame)
        # the batch path: the same attempts in one batch are all refused, or all judged
        items = [{"frame": f, "payload": p, "utc": u} for f, p, u in attempts]
        before = await log_rows(pool, world)
        try:
            receipts = await dc.insert_deltas(items)
        except InvalidDeltaError:
            assert await log_rows(pool, world) == before
        except DeltaConflictError as exc:  # same key as an earlier attempt, another payload
            frames.update(r.frame for r in getattr(exc, "receipts", []))  # the others were judged
        else:
            frames.update(r.frame for r in receipts)
    await close(pool, world, sorted(frames))
    merged = await merge(dreamcatcher_dsn, world)  # must not raise
    assert set(merged) == frames
    await good_survived(pool, world)


@db_settings(30)
@given(stream=odd_text, world_name=odd_text)
async def test_fuzzed_identities_are_refused_at_the_edge_or_work_end_to_end(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, stream: str, world_name: str
) -> None:
    world = f"{world_name}{new_world('')}"  # unique per example, keeps the odd characters
    try:
        async with DeltaClient.connect("", stream_id=stream, world=world, pool=pool) as dc:
            receipt = await dc.insert_delta(1, {**GOOD, "observations": [{"by": stream}]}, utc=T0)
            assert (receipt.world, receipt.stream_id) == (world, stream)
            assert await dc.close_frame(1) == "closed"
    except InvalidDeltaError:
        return  # empty, too long, NUL, surrogates: refused before any I/O
    assert await merge(dreamcatcher_dsn, world) == [1]
    await good_survived(pool, world)
    got = await pool.fetchval("SELECT stream_id FROM dreamcatcher.observations WHERE world = $1", world)
    assert got == stream


# -- the named nasties ---------------------------------------------------------------------


def nested(depth: int) -> Any:
    """A value whose deepest element sits ``depth`` levels below the payload (built without recursion)."""
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return value


INVALID: list[tuple[str, Any, Any, Any]] = [
    # (name, frame, payload, utc): each one must be an InvalidDeltaError, nothing written
    ("payload-list", 1, [], None),
    ("payload-str", 1, "{}", None),
    ("payload-int", 1, 1, None),
    ("payload-none", 1, None, None),
    ("payload-json-text", 1, '{"posts_created": [1]}', None),
    ("payload-bytes", 1, b'{"posts_created": [1]}', None),
    ("frame-str", "1", {}, None),
    ("frame-float", 1.0, {}, None),
    ("frame-bool", True, {}, None),
    ("frame-none", None, {}, None),
    ("frame-list", [1], {}, None),
    ("frame-negative", -1, {}, None),
    ("frame-most-negative", -(2**63), {}, None),
    ("frame-over-bigint", MAX_FRAME + 1, {}, None),
    ("frame-enormous", 10**100, {}, None),
    ("utc-words", 1, {}, "yesterday"),
    ("utc-nan", 1, {}, float("nan")),
    ("utc-object", 1, {}, object()),
    ("value-object", 1, {"observations": [object()]}, None),
    ("value-bytes", 1, {"observations": [b"\x00\xff"]}, None),
    ("value-set", 1, {"observations": [{1, 2}]}, None),
    ("value-nan", 1, {"observations": [float("nan")]}, None),
    ("value-inf", 1, {"observations": [float("-inf")]}, None),
    ("value-decimal", 1, {"observations": [Decimal("1.5")]}, None),
    ("value-datetime", 1, {"observations": [datetime.now(UTC)]}, None),
    ("value-int-over-64-bits", 1, {"observations": [2**64]}, None),
    ("key-int", 1, {1: "x"}, None),
    ("key-nested-int", 1, {"observations": [{1: "x"}]}, None),
    ("nul-in-value", 1, {"posts_created": [{"number": 1, "title": "a\x00b"}]}, None),
    ("nul-in-key", 1, {"observations": [{"a\x00": 1}]}, None),
    ("nul-alone", 1, {"x": "\x00"}, None),
    ("surrogate-in-value", 1, {"comments_added": [{"id": "\ud800"}]}, None),
    ("surrogate-in-key", 1, {"\udcff": 1}, None),
    ("deep-65", 1, {"observations": nested(MAX_DEPTH)}, None),
    ("deep-100000", 1, {"observations": nested(100_000)}, None),
    ("huge-string", 1, {"observations": ["x" * LIMIT]}, None),
    ("huge-array", 1, {"observations": list(range(LIMIT))}, None),
    ("huge-unknown-key", 1, {"blob": "é" * LIMIT}, None),
    ("payload-frame-disagrees", 1, {"frame": 2}, None),
    ("payload-frame-as-text", 1, {"frame": "1"}, None),
    ("payload-stream-disagrees", 1, {"stream_id": "someone-else"}, None),
]


@pytest.mark.parametrize(("name", "frame", "payload", "utc"), INVALID, ids=[c[0] for c in INVALID])
async def test_each_named_nasty_is_an_invalid_delta_error_and_writes_nothing(
    dreamcatcher_dsn: str, name: str, frame: Any, payload: Any, utc: Any
) -> None:
    world = new_world(name)
    async with DeltaClient.connect(
        dreamcatcher_dsn, stream_id="s", world=world, max_payload_bytes=LIMIT
    ) as dc:
        with pytest.raises(InvalidDeltaError) as caught:
            await dc.insert_delta(frame, payload, utc=utc)
        assert str(caught.value)
        # the batch path: the same item, between two good ones, fails the whole batch
        with pytest.raises(InvalidDeltaError):
            await dc.insert_deltas(
                [
                    {"frame": 1, "payload": GOOD, "utc": T0},
                    {"frame": frame, "payload": payload, "utc": utc},
                    {"frame": 1, "payload": {}, "utc": T0 + timedelta(seconds=1)},
                ]
            )
        conn = await asyncpg.connect(dreamcatcher_dsn)
        try:
            assert (
                await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", world)
                == 0
            )
            assert (
                await conn.fetchval("SELECT count(*) FROM dreamcatcher.frame_log WHERE world = $1", world)
                == 0
            )
        finally:
            await conn.close()


async def test_batch_items_with_missing_or_unknown_keys_are_refused(dreamcatcher_dsn: str) -> None:
    world = new_world("batch-keys")
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=world) as dc:
        item: Any
        for item in (
            {"payload": {}},
            {"frame": 1},
            {"frame": 1, "payload": {}, "stream_id": "x"},
            [1, {}],
            None,
        ):
            with pytest.raises(InvalidDeltaError):
                await dc.insert_deltas([{"frame": 1, "payload": GOOD, "utc": T0}, item])
        assert await dc.insert_deltas([]) == []
        assert await dc.frame_status(1) is None  # nothing written, no frame opened


async def test_the_size_limit_is_configurable_and_exact(dreamcatcher_dsn: str) -> None:
    world = new_world("limit")
    payload = {"observations": ["x" * 20]}
    size = len(orjson.dumps(payload))
    async with DeltaClient.connect(
        dreamcatcher_dsn, stream_id="s", world=world, max_payload_bytes=size
    ) as dc:
        assert (await dc.insert_delta(1, payload, utc=T0)).status == "stored"
        with pytest.raises(InvalidDeltaError) as caught:
            await dc.insert_delta(1, {"observations": ["x" * 21]}, utc=T0 + timedelta(seconds=1))
        assert caught.value.field == "payload"
        with pytest.raises(InvalidDeltaError):
            await dc.insert_deltas([{"frame": 1, "payload": {"observations": ["x" * 21]}}])
    async with DeltaClient.connect(
        dreamcatcher_dsn, stream_id="s", world=world, max_payload_bytes=size - 1
    ) as dc:
        with pytest.raises(InvalidDeltaError):
            await dc.insert_delta(1, payload, utc=T0 + timedelta(seconds=2))


async def test_strange_but_valid_content_is_stored_verbatim_and_merged(
    dreamcatcher_dsn: str, pool: asyncpg.Pool
) -> None:
    """SQL-looking text, odd unicode, deep-but-allowed nesting, the largest frame: all just data."""
    world = "w'); DROP TABLE dreamcatcher.delta_log; -- $$ \u202e👍🏽"
    stream = "s$$\\'\"; --"
    payload = {
        **GOOD,
        "posts_updated": [{"number": 2, "title": t} for t in SQLISH],  # last write wins: the last one
        "comments_added": [
            *GOOD["comments_added"],
            *({"id": t, "discussion": 2, "body": t} for t in [*SQLISH, *UNICODE]),
        ],
        "reactions_added": [f"{t}:+1" for t in UNICODE] + [{"target": "2", "type": t} for t in SQLISH],
        "agents_updated": [{"id": "e\u0301"}, {"id": "é"}],  # not normalised: two agents
        "observations": [nested(MAX_DEPTH - 2), {"k": "\\u0000 is six characters, not a NUL"}],
        "'); DROP TABLE x; --": ["an unknown key is kept, counted, not merged"],
        "_meta": {"timestamp": "not a date"},
    }
    size_limit = len(orjson.dumps(payload))
    async with DeltaClient.connect(
        "", stream_id=stream, world=world, pool=pool, max_payload_bytes=size_limit
    ) as dc:
        await dc.configure_world(max_frame_ahead=MAX_FRAME)  # (a world whose frames may jump that far)
        receipt = await dc.insert_delta(1, payload, utc=datetime(1, 1, 2, tzinfo=UTC))  # early in year 1
        assert receipt.status == "stored"
        assert await stored_equals(pool, receipt, payload)
        top = await dc.insert_delta(MAX_FRAME, {"posts_created": [3]}, utc=datetime(9999, 12, 30, tzinfo=UTC))
        assert top.status == "stored"
    await close(pool, world, [1, MAX_FRAME])
    assert await merge(dreamcatcher_dsn, world) == [1, MAX_FRAME]
    await good_survived(pool, world)
    assert (
        await pool.fetchval(
            "SELECT data ->> 'title' FROM dreamcatcher.posts WHERE world = $1 AND number = 2", world
        )
        == SQLISH[-1]
    )
    ids = {r[0] for r in await pool.fetch("SELECT id FROM dreamcatcher.comments WHERE world = $1", world)}
    assert ids == {"c-ok", *SQLISH, *UNICODE}
    targets = {
        r[0] for r in await pool.fetch("SELECT target FROM dreamcatcher.reactions WHERE world = $1", world)
    }
    assert targets == {*UNICODE, "2"}
    agents = {r[0] for r in await pool.fetch("SELECT id FROM dreamcatcher.agents WHERE world = $1", world)}
    assert agents == {"e\u0301", "é"}
    stats = orjson.loads(
        await pool.fetchval(
            "SELECT stats::text FROM dreamcatcher.frames WHERE world = $1 AND frame = 1", world
        )
    )
    assert stats["unmerged_keys"] == {"'); DROP TABLE x; --": 1}
    assert (
        await pool.fetchval("SELECT count(*) FROM dreamcatcher.posts WHERE world = $1 AND number = 3", world)
        == 1
    )
    assert await pool.fetchval("SELECT to_regclass('dreamcatcher.delta_log') IS NOT NULL")


async def test_frame_arguments_of_the_other_calls_are_checked_at_the_edge(dreamcatcher_dsn: str) -> None:
    """close_frame, frame_status, wait_merged: a bad frame is an InvalidDeltaError, not a driver error."""
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=new_world("frames")) as dc:
        frames: tuple[Any, ...] = (-1, MAX_FRAME + 1, 2**64, "1", 1.5, None, True)
        for frame in frames:
            with pytest.raises(InvalidDeltaError):
                await dc.close_frame(frame)
            with pytest.raises(InvalidDeltaError):
                await dc.frame_status(frame)
            with pytest.raises(InvalidDeltaError):
                await dc.wait_merged(frame, timeout=0.1)


async def test_a_clock_at_the_edge_of_the_calendar_is_an_invalid_delta_error(dreamcatcher_dsn: str) -> None:
    """A writer clock that exists in its own zone but not in UTC (year 1 at +14:00, 9999-12-31 at -14:00)."""
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=new_world("calendar")) as dc:
        for utc in (
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
            datetime(9999, 12, 31, 23, 0, tzinfo=timezone(-timedelta(hours=14))),
            "0001-01-01T00:00:00+14:00",
        ):
            with pytest.raises(InvalidDeltaError) as caught:
                await dc.insert_delta(1, {}, utc=utc)
            assert caught.value.field == "utc"


@pytest.mark.parametrize(
    "item",
    [
        {"comments_added": [{"id": "ID"}]},
        {"comments_added": [{"discussion": 1, "body": "ID"}]},  # keyed by content: an md5, short
        {"reactions_added": [{"target": "ID", "type": "+1"}]},
        {"reactions_added": ["+1 on ID"]},
        {"chapters": [{"book": "ID", "agent": "a", "chapter": 1}]},
        {"agents_updated": [{"id": "ID"}]},
    ],
    ids=["comment-id", "comment-content", "reaction-object", "reaction-string", "chapter-book", "agent-id"],
)
async def test_an_entity_key_too_long_for_an_index_does_not_stop_the_merge(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, item: dict[str, Any]
) -> None:
    """An incompressible 3 kB key: the item is quarantined or stored, the frame merges, the world goes on.

    A btree entry holds at most ~2.7 kB; a key longer than that must not make
    the merge of its frame fail (forever: every later frame waits for it).
    """
    world = new_world("long-key")
    key = secrets.token_hex(1500)  # 3000 characters that do not compress
    payload = orjson.loads(orjson.dumps(item).replace(b"ID", key.encode()))
    async with DeltaClient.connect("", stream_id="s", world=world, pool=pool) as dc:
        assert (await dc.insert_delta(1, payload, utc=T0)).status == "stored"
        assert (await dc.insert_delta(1, GOOD, utc=T0 + timedelta(seconds=1))).status == "stored"
        assert (await dc.insert_delta(2, {"posts_created": [2]}, utc=T0)).status == "stored"
    await close(pool, world, [1, 2])
    assert await merge(dreamcatcher_dsn, world) == [1, 2]
    await good_survived(pool, world)


@pytest.mark.parametrize(
    "utc", [datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)], ids=["min", "max"]
)
async def test_the_first_and_last_instant_python_knows_do_not_stop_the_merge(
    dreamcatcher_dsn: str, pool: asyncpg.Pool, utc: datetime
) -> None:
    """asyncpg sends datetime.min/max as -infinity/infinity; such a clock must be refused or merge.

    Either outcome is fine: an InvalidDeltaError at the edge, or a delta that is stored and
    merged with the rest of its frame. What must not happen is a stored delta whose merge
    fails (forever: every later frame of the world waits for it).
    """
    world = new_world("infinity")
    async with DeltaClient.connect("", stream_id="s", world=world, pool=pool) as dc:
        try:
            await dc.insert_delta(1, {"observations": [{"at": "the edge"}], "posts_created": [7]}, utc=utc)
        except InvalidDeltaError as exc:
            assert exc.field == "utc"
        assert (await dc.insert_delta(1, GOOD, utc=T0)).status == "stored"
        assert (await dc.insert_delta(2, {"posts_created": [2]}, utc=T0)).status == "stored"
    await close(pool, world, [1, 2])
    assert await merge(dreamcatcher_dsn, world) == [1, 2]
    await good_survived(pool, world)
