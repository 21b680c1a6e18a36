"""Fuzzing the database's own edge: the SQL functions a worker may call and a COPY into the log,
with no client in front (DESIGN invariant 9: the database refuses what the merge could not read).

Every call either is refused with one of a few SQLSTATEs (a value out of range, a check of the
log, a frame too far ahead, a batch too large) or is acknowledged; and every acknowledged delta
is then merged, whatever it holds: extreme timestamps, frames, numbers, strings, unicode, nesting.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import example, given
from hypothesis import strategies as st

from dreamcatcher_pg import configure_world
from dreamcatcher_pg.validation import MAX_FRAME
from tests.support.strategies import RULES, db_settings, merge, new_world

#: What the database may answer instead of accepting: out of range (frame, utc), a check of the
#: log (size, depth, range), a frame too far ahead, a batch too large, text jsonb cannot hold
#: (\u0000), a malformed argument.
REFUSALS = {"22003", "22008", "23514", "DCF01", "54000", "22P05", "22023", "22P02"}

frames = st.one_of(
    st.integers(0, 5),
    st.sampled_from([MAX_FRAME, MAX_FRAME - 1, MAX_FRAME + 1, 2**62, 2**63 - 1, -1]),
    st.integers(0, MAX_FRAME),
)
#: Writer clocks as text, so that they can lie outside what Python (and asyncpg) can hold.
utcs = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1, 0, 0, 1), max_value=datetime(9999, 12, 31, 23, 59, 58)).map(
        lambda d: d.replace(tzinfo=UTC).isoformat()
    ),
    st.sampled_from(
        [
            "0001-01-01 00:00:00+00",
            "0001-01-01 00:00:00+14",
            "9999-12-31 23:59:59.999999+00",
            "9999-12-31 23:59:59-14",
            "10000-01-01 00:00:00+00",
            "294270-01-01 00:00:00+00",
            "4713-01-01 00:00:00+00 BC",
            "1970-01-01 00:00:00+00",
            "2038-01-19 03:14:08+00",
        ]
    ),
)
numbers = st.one_of(
    st.integers(-(10**30), 10**30),
    st.sampled_from(
        [2**63, -(2**63) - 1, 10**300, 1e308, -1e308, 5e-324, 0.1, -0.0, 1e-7, 123456789012345678]
    ),
    st.floats(allow_nan=False, allow_infinity=False),
)
strings = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(
        ["", " ", "\u0000", "a\u0000b", "\u202e", "👍🏽", "e\u0301", "'); DROP TABLE x; --", "x" * 3000]
    ),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, strings)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(strings, children, max_size=4),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    doc: Any = 1
    for _ in range(depth):
        doc = [doc]
    return doc


payloads = st.dictionaries(
    st.sampled_from([*RULES, "observations", "other", "_meta", "utc", "frame"]),
    st.one_of(values, st.lists(values, max_size=5), st.integers(60, 66).map(nested)),
    max_size=4,
)
calls = st.lists(
    st.tuples(
        st.sampled_from(["one", "batch", "copy"]),
        st.lists(st.tuples(frames, utcs, payloads), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=4,
)


async def _call(
    conn: asyncpg.Connection, world: str, how: str, deltas: list[tuple[int, str, Any]]
) -> list[str]:
    """Append ``deltas`` one way; the statuses, or raise the database's refusal."""
    texts = [json.dumps(p, ensure_ascii=False) for _, _, p in deltas]
    if how == "one":
        frame, utc, _ = deltas[0]
        return [
            await conn.fetchval(
                "SELECT dreamcatcher.append_delta($1, 's', $2, $3::text::timestamptz, $4::text::jsonb)",
                world,
                frame,
                utc,
                texts[0],
            )
        ]
    if how == "batch":
        return list(
            await conn.fetchval(
                "SELECT dreamcatcher.append_deltas($1, 's', $2::bigint[], $3::text[]::timestamptz[],"
                " $4::text[]::jsonb[])",
                world,
                [f for f, _, _ in deltas],
                [u for _, u, _ in deltas],
                texts,
            )
        )
    async with conn.transaction():  # the COPY path, as the client takes it, but with raw values
        await conn.fetchval(
            "SELECT dreamcatcher.copy_begin($1, 's', $2::bigint[], $3::text[]::timestamptz[])",
            world,
            [f for f, _, _ in deltas],
            [u for _, u, _ in deltas],
        )
        rows = "".join(
            f"{_copy_text(world)}\t{f}\ts\t{u}\t{_copy_text(t)}\n"
            for (f, u, _), t in zip(deltas, texts, strict=True)
        )
        await conn.copy_to_table(
            "delta_log",
            schema_name="dreamcatcher",
            source=io.BytesIO(rows.encode()),
            columns=["world", "frame", "stream_id", "utc", "payload"],
        )
    return ["stored"] * len(deltas)


