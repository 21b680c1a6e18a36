"""The ``status`` command: the facts of each world as a rich table, as JSON, or watched live.

The facts come from :func:`dreamcatcher_pg.ops.status.collect_status`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable

import orjson
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..errors import DRIVER_ERRORS, DreamcatcherError
from ..models import WorldStatus
from ..ops.status import STALE_HEARTBEAT, collect_status

log = logging.getLogger(__name__)


#: Below this console width, ``render_status`` stacks one small table per world.
WIDE_LAYOUT = 150

_COLUMNS = (
    "world",
    "frames open/closed/merged",
    "last merged",
    "merge lag",
    "open frame",
    "late attempts",
    "quarantined",
    "unmerged keys",
    "leader",
    "fences held by",
)


def _cells(w: WorldStatus) -> list[str | Text]:
    late = f"{w.late_attempts}" + (f" ({w.late_deferred} deferred)" if w.late_deferred else "")
    return [
        w.world,
        f"{w.frames_open}/{w.frames_closed}/{w.frames_merged}",
        _last_merged(w),
        _lag(w),
        _open_frame(w),
        late,
        str(w.quarantined),
        _keys(w.unmerged_keys),
        _leader(w),
        _holders(w),
    ]


def _holders(w: WorldStatus) -> str | Text:
    """The sessions idle while they hold one of the world's fences (they hold frames open)."""
    idle = [h for h in w.fence_holders if str(h["state"]).startswith("idle")]
    if not idle:
        return "-"
    parts = [
        f"pid {h['pid']} ({h['stream'] or h['session'] or h['user']}, {h['state']} "
        f"{_seconds(h['idle_seconds'] or 0.0)}, {', '.join(h['holds'])})"
        for h in idle
    ]
    return Text("; ".join(parts), style="red" if any(h["over_limit"] for h in idle) else "yellow")


def render_status(worlds: list[WorldStatus], width: int | None = None) -> RenderableType:
    """One table row per world; on a console narrower than ``WIDE_LAYOUT``, one table per world."""
    if not worlds:
        return Text("no worlds yet: a world appears with its first delta (or `dreamcatcher world W`)")
    if width is not None and width < WIDE_LAYOUT:
        tables = []
        for w in worlds:
            table = Table(title=f"world {w.world}", title_justify="left", show_header=False)
            table.add_column("fact", style="bold")
            table.add_column("value", overflow="fold")
            for name, cell in zip(_COLUMNS[1:], _cells(w)[1:], strict=True):
                table.add_row(name, cell)
            tables.append(table)
        return Group(*tables)
    table = Table(title="dreamcatcher worlds", title_justify="left")
    for column in _COLUMNS:
        table.add_column(column, overflow="fold")
    for w in worlds:
        table.add_row(*_cells(w))
    return table


def _last_merged(w: WorldStatus) -> str:
    last = w.last_merged_frame
    if not last:
        return "-"
    text = f"#{last['frame']}: {last['delta_count']} deltas"
    if last.get("close_to_merged_seconds") is not None:
        text += f", close→merged {_seconds(last['close_to_merged_seconds'])}"
    return text


def _lag(w: WorldStatus) -> Text:
    frames = int(w.merge_lag_frames)
    if frames == 0:
        return Text("0")
    return Text(f"{frames} frames, {_seconds(w.merge_lag_seconds)}", style="yellow")


def _open_frame(w: WorldStatus) -> str:
    if w.open_frame is None:
        return "-"
    seen, expected = w.streams_in_open_frame, w.expected_streams
    text = f"#{w.open_frame}: {len(seen)}"
    text += f"/{len(expected)} expected streams" if expected else " streams"
    text += f", {w.open_frame_deltas} deltas"
    if w.missing_streams:
        missing = ", ".join(w.missing_streams[:5]) + (" …" if len(w.missing_streams) > 5 else "")
        text += f"; waiting for {missing}"
    return text


