"""latency: close_frame(f) → wait_merged(f) returns, while other workers write frame f+1.

Writers write frame f, then f+1 while the coordinator closes f and waits for
its merge, and wait for f to be merged before they start f+2 (a fleet that
reads its state). Ours: every writer and the coordinator is a
``DeltaClient.connect`` of its own (defaults, as the README tells a
worker), and the merger is a subprocess (``python -m dreamcatcher_pg merger``).

The ceiling is the same pipeline done raw: the same writers on dedicated
connections INSERT the same rows into a plain table; the close is a NOTIFY; a
raw merger subprocess (bench/rawmerger.py) merges the frame set-based, as
merge_throughput's ceiling does, and NOTIFYs in the same transaction; the
coordinator is woken by that notification on its own connection. The runs
alternate raw / ours (the order turning each round), each with a warm-up frame
that is not counted. A raw NOTIFY round trip, probed all through both runs on
the same event loop, is reported in the detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import orjson

from bench.context import Context, now, percentile
from bench.ingest import RAW_INSERT, RAW_TABLE
from bench.merge import RAW_TABLES
from bench.mergerproc import MergerFailed, merger_process
from bench.payloads import BenchDelta, deltas
from bench.rawmerger import CLOSE_CHANNEL, MERGED_CHANNEL
from bench.report import Row, Target
from bench.sides import dedicated
from dreamcatcher_pg import DeltaClient

PROBE_CHANNEL = "bench_round_trip"
PROBE_PAUSE = 0.01
MERGE_TIMEOUT = 60.0
#: the part of the latency spent in the server: frame closed → merge committed (wake-up + merge)
SERVER_SIDE = (
    "SELECT extract(epoch FROM merged_at - closed_at) * 1000 FROM dreamcatcher.frame_log"
    " WHERE world = $1 AND frame > 0 AND status = 'merged'"
)

Plan = list[list[list[BenchDelta]]]
Insert = Callable[[BenchDelta], Awaitable[object]]


def _plan(ctx: Context, frames: int) -> Plan:
    """plan[w][f]: writer w's deltas of frame f (frame 0 is the warm-up)."""
    size = ctx.size
    share = max(1, size.latency_frame_deltas // size.latency_writers)
    return [
        [list(deltas(seed=4, frame=f, stream=w, count=share)) for f in range(frames + 1)]
        for w in range(size.latency_writers)
    ]


async def notify_probe(dsn: str, stop: asyncio.Event, samples: list[float]) -> None:
    """Round trips of a raw NOTIFY until ``stop``: seconds from sending to the callback."""
    async with dedicated(dsn, 2) as (listener, sender):
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[float]] = {}

        def on_notify(conn: object, pid: int, channel: str, payload: object) -> None:
            fut = waiting.pop(str(payload), None)
            if fut is not None and not fut.done():
                fut.set_result(now())

        await listener.add_listener(PROBE_CHANNEL, on_notify)
        serial = 0
        while not stop.is_set():
            serial += 1
            fut: asyncio.Future[float] = loop.create_future()
            waiting[str(serial)] = fut
            started = now()
            await sender.execute(f"NOTIFY {PROBE_CHANNEL}, '{serial}'")
            samples.append(await asyncio.wait_for(fut, 10.0) - started)
            await asyncio.sleep(PROBE_PAUSE)


class _Run:
    """One run: writers and a coordinator, frame by frame; close→woken of frames 1.. is kept."""

    def __init__(self, frames: int, writers: int, close_to_woken: list[float]) -> None:
        self.written = [asyncio.Event() for _ in range(frames)]
        self.merged = [asyncio.Event() for _ in range(frames)]
        self._left = [writers] * frames
        self.close_to_woken = close_to_woken
        self.close_call: list[float] = []

    async def writer(self, insert: Insert, frames: list[list[BenchDelta]]) -> None:
        for f, items in enumerate(frames):
            if f >= 2:
                await self.merged[f - 2].wait()
            for d in items:
                await insert(d)
            self._left[f] -= 1
            if self._left[f] == 0:
                self.written[f].set()

    async def coordinator(
        self, close: Callable[[int], Awaitable[object]], wait: Callable[[int], Awaitable[None]]
    ) -> None:
        for f in range(len(self.written)):
            await self.written[f].wait()
            started = now()
            await close(f)
            closed = now()
            await wait(f)
            woken = now()
            self.merged[f].set()
            if f > 0:  # frame 0 warms up the listener, the connections and the merger
                self.close_to_woken.append(woken - started)
                self.close_call.append(closed - started)


async def _wait_merged(dc: DeltaClient, merger: asyncio.subprocess.Process, frame: int) -> None:
    """``wait_merged``, failing fast (with the merger's log) when the merger has died."""
    deadline = now() + MERGE_TIMEOUT
    while True:
        try:
            await dc.wait_merged(frame, timeout=1.0)
            return
        except TimeoutError:
            if merger.returncode is not None:
                raise MergerFailed(f"the merger exited (rc={merger.returncode})") from None
            if now() > deadline:
                raise TimeoutError(f"frame {frame} not merged within {MERGE_TIMEOUT:.0f}s") from None


