"""ingest_single, ingest_batch and notify_ceiling: deltas/s into the log vs a plain table.

Both sides start from the same Python dicts (the raw side serialises them with
orjson inside the timed loop, as any client must), run on the same number of
connections and write the same keys. Rounds alternate raw / ours; the best
round of each side is kept (the machine is shared, the best round is the least
disturbed one).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import orjson

from bench.context import Context, now
from bench.payloads import BenchDelta, deltas
from bench.report import Row, Target
from dreamcatcher_pg import DeltaClient

RAW_TABLE = """
CREATE TABLE IF NOT EXISTS public.bench_raw (
    world     text        NOT NULL,
    frame     bigint      NOT NULL,
    stream_id text        NOT NULL,
    utc       timestamptz NOT NULL,
    payload   jsonb       NOT NULL,
    PRIMARY KEY (world, frame, stream_id, utc)
)"""
RAW_COLUMNS = ["world", "frame", "stream_id", "utc", "payload"]
RAW_INSERT = (
    "INSERT INTO public.bench_raw (world, frame, stream_id, utc, payload) VALUES ($1, $2, $3, $4, $5)"
)
RAW_INSERT_NOTIFY = (
    "WITH ins AS (INSERT INTO public.bench_raw (world, frame, stream_id, utc, payload)"
    " VALUES ($1, $2, $3, $4, $5) RETURNING world, frame)"
    " SELECT pg_notify('bench_raw', ins.world || ':' || ins.frame) FROM ins"
)
#: single inserts: a new frame every this many deltas of a stream (frames open during the run)
FRAME_SPAN = 50

Work = Callable[[asyncpg.Pool, str], Awaitable[None]]


async def ensure_raw_table(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(RAW_TABLE)
    finally:
        await conn.close()


def single_plan(ctx: Context, seed: int) -> list[list[BenchDelta]]:
    """Per worker: its deltas, frames advancing every FRAME_SPAN deltas."""
    size = ctx.size
    plan = []
    for w in range(size.single_workers):
        items: list[BenchDelta] = []
        for start in range(0, size.single_per_worker, FRAME_SPAN):
            count = min(FRAME_SPAN, size.single_per_worker - start)
            frame = start // FRAME_SPAN
            items += deltas(seed=seed, frame=frame, stream=w, count=count, serial_base=start)
        plan.append(items)
    return plan


async def _timed(dsn: str, connections: int, world: str, work: Work) -> float:
    """Seconds for ``work(pool, world)`` on a fresh pool of ``connections`` (pool set-up not timed)."""
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    try:
        started = now()
        await work(pool, world)
        return now() - started
    finally:
        await pool.close()


def ours_single(dsn: str, plan: Sequence[Sequence[BenchDelta]]) -> Work:
    async def work(pool: asyncpg.Pool, world: str) -> None:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    DeltaClient.connect(dsn, stream_id=items[0].stream_id, world=world, pool=pool)
                )
                for items in plan
            ]

            async def one(dc: DeltaClient, items: Sequence[BenchDelta]) -> None:
                for d in items:
                    await dc.insert_delta(d.frame, d.payload, d.utc)

            await asyncio.gather(*(one(dc, items) for dc, items in zip(clients, plan, strict=True)))

    return work


def raw_single(plan: Sequence[Sequence[BenchDelta]], statement: str) -> Work:
    async def work(pool: asyncpg.Pool, world: str) -> None:
        async def one(items: Sequence[BenchDelta]) -> None:
            for d in items:
                text = orjson.dumps(d.payload).decode()
                await pool.execute(statement, world, d.frame, d.stream_id, d.utc, text)

        await asyncio.gather(*(one(items) for items in plan))

    return work


def batch_plan(ctx: Context, seed: int) -> list[list[list[BenchDelta]]]:
    """Per writer: its batches; batch b of every writer goes to frame b."""
    size = ctx.size
    return [
        [
            list(deltas(seed=seed, frame=b, stream=w, count=size.batch_size))
            for b in range(size.batches_per_writer)
        ]
        for w in range(size.batch_writers)
    ]


def ours_batch(dsn: str, plan: Sequence[Sequence[Sequence[BenchDelta]]]) -> Work:
    async def work(pool: asyncpg.Pool, world: str) -> None:
        async def one(batches: Sequence[Sequence[BenchDelta]]) -> None:
            sid = batches[0][0].stream_id
            async with DeltaClient.connect(dsn, stream_id=sid, world=world, pool=pool) as dc:
                for batch in batches:
                    await dc.insert_deltas(
                        {"frame": d.frame, "payload": d.payload, "utc": d.utc} for d in batch
                    )

        await asyncio.gather(*(one(batches) for batches in plan))

    return work


def raw_batch(plan: Sequence[Sequence[Sequence[BenchDelta]]]) -> Work:
    async def work(pool: asyncpg.Pool, world: str) -> None:
        async def one(batches: Sequence[Sequence[BenchDelta]]) -> None:
            async with pool.acquire() as conn:
                for batch in batches:
                    await conn.copy_records_to_table(
                        "bench_raw", schema_name="public", columns=RAW_COLUMNS,
                        records=[d.record(world) for d in batch],
                    )  # fmt: skip

        await asyncio.gather(*(one(batches) for batches in plan))

    return work


async def _best_rates(
    ctx: Context, label: str, connections: int, count: int, sides: dict[str, Work], rounds: int = 0
) -> dict[str, float]:
    """Deltas/s of each side: the best of ``rounds`` (default ``ctx.size.repeats``) alternating rounds."""
    best = dict.fromkeys(sides, 0.0)
    for r in range(rounds or ctx.size.repeats):
        for side, work in sides.items():
            seconds = await _timed(ctx.dsn, connections, f"{label}_{side}_{r}", work)
            best[side] = max(best[side], count / seconds)
            ctx.say(f"{label} round {r + 1}: {side} {count / seconds:,.0f} deltas/s")
    return best


async def bench_ingest_single(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = single_plan(ctx, seed=1)
    count = size.single_workers * size.single_per_worker
    rates = await _best_rates(
        ctx, "single", size.single_workers, count,
        {"raw": raw_single(plan, RAW_INSERT), "ours": ours_single(ctx.dsn, plan)},
    )  # fmt: skip
    detail = {"connections": size.single_workers, "deltas": count, "rounds": size.repeats}
    return [Row("ingest_single", rates["ours"], rates["raw"], "deltas/s", Target(">=", 0.75), detail=detail)]


async def bench_notify_ceiling(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = single_plan(ctx, seed=3)
    count = size.single_workers * size.single_per_worker
    rates = await _best_rates(
        ctx, "notify", size.single_workers, count,
        {"raw": raw_single(plan, RAW_INSERT), "notify": raw_single(plan, RAW_INSERT_NOTIFY)},
        rounds=min(2, size.repeats),
    )  # fmt: skip
    note = "raw insert + pg_notify per transaction (what the design avoids)"
    detail = {"connections": size.single_workers, "deltas": count, "rounds": min(2, size.repeats)}
    return [Row("notify_ceiling", rates["notify"], rates["raw"], "deltas/s", note=note, detail=detail)]


async def bench_ingest_batch(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = batch_plan(ctx, seed=2)
    count = size.batch_writers * size.batches_per_writer * size.batch_size
    rates = await _best_rates(
        ctx, "batch", size.batch_writers, count, {"raw": raw_batch(plan), "ours": ours_batch(ctx.dsn, plan)}
    )
    detail = {
        "writers": size.batch_writers,
        "batch_size": size.batch_size,
        "deltas": count,
        "rounds": size.repeats,
        "ceiling": "copy_records_to_table",
    }
    return [Row("ingest_batch", rates["ours"], rates["raw"], "deltas/s", Target(">=", 0.70), detail=detail)]
