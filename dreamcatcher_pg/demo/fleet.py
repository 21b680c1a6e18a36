"""The demo fleet, in one process.

N stream tasks (one :class:`DeltaClient` each) write K deltas per frame (the
content comes from :mod:`.plan`); a coordinator closes each frame once every
stream has written it and waits for the merge; an in-process :class:`Merger`
projects the state. Streams write ahead by one frame (frame f+1 while f closes
and merges) but never further: before frame f they wait for f-2 to be merged,
as a fleet reading its state would.

Nothing here prints: the command (:mod:`dreamcatcher_pg.cli.demo`) renders
progress and the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from ..client import DeltaClient
from ..db.connect import connect
from ..errors import DreamcatcherError, map_db_error
from ..merger import Merger
from ..models import MergeResult, Receipt
from .plan import COORDINATOR, plan_frame, stream_name

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoConfig:
    streams: int = 8
    frames: int = 20
    deltas_per_frame: int = 4
    seed: int = 7
    #: None: a fresh ``demo-<8 hex>`` world, so runs never collide.
    world: str | None = None
    merge_timeout: float = 60.0
    poll_interval: float = 0.5

    def __post_init__(self) -> None:
        for name in ("streams", "frames", "deltas_per_frame"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(slots=True)
class DemoProgress:
    """Live counters, handed to the ``on_progress`` callback (do not keep it)."""

    frames_total: int
    deltas_total: int
    frames_merged: int = 0
    deltas_written: int = 0
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class DemoResult:
    world: str
    streams: int
    frames: int
    deltas_per_frame: int
    seed: int
    first_frame: int
    last_frame: int
    deltas_written: int
    duplicates_acknowledged: int
    frames_merged: int
    wall_seconds: float
    ingest_rate: float
    #: close_frame() call → wait_merged() returning, per frame: p50, p99, max (ms)
    close_to_merged_ms: dict[str, float]
    #: the merge transaction alone, as the merger timed it: p50, p99, max (ms)
    merge_ms: dict[str, float]
    counts: dict[str, int]
    state_hash: str | None
    latencies_ms: list[float] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        del doc["latencies_ms"]
        return doc


def new_world_name() -> str:
    return f"demo-{secrets.token_hex(4)}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "max": round(max(ms, default=0.0), 3),
    }


class _Fleet:
    """The stream tasks and the coordinator of one run, with their frame barrier."""

    def __init__(
        self,
        dsn: str,
        world: str,
        config: DemoConfig,
        first_frame: int,
        on_progress: Callable[[DemoProgress], None] | None,
    ) -> None:
        self.dsn, self.world, self.config, self.first_frame = dsn, world, config, first_frame
        self.on_progress = on_progress
        m = config.frames
        self.progress = DemoProgress(m, config.streams * m * config.deltas_per_frame)
        self.written = [0] * m
        self.all_written = [asyncio.Event() for _ in range(m)]
        self.merged = [asyncio.Event() for _ in range(m)]
        self.latencies: list[float] = []

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _count(self, receipt: Receipt) -> None:
        if receipt.status == "duplicate":
            self.progress.duplicates += 1
        else:
            self.progress.deltas_written += 1
        self._report()

    async def _stream(self, index: int, client: DeltaClient) -> None:
        cfg = self.config
        for i in range(cfg.frames):
            if i >= 2:  # write ahead by one frame, never two
                await self.merged[i - 2].wait()
            frame = self.first_frame + i
            for delta in plan_frame(
                cfg.seed, cfg.streams, cfg.deltas_per_frame, index, frame, self.first_frame
            ):
                self._count(await client.insert_delta(delta.frame, delta.payload, delta.utc))
                if delta.retry:  # as after a lost acknowledgement: same utc, same payload
                    self._count(await client.insert_delta(delta.frame, delta.payload, delta.utc))
            self.written[i] += 1
            if self.written[i] == cfg.streams:
                self.all_written[i].set()

    async def _coordinate(self, client: DeltaClient) -> None:
        for i in range(self.config.frames):
            await self.all_written[i].wait()
            frame = self.first_frame + i
            started = time.perf_counter()
            await client.close_frame(frame)
            await client.wait_merged(frame, timeout=self.config.merge_timeout)
            self.latencies.append(time.perf_counter() - started)
            self.merged[i].set()
            self.progress.frames_merged += 1
            self._report()

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await stack.enter_async_context(
                DeltaClient.connect(self.dsn, stream_id=COORDINATOR, world=self.world)
            )
            clients = [
                await stack.enter_async_context(
                    DeltaClient.connect(
                        self.dsn, stream_id=stream_name(s, self.config.streams), world=self.world, pool_size=1
                    )
                )
                for s in range(self.config.streams)
            ]
            tasks = [asyncio.create_task(self._coordinate(coordinator), name="demo-coordinator")]
            tasks += [
                asyncio.create_task(self._stream(s, c), name=c.stream_id) for s, c in enumerate(clients)
            ]
            try:
                await asyncio.gather(*tasks)  # the first error wins; the others are cancelled
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


_FIRST_FREE_FRAME = """
SELECT greatest((SELECT max(frame) FROM dreamcatcher.frames WHERE world = $1),
                (SELECT horizon FROM dreamcatcher.worlds WHERE world = $1), -1) + 1
