"""asof: ``posts_at(world, f)`` and a one-post lookup at early, middle and late frames.

The history is written straight into ``dreamcatcher.entity_versions`` by COPY,
in the shape ``merge_frame`` produces (kind ``post``, ekey the number as text,
``data`` the merged post, one version per change: the previous version's
``valid_to`` is the frame of the next), plus a merged ``frame_log`` row per
frame. Merging thousands of frames one by one would measure the merge again
and take minutes. The number of live posts is constant (all created at frame
0, then updated), so every query returns the same number of posts and only
the length of the history differs: late/early should stay near 1.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import asyncpg
import orjson

from bench.context import Context, median, now
from bench.report import Row, Target

WORLD = "asof"
VERSION_COLUMNS = ["world", "kind", "ekey", "data", "first_frame", "valid_from", "valid_to"]
ALL_POSTS = "SELECT * FROM dreamcatcher.posts_at($1, $2)"
ONE_POST = "SELECT * FROM dreamcatcher.posts_at($1, $2) WHERE number = $3"
CURRENT_POSTS = "SELECT * FROM dreamcatcher.posts WHERE world = $1"


def _post(number: int, frame: int) -> str:
    return orjson.dumps(
        {
            "number": number,
            "title": f"post {number} as of frame {frame}",
            "channel": "general",
            "author": f"agent-{number % 100:02d}",
        }
    ).decode()


def versions(frames: int, posts: int, updates: int) -> Iterator[tuple[Any, ...]]:
    """Every version row of the history: posts 1..P at frame 0, ``updates`` of them per frame after."""
    rng = random.Random(6)
    since = dict.fromkeys(range(1, posts + 1), 0)
    for f in range(1, frames):
        for number in rng.sample(range(1, posts + 1), min(updates, posts)):
            yield (WORLD, "post", str(number), _post(number, since[number]), 0, since[number], f)
            since[number] = f
    for number, start in since.items():
        yield (WORLD, "post", str(number), _post(number, start), 0, start, None)


async def _build(ctx: Context, conn: asyncpg.Connection) -> None:
    size = ctx.size
    ctx.say(f"asof: writing {size.asof_frames:,} frames of history (COPY into entity_versions)")
    await conn.execute(
        "INSERT INTO dreamcatcher.worlds (world, horizon) VALUES ($1, $2)", WORLD, size.asof_frames - 1
    )
    await conn.copy_records_to_table(
        "entity_versions",
        schema_name="dreamcatcher",
        columns=VERSION_COLUMNS,
        records=versions(size.asof_frames, size.asof_posts, size.asof_updates_per_frame),
    )
    await conn.execute(
        "INSERT INTO dreamcatcher.frame_log (world, frame, status, closed_at, merged_at, delta_count)"
        " SELECT $1, f, 'merged', clock_timestamp(), clock_timestamp(), 0 FROM generate_series(0, $2 - 1) f",
        WORLD,
        size.asof_frames,
    )
    await conn.execute("ANALYZE dreamcatcher.entity_versions")
    await conn.execute("ANALYZE dreamcatcher.frame_log")


async def _time(
    conn: asyncpg.Connection, reps: int, query: str, points: dict[str, tuple[Any, ...]]
) -> dict[str, tuple[float, int]]:
    """Per point: median milliseconds of ``reps`` runs of ``query`` with its arguments, and the
    row count. Two untimed runs of each first; then the points take turns, the order turning
    each repetition, so neither the early frame (the ceiling) nor the late one always runs on
    the colder cache."""
    rows: dict[str, int] = {}
    for label, args in points.items():
        for _ in range(2):
            rows[label] = len(await conn.fetch(query, *args))
    samples: dict[str, list[float]] = {label: [] for label in points}
    labels = list(points)
    for rep in range(reps):
        turn = rep % len(labels)
        for label in labels[turn:] + labels[:turn]:
            started = now()
            await conn.fetch(query, *points[label])
            samples[label].append(now() - started)
    return {label: (median(samples[label]) * 1000, rows[label]) for label in points}


async def bench_asof(ctx: Context) -> list[Row]:
    size = ctx.size
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await _build(ctx, conn)
        points = {"early": 1, "middle": size.asof_frames // 2, "late": size.asof_frames - 1}
        post = size.asof_posts // 2
        every = await _time(conn, size.asof_reps, ALL_POSTS, {k: (WORLD, f) for k, f in points.items()})
        one = await _time(conn, size.asof_reps, ONE_POST, {k: (WORLD, f, post) for k, f in points.items()})
        all_ms = {label: ms for label, (ms, _) in every.items()}
        counts = {label: n for label, (_, n) in every.items()}
        one_ms = {label: ms for label, (ms, _) in one.items()}
        current_ms = (await _time(conn, size.asof_reps, CURRENT_POSTS, {"now": (WORLD,)}))["now"][0]
        versions_count = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.entity_versions WHERE world = $1", WORLD
        )
    finally:
        await conn.close()
    ctx.say(f"asof: posts_at early {all_ms['early']:.2f} ms, late {all_ms['late']:.2f} ms")
    base = {"frames": size.asof_frames, "versions": versions_count, "posts": counts, "built_by": "COPY"}
    return [
        Row(
            "asof_posts",
            all_ms["late"],
            all_ms["early"],
            "ms",
            Target("<=", 1.5),
            note="posts_at at the last frame; ceiling: at frame 1",
            detail={**base, **{f"{k}_ms": v for k, v in all_ms.items()}, "current_view_ms": current_ms},
        ),
        Row(
            "asof_post_lookup",
            one_ms["late"],
            one_ms["early"],
            "ms",
            Target("<=", 1.5),
            note="posts_at(...) WHERE number = X, last frame; ceiling: at frame 1",
            detail={**base, **{f"{k}_ms": v for k, v in one_ms.items()}},
        ),
    ]
