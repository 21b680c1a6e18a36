"""latency: close_frame(f) → wait_merged(f) returns, while other workers write frame f+1.

Writers write frame f, then f+1 while the coordinator closes f and waits for
its merge, and wait for f to be merged before they start f+2 (a fleet that
reads its state). The merger is a subprocess (``python -m dreamcatcher_pg
merger``). The ceiling is a raw NOTIFY round trip (commit of a NOTIFY on one
connection → the listener's callback on another), probed all through the same
run, on the same event loop, under the same load.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from bench.context import Context, now, percentile
from bench.mergerproc import MergerFailed, merger_process
from bench.payloads import BenchDelta, deltas
from bench.report import Row, Target
from dreamcatcher_pg import DeltaClient

WORLD = "latency"
PROBE_CHANNEL = "bench_round_trip"
PROBE_PAUSE = 0.01
MERGE_TIMEOUT = 60.0
#: the part of the latency spent in the server: frame closed → merge committed (wake-up + merge)
SERVER_SIDE = (
    "SELECT extract(epoch FROM merged_at - closed_at) * 1000 FROM dreamcatcher.frame_log"
    " WHERE world = $1 AND frame > 0 AND status = 'merged'"
)


def _plan(ctx: Context) -> list[list[list[BenchDelta]]]:
    """plan[w][f]: writer w's deltas of frame f (frame 0 is the warm-up)."""
    size = ctx.size
    share = max(1, size.latency_frame_deltas // size.latency_writers)
    return [
        [list(deltas(seed=4, frame=f, stream=w, count=share)) for f in range(size.latency_frames + 1)]
        for w in range(size.latency_writers)
    ]


async def notify_probe(dsn: str, stop: asyncio.Event, samples: list[float]) -> None:
    """Round trips of a raw NOTIFY until ``stop``: seconds from sending to the callback."""
    listener = await asyncpg.connect(dsn)
    sender = await asyncpg.connect(dsn)
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[float]] = {}

    def on_notify(conn: object, pid: int, channel: str, payload: object) -> None:
        fut = waiting.pop(str(payload), None)
        if fut is not None and not fut.done():
            fut.set_result(now())

    try:
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
    finally:
        await listener.close()
        await sender.close()


class _Run:
    def __init__(self, ctx: Context, frames: int, writers: int) -> None:
        self.ctx = ctx
        self.merger: asyncio.subprocess.Process | None = None
        self.written = [asyncio.Event() for _ in range(frames)]
        self.merged = [asyncio.Event() for _ in range(frames)]
        self._left = [writers] * frames
        self.close_to_woken: list[float] = []
        self.close_call: list[float] = []

    async def writer(self, dc: DeltaClient, frames: list[list[BenchDelta]]) -> None:
        for f, items in enumerate(frames):
            if f >= 2:
                await self.merged[f - 2].wait()
            for d in items:
                await dc.insert_delta(d.frame, d.payload, d.utc)
            self._left[f] -= 1
            if self._left[f] == 0:
                self.written[f].set()

    async def _wait_merged(self, dc: DeltaClient, frame: int) -> None:
        """``wait_merged``, failing fast (with the merger's log) when the merger has died."""
        deadline = now() + MERGE_TIMEOUT
        while True:
            try:
                await dc.wait_merged(frame, timeout=1.0)
                return
            except TimeoutError:
                if self.merger is not None and self.merger.returncode is not None:
                    raise MergerFailed(f"the merger exited (rc={self.merger.returncode})") from None
                if now() > deadline:
                    raise TimeoutError(f"frame {frame} not merged within {MERGE_TIMEOUT:.0f}s") from None

    async def coordinator(self, dc: DeltaClient) -> None:
        for f in range(len(self.written)):
            await self.written[f].wait()
            started = now()
            await dc.close_frame(f)
            closed = now()
            await self._wait_merged(dc, f)
            woken = now()
            self.merged[f].set()
            if f > 0:  # frame 0 warms up the listener, the pools and the merger
                self.close_to_woken.append(woken - started)
                self.close_call.append(closed - started)


async def bench_latency(ctx: Context) -> list[Row]:
    size = ctx.size
    plan = _plan(ctx)
    run = _Run(ctx, size.latency_frames + 1, size.latency_writers)
    probe_samples: list[float] = []
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        # every client as the README tells a worker: its own pool, default settings
        coord = await stack.enter_async_context(
            DeltaClient.connect(ctx.dsn, stream_id="coordinator", world=WORLD)
        )
        await coord.configure_world()  # the world must exist before its merger leads it
        run.merger = await stack.enter_async_context(merger_process(ctx.dsn, WORLD))
        writers = [
            await stack.enter_async_context(
                DeltaClient.connect(ctx.dsn, stream_id=frames[0][0].stream_id, world=WORLD)
            )
            for frames in plan
        ]
        ctx.say(f"latency: {size.latency_frames} frames of {size.latency_frame_deltas} deltas")
        probe = asyncio.create_task(notify_probe(ctx.dsn, stop, probe_samples))
        try:
            await asyncio.gather(
                run.coordinator(coord),
                *(run.writer(dc, frames) for dc, frames in zip(writers, plan, strict=True)),
            )
        finally:
            stop.set()
            await probe
    conn = await asyncpg.connect(ctx.dsn)
    try:
        server_ms = [float(r[0]) for r in await conn.fetch(SERVER_SIDE, WORLD)]
    finally:
        await conn.close()
    ms = [s * 1000 for s in run.close_to_woken]
    probe_ms = [s * 1000 for s in probe_samples] or [float("nan")]
    detail = {
        "frames": len(ms),
        "frame_deltas": size.latency_frame_deltas,
        "writers": size.latency_writers,
        "close_call_p50_ms": percentile([s * 1000 for s in run.close_call], 50),
        "server_closed_to_merged_p50_ms": percentile(server_ms, 50) if server_ms else None,
        "server_closed_to_merged_p99_ms": percentile(server_ms, 99) if server_ms else None,
        "max_ms": max(ms),
        "notify_samples": len(probe_samples),
    }
    return [
        Row("latency_p50", percentile(ms, 50), percentile(probe_ms, 50), "ms", detail=detail,
            note="close→woken p50; ceiling: raw NOTIFY round trip p50"),
        Row("latency_p99", percentile(ms, 99), percentile(probe_ms, 99), "ms", Target("<=", 50, on_ours=True),
            detail=detail, note="close→woken p99; ceiling: raw NOTIFY round trip p99"),
    ]  # fmt: skip
