"""``dreamcatcher demo``: a simulated fleet, end to end, in one process.

N stream tasks (one :class:`DeltaClient` each) write K deltas per frame; a
coordinator closes each frame once every stream has written it and waits for
the merge; an in-process :class:`Merger` projects the state. Streams write
ahead by one frame (frame f+1 while f closes and merges) but never further:
before frame f they wait for f-2 to be merged, as a fleet reading its state
would.

The content is a pure function of ``(seed, streams, deltas_per_frame, stream,
frame)`` (:func:`plan_frame`), utc included (a simulated clock: one minute per
frame from :data:`SIM_EPOCH`), so the same seed yields the same log, the same
merged state and the same state hashes, whatever the timing. It exercises
every merge rule: posts several streams create and retitle (last-write-wins),
comments from several streams on the same posts, the same comment sent by two
streams (with an id, and without one: content dedupe), reactions as objects
and as ``"NODE:TYPE"`` strings, agent updates, chapters toward books with a
target (books compile during the run), observations, a few unreadable items
(quarantined) and a few retried inserts (acknowledged as ``"duplicate"``).

Nothing here prints: :func:`cmd_demo` (the CLI side) renders progress and the
summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import random
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from .client import DeltaClient
from .errors import DreamcatcherError, map_db_error
from .merger import Merger, MergeResult
from .models import Receipt

log = logging.getLogger(__name__)

#: The simulated clock: frame f spans the minute starting SIM_EPOCH + f minutes.
SIM_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
FRAME_SPAN_US = 60_000_000
COORDINATOR = "demo-coordinator"

TOPICS = (
    "tidepools", "lanterns", "orbital gardens", "glass bees", "paper boats", "night trains",
    "salt maps", "clockwork owls", "fog harbors", "moss libraries", "quiet engines", "dune choirs",
)  # fmt: skip
CHANNELS = ("general", "research", "stories", "meta")
REACTIONS = ("like", "heart", "laugh", "insight", "rocket")
MOODS = ("curious", "sleepy", "bold", "wistful", "focused")
#: Unreadable on purpose: each ends in dreamcatcher.quarantine with its reason.
UNREADABLE: tuple[tuple[str, Any], ...] = (
    ("posts_created", {"title": "a draft that lost its number", "channel": "meta"}),
    ("chapters", {"agent": "agent-01", "chapter": 1, "title": "a chapter of no book"}),
    ("reactions_added", "applause"),
    ("agents_updated", {"bio": "a bio for nobody"}),
)


# -- the deterministic plan -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedDelta:
    """One delta a stream will write; ``retry`` means it is sent twice (same utc)."""

    stream_id: str
    frame: int
    utc: datetime
    payload: dict[str, Any]
    retry: bool


def stream_name(index: int, streams: int) -> str:
    return f"stream-{index + 1:0{max(2, len(str(streams)))}d}"


def agent_name(index: int) -> str:
    return f"agent-{index + 1:02d}"


def _agents(streams: int) -> int:
    return 4 + 2 * streams


def _post_pool(frame: int) -> range:
    """Post numbers in play at a frame: two new ones per frame, at most 20, so streams
    keep touching the same ones."""
    return range(1000 + max(0, 2 * frame - 16), 1004 + 2 * frame)


def _book(frame: int) -> tuple[str, int]:
    """The book chapters go to in a frame (a new one every two frames) and its target."""
    number = frame // 2
    return f"book-{number}", 3 + number % 3


def _base_slot(seed: int, streams: int, stream: int, frame: int, slot: int, first: bool) -> dict[str, Any]:
    """The content of one delta before cross-stream echoes are added."""
    rng = random.Random(f"{seed}:{stream}:{frame}:{slot}")
    me = stream_name(stream, streams)
    agents = [agent_name(i) for i in range(_agents(streams))]
    posts = _post_pool(frame)
    payload: dict[str, Any] = {"_meta": {"status": "ok", "demo": True, "slot": slot}}

    if slot == 0 or rng.random() < 0.6:  # posts: created by one stream, retitled by others
        number = rng.choice(posts)
        title = f"{rng.choice(TOPICS)} #{number} by {me} at frame {frame}"
        if slot == 0 or rng.random() < 0.5:
            author = rng.choice(agents)
            payload["posts_created"] = [
                {"number": number, "title": title, "channel": rng.choice(CHANNELS), "author": author}
            ]
        else:
            payload["posts_updated"] = [{"number": number, "title": title}]
    if rng.random() < 0.8:  # comments: with an id, or identified by their content
        comments = []
        for n in range(rng.randint(1, 2)):
            author, discussion = rng.choice(agents), rng.choice(posts)
            comment: dict[str, Any] = {
                "author": author,
                "discussion": discussion,
                "body": f"{author} on #{discussion}: {rng.choice(TOPICS)} ({rng.randint(1, 999)})",
            }
            if rng.random() < 0.75:
                comment = {"id": f"c-{frame}-{stream + 1}-{slot}-{n}", **comment}
            comments.append(comment)
        payload["comments_added"] = comments
    if rng.random() < 0.6:  # reactions: object form, or "NODE:TYPE" (author unknown)
        node, kind = f"post-{rng.choice(posts)}", rng.choice(REACTIONS)
        if rng.random() < 0.5:
            payload["reactions_added"] = [{"target": node, "type": kind, "author": rng.choice(agents)}]
        else:
            payload["reactions_added"] = [f"{node}:{kind}"]
    if rng.random() < 0.4:  # agent bios: last write wins
        agent = rng.choice(agents)
        payload["agents_updated"] = [
            {"id": agent, "bio": f"{agent}, as {me} saw it at frame {frame}", "mood": rng.choice(MOODS)}
        ]
    if slot == 0 or rng.random() < 0.4:  # chapters toward this frame's book
        book, target = _book(frame)
        payload["chapters"] = [
            {
                "book": book,
                "agent": rng.choice(agents),
                "chapter": rng.randint(1, target),
                "target": target,
                "title": f"on {rng.choice(TOPICS)}",
            }
        ]
    if rng.random() < 0.5:  # observations: every one kept
        payload["observations"] = [
            {"agent": rng.choice(agents), "note": f"{rng.choice(TOPICS)} seen", "score": rng.randint(1, 100)}
        ]
    if (first and stream == 0 and slot == 0) or rng.random() < 0.03:
        key, item = rng.choice(UNREADABLE)
        payload.setdefault(key, []).append(item)
    return payload


def plan_frame(
    seed: int, streams: int, deltas_per_frame: int, stream: int, frame: int, first_frame: int = 0
) -> list[PlannedDelta]:
    """The deltas stream ``stream`` (an index) writes in ``frame``, in a run from ``first_frame``.

    Pure: depends only on its arguments. The last delta also re-sends a comment
    with an id and one without an id from a neighbour stream's same frame (or,
    with a single stream, from its previous frame), so the dedupe rules bite.
    """
    first = frame == first_frame  # every run retries and quarantines something at least once
    slots = [_base_slot(seed, streams, stream, frame, j, first) for j in range(deltas_per_frame)]
    source = ((stream + 1) % streams, frame) if streams > 1 else (stream, frame - 1)
    if source[1] >= 0:
        theirs = [
            c
            for j in range(deltas_per_frame)
            for c in _base_slot(seed, streams, *source, j, source[1] == first_frame).get("comments_added", [])
        ]
        echoes = [
            next((c for c in theirs if "id" in c), None),
            next((c for c in theirs if "id" not in c), None),
        ]
        slots[-1].setdefault("comments_added", []).extend(c for c in echoes if c is not None)
    rng = random.Random(f"{seed}:{stream}:{frame}:clock")
    start = SIM_EPOCH + timedelta(minutes=frame)
    offsets = sorted(rng.sample(range(FRAME_SPAN_US), deltas_per_frame))
    return [
        PlannedDelta(
            stream_id=stream_name(stream, streams),
            frame=frame,
            utc=start + timedelta(microseconds=offset),
            payload=payload,
            retry=(first and stream == 0 and j == 0) or rng.random() < 0.06,
        )
        for j, (offset, payload) in enumerate(zip(offsets, slots, strict=True))
    ]


# -- running it -------------------------------------------------------------------


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
    return {"p50": round(percentile(ms, 50), 3), "p99": round(percentile(ms, 99), 3),
            "max": round(max(ms, default=0.0), 3)}  # fmt: skip


class _Fleet:
    """The stream tasks and the coordinator of one run, with their frame barrier."""

    def __init__(
        self, dsn: str, world: str, config: DemoConfig, first_frame: int,
        on_progress: Callable[[DemoProgress], None] | None,
    ) -> None:  # fmt: skip
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
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise map_db_error(exc) from exc
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


# -- the command ------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a simulated fleet end to end: N streams, an in-process merger, a summary",
        description="N streams write K deltas per frame (every merge rule exercised); a coordinator "
        "closes each frame and times close->merged; an in-process merger projects the state. "
        "Deterministic for a given --seed (except timing). Without --dsn or DREAMCATCHER_DSN it "
        "runs on a temporary embedded PostgreSQL.",
    )
    p.add_argument("--streams", type=_positive, default=8, metavar="N", help="writer streams (default 8)")
    p.add_argument("--frames", type=_positive, default=20, metavar="M", help="frames to run (default 20)")
    p.add_argument(
        "--deltas-per-frame",
        type=_positive,
        default=4,
        metavar="K",
        help="deltas per stream per frame (default 4)",
    )
    p.add_argument("--world", help="world to write to (default: a fresh demo-<8 hex>)")
    p.add_argument("--seed", type=int, default=7, help="seed of the simulated content (default 7)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    from .web.command import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo, embedded="temporary")


def cmd_demo(args: argparse.Namespace, dsn: str) -> int:
    from .settings import Settings

    config = DemoConfig(
        streams=args.streams,
        frames=args.frames,
        deltas_per_frame=args.deltas_per_frame,
        seed=args.seed,
        world=args.world,
    )
    if args.dsn or Settings.from_env().dsn:  # the user's server (the embedded one is set up already)
        from .schema import init_database

        asyncio.run(init_database(dsn))
    with _quiet(not args.verbose):
        if args.json or not sys.stdout.isatty():
            result = asyncio.run(run_demo(dsn, config))
        else:
            result = _run_with_progress(dsn, config)
    if args.json:
        import orjson

        print(orjson.dumps(result.as_dict()).decode())
    else:
        from rich.console import Console

        Console().print(_render(result))
    if args.web:
        from .web.command import run_demo_web

        return run_demo_web(dsn, result.world, args.web_port)
    return 0


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Without -v, the merger's and clients' INFO lines (one per merge) would bury the output."""
    loggers = [logging.getLogger(name) for name in ("dreamcatcher_pg.merger", "dreamcatcher_pg.client")]
    levels = [logger.level for logger in loggers]
    if enabled:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _run_with_progress(dsn: str, config: DemoConfig) -> DemoResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            unit = task.fields.get("unit")
            if not unit or task.speed is None:
                return Text("")
            return Text(f"{task.speed:,.0f} {unit}/s", style="progress.data.speed")

    with Progress(
        TextColumn("{task.description:<15}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
    ) as bars:
        frames = bars.add_task("frames merged", total=config.frames)
        deltas = bars.add_task(
            "deltas written", total=config.streams * config.frames * config.deltas_per_frame, unit="deltas"
        )

        def update(p: DemoProgress) -> None:
            bars.update(frames, completed=p.frames_merged)
            bars.update(deltas, completed=p.deltas_written)

        return asyncio.run(run_demo(dsn, config, on_progress=update))


def _render(result: DemoResult) -> Any:
    from rich.table import Table

    table = Table(title=f"dreamcatcher demo: world {result.world}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    lat, merge = result.close_to_merged_ms, result.merge_ms
    rows: list[tuple[str, str]] = [
        ("fleet", f"{result.streams} streams x {result.frames} frames x {result.deltas_per_frame} deltas"),
        ("seed", str(result.seed)),
        ("frames", f"{result.first_frame}..{result.last_frame}"),
        ("deltas written", f"{result.deltas_written:,}"),
        ("duplicates acknowledged", f"{result.duplicates_acknowledged:,}"),
        ("frames merged", f"{result.frames_merged} / {result.frames}"),
        ("wall time", f"{result.wall_seconds:.2f} s"),
        ("ingest rate", f"{result.ingest_rate:,.0f} deltas/s"),
        ("close->merged p50 / p99", f"{lat['p50']:.1f} / {lat['p99']:.1f} ms"),
        ("merge txn p50 / p99", f"{merge['p50']:.1f} / {merge['p99']:.1f} ms"),
    ]
    c = result.counts
    rows += [(name, f"{c[name]:,}") for name in ("posts", "comments", "reactions", "chapters")]
    rows.append(("books (compiled)", f"{c['books']:,} ({c['books_compiled']:,})"))
    rows += [(name, f"{c[name]:,}") for name in ("agents", "observations", "quarantine")]
    rows.append(("state hash (last frame)", result.state_hash or "-"))
    for name, value in rows:
        table.add_row(name, value)
    return table
