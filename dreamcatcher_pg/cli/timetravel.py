"""The time-travel commands: ``diff``, ``replay``, ``export``, ``import`` and ``export-dir``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..timetravel.gitdir import export_dir
from ..timetravel.replay import Progress, ReplayReport, replay_verify
from ..timetravel.snapshot import export_snapshot, import_snapshot
from ..timetravel.state import ABSENT, Diff, diff


def _value(value: Any, limit: int = 70) -> Text:
    text = "—" if value is ABSENT else orjson.dumps(value).decode()
    return Text(text if len(text) <= limit else text[: limit - 1] + "…")


@contextlib.contextmanager
def _progress(description: str, quiet: bool) -> Iterator[Progress | None]:
    """A progress bar on a terminal; nothing otherwise."""
    if quiet or not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress as Bar

    with Bar(transient=True) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _print_json(doc: Any) -> None:
    print(orjson.dumps(doc, option=orjson.OPT_INDENT_2, default=str).decode())


def render_diff(result: Diff) -> list[Table]:
    """One table per kind: added / changed (field: old -> new) / removed."""
    tables = []
    for kind, groups in sorted(result.by_kind().items()):
        counts = ", ".join(f"{len(v)} {ch}" for ch, v in groups.items())
        table = Table(title=f"{kind}: {counts}", title_justify="left")
        for column in ("change", "key", "field", "old", "new"):
            table.add_column(column, overflow="fold")
        for c in groups["added"]:
            table.add_row(Text("added", "green"), Text(c.key), "", "", _value(c.after))
        for c in groups["changed"]:
            before = c.before if isinstance(c.before, dict) else {}
            after = c.after if isinstance(c.after, dict) else {}
            for i, f in enumerate(c.fields or ("",)):
                table.add_row(
                    Text("changed", "yellow") if i == 0 else "",
                    Text(c.key) if i == 0 else "",
                    Text(f),
                    _value(before.get(f, ABSENT) if f else c.before),
                    _value(after.get(f, ABSENT) if f else c.after),
                )
        for c in groups["removed"]:
            table.add_row(Text("removed", "red"), Text(c.key), "", _value(c.before), "")
        tables.append(table)
    return tables


def cmd_diff(args: argparse.Namespace, dsn: str) -> int:
    result = asyncio.run(diff(dsn, args.world, args.frame_a, args.frame_b))
    if args.json:
        _print_json(result.to_dict())
        return 0
    console = Console()
    head = f"world {result.world!r}: frame {result.frame_a} -> frame {result.frame_b}"
    last = result.last_merged_frame
    if last is None:
        head += " (no frame is merged yet)"
    elif max(result.frame_a, result.frame_b) > last:
        head += f" (frames after {last} are not merged: their state is the one after {last})"
    console.print(Text(head, style="bold"))
    if not result.changes:
        console.print("no change")
    for table in render_diff(result):
        console.print(table)
    return 0


def _replay_lines(report: ReplayReport) -> list[str]:
    span = f"frames {report.first_frame}..{report.last_frame}" if report.frames else "no merged frame"
    lines = [
        f"replay of world {report.world!r}: {report.frames} frames ({span}), "
        f"{report.deltas} deltas, {report.seconds:.2f} s",
    ]
    if report.frames:
        lines.append(f"final state hash {report.final_hash}")
    if not report.verified:
        lines.append("not compared with the recorded state (add --verify)")
    elif report.divergence is None:
        lines.append(
            "OK: every frame's state hash matches the recorded one; the projection equals the replay"
        )
    else:
        d = report.divergence
        lines.append(f"DIVERGED at frame {d.frame}: {d.reason}")
        if d.kind is not None:
            lines.append(
                f"  entity: {d.kind} {d.key}" + (f" (fields: {', '.join(d.fields)})" if d.fields else "")
            )
            lines.append(f"  recorded: {orjson.dumps(d.recorded).decode()}")
            lines.append(f"  replayed: {orjson.dumps(d.replayed).decode()}")
        if d.recorded_hash != d.replayed_hash:
            lines.append(f"  state hash: recorded {d.recorded_hash}, replayed {d.replayed_hash}")
        if report.hash_mismatches:
            lines.append(f"  frames whose hash differs: {report.hash_mismatches}")
    return lines


def cmd_replay(args: argparse.Namespace, dsn: str) -> int:
    with _progress("replaying frames", args.json) as progress:
        report = asyncio.run(
            replay_verify(dsn, args.world, to_frame=args.to, verify=args.verify, on_progress=progress)
        )
    if args.json:
        _print_json(report.to_dict())
    else:
        for line in _replay_lines(report):
            print(line)
    return 0 if report.ok else 1


def cmd_export(args: argparse.Namespace, dsn: str) -> int:
    with _progress("exporting", args.json) as progress:
        report = asyncio.run(export_snapshot(dsn, args.world, args.frame, args.file, on_progress=progress))
    if args.json:
        _print_json(report.to_dict())
    else:
        print(
            f"exported world {report.world!r} at frame {report.frame} to {report.path}: "
            f"{report.frames} frames, "
            f"{report.deltas} deltas, {report.entities} entities, {report.bytes} bytes; "
            f"state hash {report.state_hash}"
        )
    return 0


def cmd_import(args: argparse.Namespace, dsn: str) -> int:
    with _progress("merging frames", args.json) as progress:
        report = asyncio.run(import_snapshot(dsn, args.file, world=args.world, on_progress=progress))
    if args.json:
        _print_json(report.to_dict())
    else:
        print(
            f"imported {report.path} into world {report.world!r}: {report.frames} frames merged and verified "
            f"(every state hash equals the archive's), {report.deltas} deltas, {report.entities} entities; "
            f"state hash at frame {report.frame}: {report.state_hash}"
        )
    return 0


def cmd_export_dir(args: argparse.Namespace, dsn: str) -> int:
    with _progress("writing delta files", args.json) as progress:
        report = asyncio.run(
            export_dir(dsn, args.world, args.directory, to_frame=args.to, on_progress=progress)
        )
    if args.json:
        _print_json(report.to_dict())
        return 0
    print(
        f"wrote {report.files} delta files of {report.frames} frames of world {report.world!r} "
        f"to {report.directory}"
    )
    if report.late:
        print(
            f"note: {report.late} late (deferred) deltas will be merged into their own frame by ingest, "
            "not into the later frame that merged them here"
        )
    for item in report.not_ingestable:
        print(f"warning: {item['file']}: ingest will not read it back: {item['reason']}")
    return 0


def register(sub: Any) -> None:
    """Add ``diff``, ``replay``, ``export``, ``import`` and ``export-dir`` to the ``dreamcatcher`` parser."""
    world_help = "world (default: $DREAMCATCHER_WORLD or default)"

    p = sub.add_parser(
        "diff", help="what changed between two frames: added / changed (field by field) / removed"
    )
    p.add_argument("--world", help=world_help)
    p.add_argument("frame_a", metavar="A", type=int, help="from the state after frame A")
    p.add_argument("frame_b", metavar="B", type=int, help="to the state after frame B")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_diff, world_from_env=True)

    p = sub.add_parser(
        "replay",
        help="rebuild the projection from the log alone (nothing is written) and, with --verify, "
        "compare every frame's state hash and the projection with what is recorded",
        description="Exit status 1 when --verify finds a divergence: the first divergent frame and "
        "entity are reported.",
    )
    p.add_argument("--world", help=world_help)
    p.add_argument("--to", type=int, metavar="N", help="replay frames up to N (default: the last merged)")
    p.add_argument("--verify", action="store_true", help="compare with the recorded hashes and projection")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_replay, world_from_env=True)

    p = sub.add_parser(
        "export", help="write a snapshot of a world at frame N: one verified, compressed archive"
    )
    p.add_argument("--world", help=world_help)
    p.add_argument(
        "--frame", type=int, required=True, metavar="N", help="the frame (every frame <= N merged)"
    )
    p.add_argument("file", metavar="FILE", type=Path, help="archive to write (a .tar.gz)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export, world_from_env=True)

    p = sub.add_parser(
        "import",
        help="load a snapshot into this database (an empty one too): replays its log and verifies "
        "every hash; all or nothing",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="archive written by dreamcatcher export")
    p.add_argument("--world", help="import under this world name (default: the snapshot's world)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "export-dir",
        help="write a world's log as frame-N-<stream>.json files (the git layout); "
        "dreamcatcher ingest reads them back",
    )
    p.add_argument("--world", help=world_help)
    p.add_argument(
        "directory", metavar="DIR", type=Path, help="directory to write (no *.json files in it yet)"
    )
    p.add_argument("--to", type=int, metavar="N", help="only the deltas of frames up to N")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export_dir, world_from_env=True)
