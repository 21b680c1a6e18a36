"""ingest_single, ingest_batch, notify_ceiling, pool_vs_dedicated: deltas/s into the log vs a plain table.

The ceilings are the real ones: the raw side runs on dedicated connections (one
``asyncpg.connect`` per worker: no pool acquire/release, no reset query after each
call), each statement prepared once per connection (asyncpg's statement cache), and it
does the same Python-side work as the library: it starts from the same dicts and
encodes each payload with orjson, building its rows, inside the timed loop.

Ours runs exactly as the README tells a worker to: ``async with
DeltaClient.connect(dsn, stream_id=...) as dc`` per worker, with its default
settings (one dedicated connection). Only the inserts are timed on either side:
connections (and clients) are opened first and warmed up with one untimed write
each (for the raw side it prepares the statement; for ours it also compiles the SQL
functions in that backend), as a long-lived worker is. See bench/sides.py for the alternating rounds.

``pool_vs_dedicated`` (info) is the raw INSERT through a default asyncpg pool (what
this row's ceiling used to be) against dedicated connections, in the same rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg
import orjson

from bench.context import Context
from bench.payloads import BenchDelta, deltas
from bench.report import Row, Target
from bench.sides import Run, Side, alternate, dedicated, raw_pool
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
#: the untimed warm-up write of each connection goes to this frame (never one that is timed)
WARM_FRAME = 1_000_000
CEILING_NOTE = "dedicated connections, same orjson encoding; connections warmed up on both sides"

SinglePlan = Sequence[Sequence[BenchDelta]]
BatchPlan = Sequence[Sequence[Sequence[BenchDelta]]]


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


def _warm(d: BenchDelta) -> BenchDelta:
    return BenchDelta(WARM_FRAME, d.stream_id, d.utc, d.payload)


# -- single-row inserts ------------------------------------------------------


def raw_single(dsn: str, plan: SinglePlan, statement: str = RAW_INSERT) -> Side:
    """One dedicated connection per worker; ``statement`` per delta, payload encoded in the loop."""

    @contextlib.asynccontextmanager
    async def side(world: str) -> AsyncIterator[Run]:
        async with dedicated(dsn, len(plan)) as conns:

            async def insert(conn: asyncpg.Connection, d: BenchDelta) -> None:
                text = orjson.dumps(d.payload).decode()
                await conn.execute(statement, world, d.frame, d.stream_id, d.utc, text)

            await asyncio.gather(*(insert(c, _warm(items[0])) for c, items in zip(conns, plan, strict=True)))

            async def one(conn: asyncpg.Connection, items: Sequence[BenchDelta]) -> None:
                for d in items:
                    await insert(conn, d)

            async def run() -> None:
                await asyncio.gather(*(one(c, items) for c, items in zip(conns, plan, strict=True)))

            yield run

    return side


def raw_single_pool(dsn: str, plan: SinglePlan, *, reset: bool) -> Side:
    """The same inserts through one asyncpg pool of as many connections (info only)."""

    @contextlib.asynccontextmanager
    async def side(world: str) -> AsyncIterator[Run]:
        async with raw_pool(dsn, len(plan), reset=reset) as pool:

            async def insert(d: BenchDelta) -> None:
                text = orjson.dumps(d.payload).decode()
                await pool.execute(RAW_INSERT, world, d.frame, d.stream_id, d.utc, text)

            await asyncio.gather(*(insert(_warm(items[0])) for items in plan))

            async def one(items: Sequence[BenchDelta]) -> None:
                for d in items:
                    await insert(d)

            async def run() -> None:
                await asyncio.gather(*(one(items) for items in plan))

            yield run

    return side


def ours_single(dsn: str, plan: SinglePlan) -> Side:
    """One ``DeltaClient.connect(dsn, stream_id=...)`` per worker (defaults: one dedicated connection)."""

    @contextlib.asynccontextmanager
    async def side(world: str) -> AsyncIterator[Run]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    DeltaClient.connect(dsn, stream_id=items[0].stream_id, world=world)
                )
                for items in plan
            ]
            warm = [_warm(items[0]) for items in plan]
            await asyncio.gather(
                *(dc.insert_delta(d.frame, d.payload, d.utc) for dc, d in zip(clients, warm, strict=True))
            )

            async def one(dc: DeltaClient, items: Sequence[BenchDelta]) -> None:
                for d in items:
                    await dc.insert_delta(d.frame, d.payload, d.utc)

            async def run() -> None:
                await asyncio.gather(*(one(dc, items) for dc, items in zip(clients, plan, strict=True)))

            yield run

    return side


# -- batches -------------------------------------------------------------------


def raw_batch(dsn: str, plan: BatchPlan) -> Side:
    """One dedicated connection per writer; ``copy_records_to_table`` of each batch's rows."""

    @contextlib.asynccontextmanager
    async def side(world: str) -> AsyncIterator[Run]:
        async with dedicated(dsn, len(plan)) as conns:

            async def copy(conn: asyncpg.Connection, batch: Sequence[BenchDelta]) -> None:
                await conn.copy_records_to_table(
                    "bench_raw",
                    schema_name="public",
                    columns=RAW_COLUMNS,
                    records=[d.record(world) for d in batch],
                )

            await asyncio.gather(*(copy(c, [_warm(b[0][0])]) for c, b in zip(conns, plan, strict=True)))

            async def one(conn: asyncpg.Connection, batches: Sequence[Sequence[BenchDelta]]) -> None:
                for batch in batches:
                    await copy(conn, batch)

            async def run() -> None:
                await asyncio.gather(*(one(c, batches) for c, batches in zip(conns, plan, strict=True)))

            yield run

    return side