def _copy_text(value: str) -> str:
    """A value in COPY's text format (JSON text holds no raw tab or newline, but backslashes)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


@given(calls=calls)
# a key stored by one call, then sent again by a raw COPY: refused by the primary key
@example(
    calls=[("one", [(0, "2000-01-01T00:00:00+00:00", {})]), ("copy", [(0, "2000-01-01T00:00:00+00:00", {})])]
)
@db_settings(40)
async def test_whatever_a_caller_sends_the_log_holds_only_what_merges(
    dreamcatcher_dsn: str, calls: Any
) -> None:
    world = new_world("sqlfuzz")
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        await configure_world(conn, world, max_frame_ahead=MAX_FRAME)  # (frames may jump anywhere here)
        acknowledged = 0
        for how, deltas in calls:
            # distinct keys per call (a repeated key is a duplicate or a conflict, not the point here)
            seen: set[tuple[int, str]] = set()
            deltas = [d for d in deltas if (d[0], d[1]) not in seen and not seen.add((d[0], d[1]))]  # type: ignore[func-returns-value]
            try:
                statuses = await _call(conn, world, how, deltas)
            except asyncpg.PostgresError as exc:
                # a raw COPY of a key an earlier call stored is refused by the log's primary key
                # (the client then asks append_deltas); every other path answers duplicate/conflict
                refusals = REFUSALS | {"23505"} if how == "copy" else REFUSALS
                assert exc.sqlstate in refusals, f"{how}: unexpected {type(exc).__name__}: {exc}"
                continue
            assert set(statuses) <= {"stored", "duplicate", "conflict"}, statuses
            acknowledged += statuses.count("stored")
        stored = await conn.fetch("SELECT DISTINCT frame FROM dreamcatcher.delta_log WHERE world = $1", world)
        assert (
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", world)
            == acknowledged
        )
        for row in stored:
            await conn.fetchval("SELECT dreamcatcher.close_frame($1, $2)", world, row["frame"])
    finally:
        await conn.close()
    merged = await merge(dreamcatcher_dsn, world)
    assert sorted(merged) == sorted(r["frame"] for r in stored)
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        counted = await conn.fetchval(
            "SELECT coalesce(sum(delta_count), 0) FROM dreamcatcher.frames"
            " WHERE world = $1 AND status = 'merged'",
            world,
        )
        assert counted == acknowledged
    finally:
        await conn.close()


async def test_the_edges_of_every_range_are_accepted_and_merge(dreamcatcher_dsn: str) -> None:
    world = new_world("edges")
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        await configure_world(conn, world, max_frame_ahead=MAX_FRAME)
        first = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
        last = datetime(9999, 12, 31, 23, 59, 58, tzinfo=UTC)
        big = json.dumps(
            {"observations": [10**300, -1e308, 5e-324, nested(61)], "posts_created": [{"number": 10**30}]}
        )
        for frame, utc in ((0, first), (MAX_FRAME, last), (0, last), (MAX_FRAME, first + timedelta(days=1))):
            status = await conn.fetchval(
                "SELECT dreamcatcher.append_delta($1, 's', $2, $3, $4::text::jsonb)", world, frame, utc, big
            )
            assert status == "stored"
        for frame in (0, MAX_FRAME):
            await conn.fetchval("SELECT dreamcatcher.close_frame($1, $2)", world, frame)
    finally:
        await conn.close()
    assert await merge(dreamcatcher_dsn, world) == [0, MAX_FRAME]