def _keys(keys: dict[str, int]) -> str:
    text = ", ".join(f"{k} x{n}" for k, n in sorted(keys.items())) or "-"
    return text if len(text) <= 60 else text[:59] + "…"


def _leader(w: WorldStatus) -> Text:
    if not w.leader:
        return Text("none", style="red")
    age = w.heartbeat_age
    if not w.leader_alive:
        return Text(f"none (last: {w.leader}, {_seconds(age)} ago)", style="red")
    style = "yellow" if age is not None and age > STALE_HEARTBEAT else ""
    return Text(f"{w.leader} (heartbeat {_seconds(age)} ago)", style=style)


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.0f} min"


def status_json(worlds: list[WorldStatus]) -> str:
    """The ``--json`` form: a JSON array of the worlds' facts, on one line."""
    return orjson.dumps([w.to_dict() for w in worlds], default=str).decode()


def watch_status(
    dsn: str,
    world: str | None,
    *,
    interval: float,
    json_lines: bool,
    write: Callable[[str], None],
    iterations: int | None = None,
) -> None:
    """Refresh until interrupted (or ``iterations`` refreshes).

    With ``json_lines``: one JSON array per refresh, one per line, through ``write``
    (for scripts: ``status --watch --json | jq``); otherwise a live rich table,
    redrawn in place on a terminal. When the database cannot be read, it says so
    (a warning in the log, or a line under the last table) and keeps trying.
    """

    async def loop(update: Callable[[list[WorldStatus] | Exception], None]) -> None:
        count = 0
        while iterations is None or count < iterations:
            try:
                update(await collect_status(dsn, world))
            except (*DRIVER_ERRORS, DreamcatcherError) as exc:
                update(exc)  # the database went away: say so, and keep trying
            count += 1
            if iterations is None or count < iterations:
                await asyncio.sleep(interval)

    if json_lines:

        def write_line(worlds: list[WorldStatus] | Exception) -> None:
            if isinstance(worlds, Exception):
                log.warning("status: cannot read the database: %s", worlds)
            else:
                write(status_json(worlds))

        asyncio.run(loop(write_line))
        return
    from datetime import datetime

    from rich.console import Console
    from rich.live import Live

    console = Console()
    with Live(console=console, refresh_per_second=4, auto_refresh=False) as live:
        last: RenderableType = Text("")

        def update(worlds: list[WorldStatus] | Exception) -> None:
            nonlocal last
            stamp = Text(f"{datetime.now():%H:%M:%S} · every {interval:g} s · Ctrl-C to stop", style="dim")
            if isinstance(worlds, Exception):
                error = Text(f"cannot read the database: {worlds} (showing the last status)", style="red")
                live.update(Group(last, error, stamp), refresh=True)
            else:
                last = render_status(worlds, console.width)
                live.update(Group(last, stamp), refresh=True)

        asyncio.run(loop(update))


def cmd_status(args: argparse.Namespace, dsn: str) -> int:
    if args.watch:
        with contextlib.suppress(KeyboardInterrupt):
            watch_status(
                dsn,
                args.world,
                interval=args.interval,
                json_lines=args.json,
                write=lambda line: print(line, flush=True),
            )
        return 0
    from ..ops.health import HealthCode, check_health

    health = asyncio.run(check_health(dsn, args.world, max_lag=args.max_lag))
    if health.code in (HealthCode.DATABASE, HealthCode.SCHEMA):  # no database, no schema: nothing to show
        print(f"dreamcatcher: error: {health.message.removeprefix('unhealthy: ')}", file=sys.stderr)
        return int(health.code)
    worlds = asyncio.run(collect_status(dsn, args.world))
    if args.json:
        print(status_json(worlds))
    else:
        from rich.console import Console

        console = Console()
        console.print(render_status(worlds, console.width))
    if not health.healthy:  # the same rules and exit codes as `dreamcatcher healthcheck`
        print(f"dreamcatcher: {health.message}", file=sys.stderr)
    return int(health.code)