def ours_batch(dsn: str, plan: BatchPlan) -> Side:
    """One ``DeltaClient.connect`` per writer; ``insert_deltas`` of each batch."""

    @contextlib.asynccontextmanager
    async def side(world: str) -> AsyncIterator[Run]:
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    DeltaClient.connect(dsn, stream_id=batches[0][0].stream_id, world=world)
                )
                for batches in plan
            ]

            async def insert(dc: DeltaClient, batch: Sequence[BenchDelta]) -> None:
                await dc.insert_deltas({"frame": d.frame, "payload": d.payload, "utc": d.utc} for d in batch)

            await asyncio.gather(*(insert(dc, [_warm(b[0][0])]) for dc, b in zip(clients, plan, strict=True)))

            async def one(dc: DeltaClient, batches: Sequence[Sequence[BenchDelta]]) -> None:
                for batch in batches:
                    await insert(dc, batch)

            async def run() -> None:
                await asyncio.gather(*(one(dc, b) for dc, b in zip(clients, plan, strict=True)))

            yield run

    return side


# -- the rows ------------------------------------------------------------------


async def bench_ingest_single(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = single_plan(ctx, seed=1)
    count = size.single_workers * size.single_per_worker
    rates = await alternate(
        ctx,
        "single",
        count,
        {
            "raw": raw_single(ctx.dsn, plan),
            "ours": ours_single(ctx.dsn, plan),
            "raw_pool": raw_single_pool(ctx.dsn, plan, reset=True),
            "raw_pool_no_reset": raw_single_pool(ctx.dsn, plan, reset=False),
        },
    )
    detail = {"connections": size.single_workers, "deltas": count, "rounds": size.repeats, **rates.detail()}
    raw = rates.best("raw")
    return [
        Row(
            "ingest_single",
            rates.best("ours"),
            raw,
            "deltas/s",
            Target(">=", 0.75),
            detail=detail,
            note="ours: DeltaClient.connect per worker (defaults); ceiling: " + CEILING_NOTE,
        ),
        Row(
            "pool_vs_dedicated",
            rates.best("raw_pool"),
            raw,
            "deltas/s",
            detail={
                **detail,
                "raw_pool_no_reset": rates.best("raw_pool_no_reset"),
                "raw_pool_no_reset_ratio": rates.best("raw_pool_no_reset") / raw,
            },
            note="raw INSERT through a default asyncpg pool (reset query after each call) vs dedicated"
            " connections; detail: the same pool without its reset",
        ),
    ]


async def bench_notify_ceiling(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = single_plan(ctx, seed=3)
    count = size.single_workers * size.single_per_worker
    rounds = min(2, size.repeats)
    rates = await alternate(
        ctx,
        "notify",
        count,
        {
            "raw": raw_single(ctx.dsn, plan),
            "notify": raw_single(ctx.dsn, plan, RAW_INSERT_NOTIFY),
        },
        rounds=rounds,
    )
    note = "raw insert + pg_notify per transaction (what the design avoids); both on dedicated connections"
    detail = {"connections": size.single_workers, "deltas": count, "rounds": rounds, **rates.detail()}
    return [
        Row("notify_ceiling", rates.best("notify"), rates.best("raw"), "deltas/s", note=note, detail=detail)
    ]


async def bench_ingest_batch(ctx: Context) -> list[Row]:
    await ensure_raw_table(ctx.dsn)
    size = ctx.size
    plan = batch_plan(ctx, seed=2)
    count = size.batch_writers * size.batches_per_writer * size.batch_size
    rates = await alternate(
        ctx, "batch", count, {"raw": raw_batch(ctx.dsn, plan), "ours": ours_batch(ctx.dsn, plan)}
    )
    detail = {
        "writers": size.batch_writers,
        "batch_size": size.batch_size,
        "deltas": count,
        "rounds": size.repeats,
        "ceiling": "copy_records_to_table on dedicated connections",
        **rates.detail(),
    }
    return [
        Row(
            "ingest_batch",
            rates.best("ours"),
            rates.best("raw"),
            "deltas/s",
            Target(">=", 0.70),
            detail=detail,
            note="ours: insert_deltas, DeltaClient.connect per writer; ceiling: raw COPY, " + CEILING_NOTE,
        )
    ]
