"""merger_rss: peak RSS of the merger process while it merges the biggest frame.

The merge runs in SQL, so the Python merger should hold no per-delta memory:
its peak while merging should stay near its RSS when idle (the ceiling column).
The merger's PostgreSQL backend is sampled too (its RSS counts the shared
buffers it touches, so it is a detail, not the row).
"""

from __future__ import annotations

import asyncio

import asyncpg

from bench.context import Context
from bench.merge import clone_frame, write_frame
from bench.mergerproc import merger_process
from bench.procmem import rss_mb
from bench.report import Row, Target

WORLD = "rss"
FRAME = 1
SAMPLE_EVERY = 0.01
IDLE_SECONDS = 0.5
STATUS = "SELECT status FROM dreamcatcher.frame_log WHERE world = $1 AND frame = $2"


async def _prepare(ctx: Context, conn: asyncpg.Connection, n: int) -> None:
    source = ctx.built_frames.get(n)
    if source is None:
        ctx.say(f"merger_rss: writing a frame of {n:,} deltas (COPY)")
        await write_frame(conn, WORLD, FRAME, n, max(100, n // 4), status="open")
    else:
        ctx.say(f"merger_rss: copying the {n:,}-delta frame of merge_throughput")
        await clone_frame(conn, source, WORLD, FRAME)
        await conn.execute("INSERT INTO dreamcatcher.frame_log (world, frame) VALUES ($1, $2)", WORLD, FRAME)
    # the frame closes when the benchmark says so, never by deadline during set-up
    await conn.execute(
        "UPDATE dreamcatcher.worlds SET close_after = interval '1 day' WHERE world = $1", WORLD
    )


async def _sample(pids: list[int], peaks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for i, pid in enumerate(pids):
            peaks[i] = max(peaks[i], rss_mb(pid))
        await asyncio.sleep(SAMPLE_EVERY)


async def _wait_merged(conn: asyncpg.Connection, proc: asyncio.subprocess.Process, budget: float) -> bool:
    """True once the frame is merged; False when ``budget`` seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while await conn.fetchval(STATUS, WORLD, FRAME) != "merged":
        if proc.returncode is not None:
            raise RuntimeError(f"the merger exited (rc={proc.returncode}) during the merge")
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def bench_merger_rss(ctx: Context) -> list[Row]:
    n = max(ctx.size.merge_sizes)
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await _prepare(ctx, conn, n)
        async with merger_process(ctx.dsn, WORLD) as proc:
            backend_pid = await conn.fetchval(
                "SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", WORLD
            )
            pids = [proc.pid, int(backend_pid)]
            idle = [0.0, 0.0]
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(pids, idle, stop))
            await asyncio.sleep(IDLE_SECONDS)
            stop.set()
            await sampler
            peak = list(idle)
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(pids, peak, stop))
            await conn.fetchval("SELECT dreamcatcher.close_frame($1, $2)", WORLD, FRAME)
            finished = await _wait_merged(conn, proc, ctx.size.merge_timeout)
            if not finished:  # stop the merge itself, not only the merger waiting for it
                await conn.execute("SELECT pg_cancel_backend($1)", backend_pid)
            stop.set()
            await sampler
        seconds = await conn.fetchval(
            "SELECT extract(epoch FROM merged_at - closed_at)::float8 FROM dreamcatcher.frame_log"
            " WHERE world = $1 AND frame = $2",
            WORLD,
            FRAME,
        )
    finally:
        await conn.close()
    ctx.say(f"merger_rss: idle {idle[0]:.1f} MB, peak {peak[0]:.1f} MB while merging {n:,} deltas")
    detail = {
        "deltas": n,
        "merge_seconds": seconds,
        "finished": finished,
        "backend_idle_mb": idle[1],
        "backend_peak_mb": peak[1],
    }
    return [
        Row(
            "merger_rss",
            peak[0],
            idle[0],
            "MB",
            Target("<=", 1.25),
            detail=detail,
            note=f"peak while merging N={n:,}; ceiling: same process idle"
            + ("" if finished else f"; merge unfinished after {ctx.size.merge_timeout:.0f}s"),
        )
    ]
