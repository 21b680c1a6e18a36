"""The ``demo`` command: a simulated fleet with a progress bar and a summary."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from ..demo.fleet import DemoConfig, DemoProgress, DemoResult, run_demo


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
    from .web import add_demo_arguments

    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo, embedded="temporary")


def cmd_demo(args: argparse.Namespace, dsn: str) -> int:
    config = DemoConfig(
        streams=args.streams,
        frames=args.frames,
        deltas_per_frame=args.deltas_per_frame,
        seed=args.seed,
        world=args.world,
    )
    if not getattr(args, "server_is_embedded", False):  # the user's server (the embedded one is set up)
        from ..ops.schema import init_database

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
        from .web import run_demo_web

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
