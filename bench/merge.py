"""merge_throughput and merge_flatness: ``merge_frame`` vs a hand-written set-based merge.

Set-up is fast and not timed: each world gets a small frame 1 (the existing
state) and frame 2 of N deltas, written with COPY straight into
``dreamcatcher.delta_log`` plus closed ``frame_log`` rows. Frame 1 is merged
first, untimed, on both sides; then frame 2 is timed: one transaction, commit
included. The ceiling merges the same log rows into plain tables: posts
``INSERT … SELECT DISTINCT ON (number) … ON CONFLICT DO UPDATE`` (last write
wins), comments ``INSERT … ON CONFLICT DO NOTHING`` (dedupe).

Both sides run on one dedicated connection with their statements prepared before
the timer starts (so neither pays a Parse round trip inside it), each after the
same warm read of the frame and a CHECKPOINT. The ceiling runs twice, once before
ours and once after, each time into state of its own (the raw tables keyed by a
target world of their own, with frame 1 merged into it), and its faster run is
kept, so ours never runs on a warmer or cooler server than the ceiling it is
compared with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from bench.context import Context, now
from bench.payloads import deltas
from bench.report import Row, Target

STREAMS = 16
LOG_COLUMNS = ["world", "frame", "stream_id", "utc", "payload"]

RAW_TABLES = """
CREATE TABLE IF NOT EXISTS public.bench_posts (
    world text NOT NULL, number bigint NOT NULL, data jsonb NOT NULL,
    first_frame bigint NOT NULL, last_frame bigint NOT NULL, PRIMARY KEY (world, number));
CREATE TABLE IF NOT EXISTS public.bench_comments (
    world text NOT NULL, id text NOT NULL, data jsonb NOT NULL, frame bigint NOT NULL,
    PRIMARY KEY (world, id));
"""
RAW_MERGE_POSTS = """
INSERT INTO public.bench_posts AS p (world, number, data, first_frame, last_frame)
SELECT DISTINCT ON ((e ->> 'number')::bigint) $3::text, (e ->> 'number')::bigint, e, d.frame, d.frame
FROM dreamcatcher.delta_log d CROSS JOIN LATERAL jsonb_array_elements(d.payload -> 'posts_created') e
WHERE d.world = $1 AND d.frame = $2
ORDER BY (e ->> 'number')::bigint, d.utc DESC, d.stream_id DESC
ON CONFLICT (world, number) DO UPDATE SET data = p.data || excluded.data, last_frame = excluded.last_frame
"""
RAW_MERGE_COMMENTS = """
INSERT INTO public.bench_comments (world, id, data, frame)
SELECT $3::text, e ->> 'id', e, d.frame
FROM dreamcatcher.delta_log d CROSS JOIN LATERAL jsonb_array_elements(d.payload -> 'comments_added') e
WHERE d.world = $1 AND d.frame = $2
ON CONFLICT DO NOTHING
"""
MERGE_FRAME = "SELECT dreamcatcher.merge_frame($1, $2)"
FRAME_STATUS = "SELECT status FROM dreamcatcher.frame_log WHERE world = $1 AND frame = $2"
FRAME_STATS = "SELECT stats::text FROM dreamcatcher.frame_log WHERE world = $1 AND frame = $2"
WARM_READ = (
    "SELECT count(*), sum(length(payload::text)) FROM dreamcatcher.delta_log WHERE world = $1 AND frame = $2"
)


def frame_records(world: str, frame: int, n: int, post_range: int) -> Iterator[tuple[Any, ...]]:
    per_stream = -(-n // STREAMS)
    for s in range(STREAMS):
        count = min(per_stream, n - s * per_stream)
        for d in deltas(seed=5, frame=frame, stream=s, count=count, post_range=post_range):
            yield d.record(world)


async def write_frame(
    conn: asyncpg.Connection, world: str, frame: int, n: int, post_range: int, status: str = "closed"
) -> None:
    """N deltas by COPY into the log, then the frame's row (``closed`` or ``open``)."""
    await conn.execute("INSERT INTO dreamcatcher.worlds (world) VALUES ($1) ON CONFLICT DO NOTHING", world)
    await conn.copy_records_to_table(
        "delta_log",
        schema_name="dreamcatcher",
        columns=LOG_COLUMNS,
        records=frame_records(world, frame, n, post_range),
    )
    await conn.execute(
        "INSERT INTO dreamcatcher.frame_log (world, frame, status, closed_at)"
        " VALUES ($1, $2, $3, CASE WHEN $3 = 'closed' THEN clock_timestamp() END)",
        world,
        frame,
        status,
    )


async def clone_frame(conn: asyncpg.Connection, source: tuple[str, int], world: str, frame: int) -> None:
    """Copy a frame's deltas to another world, server side (faster than generating them again)."""
    await conn.execute("INSERT INTO dreamcatcher.worlds (world) VALUES ($1) ON CONFLICT DO NOTHING", world)
    await conn.execute(
        "INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
        " SELECT $3, $4, stream_id, utc, payload FROM dreamcatcher.delta_log WHERE world = $1 AND frame = $2",
        source[0],
        source[1],
        world,
        frame,
    )


async def _checkpoint(conn: asyncpg.Connection) -> None:
    """Start each timed merge without a pending checkpoint (needs superuser; skipped otherwise)."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


class MergeTimeout(Exception):
    """``merge_frame`` ran past the size's time budget (the merge was rolled back)."""