async def run_ours(ctx: Context, world: str, plan: Plan, samples: list[float]) -> tuple[list[float], float]:
    """One run of ours; returns the server's closed→merged ms per frame and the close call p50 (ms)."""
    run = _Run(len(plan[0]), len(plan), samples)
    async with contextlib.AsyncExitStack() as stack:
        coord = await stack.enter_async_context(
            DeltaClient.connect(ctx.dsn, stream_id="coordinator", world=world)
        )
        await coord.configure_world()  # the world must exist before its merger leads it
        merger = await stack.enter_async_context(merger_process(ctx.dsn, world))
        writers = [
            await stack.enter_async_context(
                DeltaClient.connect(ctx.dsn, stream_id=frames[0][0].stream_id, world=world)
            )
            for frames in plan
        ]

        def insert(dc: DeltaClient) -> Insert:
            return lambda d: dc.insert_delta(d.frame, d.payload, d.utc)

        await asyncio.gather(
            run.coordinator(coord.close_frame, lambda f: _wait_merged(coord, merger, f)),
            *(run.writer(insert(dc), frames) for dc, frames in zip(writers, plan, strict=True)),
        )
    async with dedicated(ctx.dsn, 1) as (conn,):
        server_ms = [float(r[0]) for r in await conn.fetch(SERVER_SIDE, world)]
    return server_ms, percentile([s * 1000 for s in run.close_call], 50)


@contextlib.asynccontextmanager
async def raw_merger(dsn: str, world: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.rawmerger",
        dsn,
        world,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30.0)
        if line.strip() != b"ready":
            raise MergerFailed(f"the raw merger did not start (rc={proc.returncode})")
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def run_raw(ctx: Context, world: str, plan: Plan, samples: list[float]) -> None:
    run = _Run(len(plan[0]), len(plan), samples)
    async with raw_merger(ctx.dsn, world) as merger, dedicated(ctx.dsn, len(plan) + 2) as conns:
        listener, sender, *writers = conns
        woken: dict[int, asyncio.Event] = {f: asyncio.Event() for f in range(len(plan[0]))}
        await listener.add_listener(
            MERGED_CHANNEL, lambda _c, _p, _ch, payload: woken[int(str(payload))].set()
        )

        def insert(conn: asyncpg.Connection) -> Insert:
            async def one(d: BenchDelta) -> None:
                text = orjson.dumps(d.payload).decode()
                await conn.execute(RAW_INSERT, world, d.frame, d.stream_id, d.utc, text)

            return one

        async def close(frame: int) -> None:
            await sender.execute(f"SELECT pg_notify('{CLOSE_CHANNEL}', $1::text)", str(frame))

        async def wait(frame: int) -> None:
            try:
                await asyncio.wait_for(woken[frame].wait(), MERGE_TIMEOUT)
            except TimeoutError:
                raise MergerFailed(f"raw merger: frame {frame} not merged (rc={merger.returncode})") from None

        await asyncio.gather(
            run.coordinator(close, wait),
            *(run.writer(insert(c), frames) for c, frames in zip(writers, plan, strict=True)),
        )


async def bench_latency(ctx: Context) -> list[Row]:
    size = ctx.size
    rounds = max(1, min(size.repeats, size.latency_frames))
    plan = _plan(ctx, -(-size.latency_frames // rounds))
    async with dedicated(ctx.dsn, 1) as (conn,):
        await conn.execute(RAW_TABLE)
        await conn.execute(RAW_TABLES)
    ours: list[float] = []
    raw: list[float] = []
    server_ms: list[float] = []
    close_call_ms: list[float] = []
    probe: list[float] = []
    ctx.say(f"latency: {rounds} x 2 runs of {len(plan[0]) - 1} frames of {size.latency_frame_deltas} deltas")
    for r in range(rounds):
        for side in ("raw", "ours") if r % 2 == 0 else ("ours", "raw"):
            stop = asyncio.Event()
            probing = asyncio.create_task(notify_probe(ctx.dsn, stop, probe))
            try:
                if side == "ours":
                    frames_ms, call_ms = await run_ours(ctx, f"latency_{r}", plan, ours)
                    server_ms += frames_ms
                    close_call_ms.append(call_ms)
                else:
                    await run_raw(ctx, f"latency_raw_{r}", plan, raw)
            finally:
                stop.set()
                await probing
            ctx.say(f"latency round {r + 1}: {side} done")
    ms = [s * 1000 for s in ours]
    raw_ms = [s * 1000 for s in raw]
    probe_ms = [s * 1000 for s in probe] or [float("nan")]
    detail = {
        "frames": len(ms),
        "frame_deltas": size.latency_frame_deltas,
        "writers": size.latency_writers,
        "rounds": rounds,
        "close_call_p50_ms": percentile(close_call_ms, 50),
        "server_closed_to_merged_p50_ms": percentile(server_ms, 50) if server_ms else None,
        "server_closed_to_merged_p99_ms": percentile(server_ms, 99) if server_ms else None,
        "max_ms": max(ms),
        "raw_max_ms": max(raw_ms),
        "notify_round_trip_p50_ms": percentile(probe_ms, 50),
        "notify_round_trip_p99_ms": percentile(probe_ms, 99),
        "notify_samples": len(probe),
    }
    ceiling = "ceiling: the same pipeline raw (INSERTs, NOTIFY close, set-based merge + NOTIFY)"
    return [
        Row(
            "latency_p50",
            percentile(ms, 50),
            percentile(raw_ms, 50),
            "ms",
            detail=detail,
            note=f"close→woken p50; {ceiling}",
        ),
        Row(
            "latency_p99",
            percentile(ms, 99),
            percentile(raw_ms, 99),
            "ms",
            Target("<=", 50, on_ours=True),
            detail=detail,
            note=f"close→woken p99; {ceiling}",
        ),
    ]
