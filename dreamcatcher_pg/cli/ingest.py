"""The ``ingest`` command: load a directory of delta files, print the report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from ..ingest import IngestReport, ingest_directory
from ..settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="load a directory of frame-N-<stream>.json delta files, then close and merge their frames",
        description="Load every *.json file of DIR (not recursive) as a delta of world W. Unreadable "
        "files and conflicting deltas are quarantined (dreamcatcher.quarantine) and do not fail the "
        "command. Exit status 1 when a frame did not merge within --timeout or a delta was refused "
        "as late.",
    )
    p.add_argument("directory", metavar="DIR", type=Path, help="directory of delta files")
    p.add_argument("--world", help="world to load into (default: $DREAMCATCHER_WORLD or default)")
    p.add_argument(
        "--no-merge", dest="merge", action="store_false", help="only insert: do not close or merge"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the merge (default 30)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ingest, world_from_env=True)


def cmd_ingest(args: argparse.Namespace, dsn: str) -> int:
    max_bytes = Settings.from_env().max_payload_bytes
    if sys.stdout.isatty() and not args.json:
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("reading delta files", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)
                if done == total:  # the bar is over files; storing and merging log their own lines
                    progress.stop()

            report = asyncio.run(_run(args, dsn, max_bytes, advance))
    else:
        report = asyncio.run(_run(args, dsn, max_bytes, None))
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        from rich.console import Console

        Console().print(render_report(report))
    return 0 if report.ok else 1


async def _run(
    args: argparse.Namespace, dsn: str, max_bytes: int, on_progress: Callable[[int, int], None] | None
) -> IngestReport:
    return await ingest_directory(
        dsn,
        args.directory,
        args.world,
        merge=args.merge,
        timeout=args.timeout,
        max_bytes=max_bytes,
        on_progress=on_progress,
    )


def _frames(frames: Iterable[int]) -> str:
    listed = [str(f) for f in frames]
    return (", ".join(listed[:12]) + (f" ... ({len(listed)})" if len(listed) > 12 else "")) or "-"


def render_report(report: IngestReport) -> Table:
    """The report as a short rich table."""
    table = Table(title=f"ingest {report.directory} -> world {report.world!r}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("result")
    table.add_row(
        "files", f"{report.files_seen} seen, {report.ignored} ignored, {len(report.unreadable)} unreadable"
    )
    table.add_row(
        "deltas",
        f"{report.stored} stored, {report.duplicate} duplicate, {report.late} late, "
        f"{report.deferred} deferred, {report.conflict} conflict",
    )
    if report.notes:
        table.add_row(
            "notes", f"{len(report.notes)} (document/name disagreements, utc fallbacks: see --json)"
        )
    for u in report.unreadable[:10]:
        table.add_row("  unreadable", f"{u['file']}: {u['reason']}")
    if len(report.unreadable) > 10:
        table.add_row(
            "  unreadable", f"... and {len(report.unreadable) - 10} more (see dreamcatcher.quarantine)"
        )
    if report.merge:
        table.add_row("frames closed", _frames(report.frames_closed))
        table.add_row("frames merged", _frames(report.frames_merged))
        if report.frames_unmerged:
            blocked = (
                f" (held back by open frame {report.blocked_by})" if report.blocked_by is not None else ""
            )
            table.add_row("NOT merged", _frames(report.frames_unmerged) + blocked)
        table.add_row("quarantined by merge", str(report.merge_quarantined))
        keys = ", ".join(f"{k} x{n}" for k, n in report.unmerged_keys.items()) or "-"
        table.add_row("unmerged keys", keys if len(keys) <= 100 else keys[:97] + "...")
    else:
        table.add_row("frames", _frames(report.frames) + " (not closed: --no-merge)")
    return table