async def _timed_transaction(conn: asyncpg.Connection, timeout: float, *statements: tuple[Any, ...]) -> float:
    """Seconds for one transaction running ``statements`` (commit included), under a statement timeout.

    Each statement is prepared before the timer starts: the timed part is BEGIN, the SET, one
    Bind/Execute per statement and COMMIT, the same round trips for ours and the ceiling.
    """
    prepared = [(await conn.prepare(sql), args) for sql, *args in statements]
    started = now()
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL statement_timeout = {int(timeout * 1000)}")
            for statement, args in prepared:
                await statement.fetch(*args)
    except asyncpg.QueryCanceledError:
        raise MergeTimeout(f"still merging after {timeout:.0f}s") from None
    return now() - started


async def merge_ours(conn: asyncpg.Connection, world: str, frame: int, timeout: float) -> float:
    await conn.fetchval(WARM_READ, world, frame)
    await _checkpoint(conn)
    seconds = await _timed_transaction(conn, timeout, (MERGE_FRAME, world, frame))
    status = await conn.fetchval(FRAME_STATUS, world, frame)
    if status != "merged":
        raise RuntimeError(f"merge_frame({world!r}, {frame}) did not merge the frame (status {status!r})")
    return seconds


async def merge_raw(conn: asyncpg.Connection, world: str, frame: int, target: str, timeout: float) -> float:
    """The ceiling: ``world``'s frame merged into the plain tables' state of ``target``."""
    await conn.fetchval(WARM_READ, world, frame)
    await _checkpoint(conn)
    return await _timed_transaction(
        conn, timeout, (RAW_MERGE_POSTS, world, frame, target), (RAW_MERGE_COMMENTS, world, frame, target)
    )


@dataclass(frozen=True, slots=True)
class MergeRun:
    n: int
    ours_s: float  # the time budget when timed out: a lower bound
    raw_s: float
    timed_out: bool
    stats: dict[str, Any]
    #: the ceiling's runs, before and after ours (raw_s is the faster)
    raw_runs: tuple[float, ...] = ()


async def _one_size(ctx: Context, conn: asyncpg.Connection, n: int) -> MergeRun:
    world = f"merge_{n}"
    post_range = max(100, n // 4)
    budget = ctx.size.merge_timeout
    ctx.say(f"merge: writing frames of {max(100, n // 10):,} + {n:,} deltas (COPY)")
    await write_frame(conn, world, 1, max(100, n // 10), post_range)
    await write_frame(conn, world, 2, n, post_range)
    await conn.execute("ANALYZE dreamcatcher.delta_log")
    targets = (f"{world}_raw_before", f"{world}_raw_after")  # the ceiling's two states
    await merge_ours(conn, world, 1, budget)
    for target in targets:
        await merge_raw(conn, world, 1, target, budget)
    raw_before = await merge_raw(conn, world, 2, targets[0], budget)
    ctx.built_frames[n] = (world, 2)  # merger_rss copies these deltas, merged or not
    try:
        ours_s = await merge_ours(conn, world, 2, budget)
    except MergeTimeout:
        ctx.say(f"merge {n:,}: ours did not finish within {budget:.0f}s (rolled back)")
        return MergeRun(n, budget, raw_before, True, {})
    raw_after = await merge_raw(conn, world, 2, targets[1], budget)
    raw_s = min(raw_before, raw_after)
    ctx.say(f"merge {n:,}: raw before ours {n / raw_before:,.0f} deltas/s, after {n / raw_after:,.0f}")
    stats = orjson.loads(await conn.fetchval(FRAME_STATS, world, 2) or "{}")
    ctx.say(f"merge {n:,}: ours {n / ours_s:,.0f} deltas/s, raw {n / raw_s:,.0f} deltas/s")
    return MergeRun(n, ours_s, raw_s, False, stats, (raw_before, raw_after))


def _throughput_row(run: MergeRun, biggest: bool) -> Row:
    note = f"N={run.n:,}"
    if run.timed_out:
        note += f"; timed out after {run.ours_s:.0f}s: ours is an upper bound"
    detail = {
        "deltas": run.n,
        "ours_us_per_delta": run.ours_s / run.n * 1e6,
        "raw_us_per_delta": run.raw_s / run.n * 1e6,
        "raw_us_per_delta_before_after": [round(s / run.n * 1e6, 2) for s in run.raw_runs],
        "timed_out": run.timed_out,
        "changes": run.stats.get("changes"),
        "items": run.stats.get("items"),
    }
    name = "merge_throughput" if biggest else f"merge_throughput@{run.n}"
    target = Target(">=", 0.8) if biggest else None
    return Row(name, run.n / run.ours_s, run.n / run.raw_s, "deltas/s", target, detail=detail, note=note)


def _flatness_row(runs: list[MergeRun]) -> Row:
    ours = [r.ours_s / r.n for r in runs]
    raw = [r.raw_s / r.n for r in runs]
    several = len(runs) > 1
    note = "over N=" + "/".join(f"{r.n:,}" for r in runs) if several else "one N: --size full has three"
    if any(r.timed_out for r in runs):
        note += "; a merge timed out: ours is a lower bound"
    return Row(
        "merge_flatness",
        max(ours) / min(ours),
        max(raw) / min(raw),
        "max/min µs per delta",
        Target("<=", 1.25, on_ours=True) if several else None,
        note=note,
        detail={f"ours_us_per_delta@{r.n}": r.ours_s / r.n * 1e6 for r in runs},
    )


async def bench_merge(ctx: Context) -> list[Row]:
    runs: list[MergeRun] = []
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute(RAW_TABLES)
        for n in ctx.size.merge_sizes:
            runs.append(await _one_size(ctx, conn, n))
            if runs[-1].timed_out:
                break  # a bigger frame would only take longer
    finally:
        await conn.close()
    rows = [_throughput_row(run, run is runs[-1]) for run in runs]
    return [*rows, _flatness_row(runs)]