"""

_COUNTS = """
SELECT (SELECT count(*) FROM dreamcatcher.posts WHERE world = $1) AS posts,
       (SELECT count(*) FROM dreamcatcher.comments WHERE world = $1) AS comments,
       (SELECT count(*) FROM dreamcatcher.reactions WHERE world = $1) AS reactions,
       (SELECT count(*) FROM dreamcatcher.chapters WHERE world = $1) AS chapters,
       (SELECT count(*) FROM dreamcatcher.books WHERE world = $1) AS books,
       (SELECT count(*) FROM dreamcatcher.books WHERE world = $1 AND compiled_frame IS NOT NULL)
           AS books_compiled,
       (SELECT count(*) FROM dreamcatcher.agents WHERE world = $1) AS agents,
       (SELECT count(*) FROM dreamcatcher.observations WHERE world = $1) AS observations,
       (SELECT count(*) FROM dreamcatcher.quarantine WHERE world = $1) AS quarantine,
       (SELECT count(*) FROM dreamcatcher.frames
         WHERE world = $1 AND status = 'merged' AND frame BETWEEN $2 AND $3) AS frames_merged,
       (SELECT state_hash FROM dreamcatcher.frames WHERE world = $1 AND frame = $3) AS state_hash
"""


async def _fetchrow(dsn: str, sql: str, *args: Any) -> asyncpg.Record:
    conn = await connect(dsn, application_name="dreamcatcher demo")
    try:
        row = await conn.fetchrow(sql, *args)
    except asyncpg.PostgresError as exc:
        raise map_db_error(exc) from exc
    finally:
        await conn.close()
    assert row is not None
    return row


async def _stop(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, 10.0)
    except TimeoutError:
        log.warning("the demo merger did not stop within 10 s; cancelled")


async def run_demo(
    dsn: str, config: DemoConfig, *, on_progress: Callable[[DemoProgress], None] | None = None
) -> DemoResult:
    """Run a simulated fleet against ``dsn`` (schema applied) and return what it did."""
    world = config.world or new_world_name()
    first = int((await _fetchrow(dsn, _FIRST_FREE_FRAME, world))[0])
    last = first + config.frames - 1
    merges: list[MergeResult] = []
    merger = Merger(dsn, world, poll_interval=config.poll_interval, name="demo", on_merged=merges.append)
    stop = asyncio.Event()
    merger_task = asyncio.create_task(merger.run(stop), name="demo-merger")
    fleet = _Fleet(dsn, world, config, first, on_progress)
    started = time.perf_counter()
    fleet_task = asyncio.create_task(fleet.run(), name="demo-fleet")
    try:
        await asyncio.wait({fleet_task, merger_task}, return_when=asyncio.FIRST_COMPLETED)
        if not fleet_task.done():  # the merger never returns before stop: it crashed
            merger_task.result()
            raise DreamcatcherError("the demo merger stopped unexpectedly")
        fleet_task.result()
        wall = time.perf_counter() - started
    finally:
        if not fleet_task.done():
            fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet_task
        if not merger_task.done():
            await _stop(stop, merger_task)
    row = await _fetchrow(dsn, _COUNTS, world, first, last)
    counts = {k: int(v) for k, v in row.items() if k not in ("frames_merged", "state_hash")}
    written = fleet.progress.deltas_written
    return DemoResult(
        world=world,
        streams=config.streams,
        frames=config.frames,
        deltas_per_frame=config.deltas_per_frame,
        seed=config.seed,
        first_frame=first,
        last_frame=last,
        deltas_written=written,
        duplicates_acknowledged=fleet.progress.duplicates,
        frames_merged=int(row["frames_merged"]),
        wall_seconds=round(wall, 3),
        ingest_rate=round(written / wall, 1) if wall > 0 else 0.0,
        close_to_merged_ms=_summary_ms(fleet.latencies),
        merge_ms=_summary_ms([m.seconds for m in merges]),
        counts=counts,
        state_hash=row["state_hash"],
        latencies_ms=[round(s * 1000, 3) for s in fleet.latencies],
    )
