"""Time travel: the state at any frame, diffs, replay, portable snapshots, the git layout.

The Python API (async; every function takes a DSN or an open asyncpg connection,
and never closes a connection it did not open):

* :func:`state_at` -- the whole state (or one kind) right after a frame;
* :func:`diff` -- per entity, what was added, changed (field by field), removed;
* :func:`replay_verify` -- rebuild the projection from the log alone and compare
  every frame's hash, and the projection, with what is recorded (:mod:`.replay`);
* :func:`export_snapshot` / :func:`import_snapshot` -- one self-describing,
  verified archive of a world at a frame (:mod:`.snapshot`);
* :func:`export_dir` -- the log as ``frame-<N>-<stream>.json`` files, which
  ``dreamcatcher ingest`` reads back.

This module also holds the commands ``diff``, ``replay``, ``export``,
``import`` and ``export-dir`` (the only code here that prints).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .queries import query
from .replay import (
    ConnOrDsn,
    Divergence,
    FrameNotMergedError,
    Progress,
    ReplayReport,
    TimeTravelError,
    UnknownWorldError,
    connected,
    replay_verify,
)
from .settings import Settings
from .snapshot import (
    ExportDirError,
    ExportDirReport,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotReport,
    SnapshotVerificationError,
    WorldNotEmptyError,
    check_archive,
    export_dir,
    export_snapshot,
    import_snapshot,
)

__all__ = [
    "Diff", "Divergence", "EntityChange", "EntityState", "ExportDirError", "ExportDirReport",
    "FrameNotMergedError", "ReplayReport", "SnapshotCorruptError", "SnapshotError", "SnapshotFormatError",
    "SnapshotReport", "SnapshotVerificationError", "TimeTravelError", "UnknownWorldError",
    "WorldNotEmptyError", "check_archive", "diff", "export_dir", "export_snapshot", "import_snapshot",
    "register", "replay_verify", "state_at",
]  # fmt: skip

Change = Literal["added", "changed", "removed"]
_ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class EntityState:
    """One entity as it was right after a frame. ``key`` is its dedupe key as text."""

    kind: str
    key: str
    data: Any
    first_frame: int
    last_frame: int


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One entity that differs between two frames."""

    kind: str
    key: str
    change: Change
    before: Any  # None when added
    after: Any  # None when removed
    fields: tuple[str, ...]  # the fields that differ (changed entities that are objects)

    def field_changes(self) -> list[tuple[str, Any, Any]]:
        """(field, old, new) for each changed field; a side without the field gives ``None``."""
        before = self.before if isinstance(self.before, dict) else {}
        after = self.after if isinstance(self.after, dict) else {}
        return [(f, before.get(f), after.get(f)) for f in self.fields]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key}
        if self.change == "changed" and self.fields:
            before = self.before if isinstance(self.before, dict) else {}
            after = self.after if isinstance(self.after, dict) else {}
            doc["fields"] = {
                f: {k: v for k, v in (("before", before.get(f, _ABSENT)), ("after", after.get(f, _ABSENT)))
                    if v is not _ABSENT}
                for f in self.fields
            }  # fmt: skip
        if self.change != "added":
            doc["before"] = self.before
        if self.change != "removed":
            doc["after"] = self.after
        return doc


@dataclass
class Diff:
    """What changed in a world between the state after ``frame_a`` and the state after ``frame_b``."""

    world: str
    frame_a: int
    frame_b: int
    last_merged_frame: int | None
    changes: list[EntityChange] = field(default_factory=list)

    def by_kind(self) -> dict[str, dict[Change, list[EntityChange]]]:
        grouped: dict[str, dict[Change, list[EntityChange]]] = {}
        for c in self.changes:
            grouped.setdefault(c.kind, {"added": [], "changed": [], "removed": []})[c.change].append(c)
        return grouped

    def summary(self) -> dict[str, dict[str, int]]:
        return {k: {ch: len(v) for ch, v in g.items()} for k, g in self.by_kind().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world, "from": self.frame_a, "to": self.frame_b,
            "last_merged_frame": self.last_merged_frame, "summary": self.summary(),
            "changes": {k: {ch: [c.to_dict() for c in v] for ch, v in g.items()}
                        for k, g in self.by_kind().items()},
        }  # fmt: skip


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


async def state_at(
    conn_or_dsn: ConnOrDsn, world: str, frame: int, kind: str | None = None
) -> list[EntityState]:
    """Every entity of ``world`` (of ``kind`` only, when given: ``post``, ``comment``...) as it was
    right after ``frame`` merged, sorted by kind and key. Index-driven: the cost follows the size
    of the state, not the length of the history (``dreamcatcher.state_at``)."""
    async with connected(conn_or_dsn) as conn:
        rows = await conn.fetch(query("tt_state_at"), world, frame, kind)
    return [
        EntityState(r["kind"], r["ekey"], _json(r["data"]), r["first_frame"], r["last_frame"]) for r in rows
    ]


async def diff(conn_or_dsn: ConnOrDsn, world: str, frame_a: int, frame_b: int) -> Diff:
    """What was added, changed (field by field) and removed between the state after ``frame_a``
    and the state after ``frame_b`` (``frame_b`` < ``frame_a`` gives the reverse). Reads only
    the entities that changed in between (``dreamcatcher.entity_changes``, the same rows as
    ``dreamcatcher.diff``). Raises :class:`UnknownWorldError` for a world without frames. Needs
    only read access (the reader role)."""
    async with connected(conn_or_dsn) as conn:
        summary = await conn.fetchrow(query("tt_diff_summary"), world)
        assert summary is not None
        if not summary["known"]:
            raise UnknownWorldError(f"world {world!r} has no frames in this database")
        rows = await conn.fetch(query("tt_entity_changes"), world, frame_a, frame_b)
    result = Diff(world, frame_a, frame_b, summary["last_merged"])
    for r in rows:
        change = cast(Change, r["change"])
        result.changes.append(
            EntityChange(
                r["kind"], r["ekey"], change, _json(r["before"]), _json(r["after"]), tuple(r["fields"] or ())
            )
        )
    return result


# -- the commands ---------------------------------------------------------------------------


def _value(value: Any, limit: int = 70) -> Text:
    text = "—" if value is _ABSENT else orjson.dumps(value).decode()
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
                    Text("changed", "yellow") if i == 0 else "", Text(c.key) if i == 0 else "", Text(f),
                    _value(before.get(f, _ABSENT) if f else c.before),
                    _value(after.get(f, _ABSENT) if f else c.after),
                )  # fmt: skip
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
    world = Settings.from_env().world

    p = sub.add_parser(
        "diff", help="what changed between two frames: added / changed (field by field) / removed"
    )
    p.add_argument("--world", default=world, help="world (default: %(default)s)")
    p.add_argument("frame_a", metavar="A", type=int, help="from the state after frame A")
    p.add_argument("frame_b", metavar="B", type=int, help="to the state after frame B")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser(
        "replay",
        help="rebuild the projection from the log alone (nothing is written) and, with --verify, "
        "compare every frame's state hash and the projection with what is recorded",
        description="Exit status 1 when --verify finds a divergence: the first divergent frame and "
        "entity are reported.",
    )
    p.add_argument("--world", default=world, help="world (default: %(default)s)")
    p.add_argument("--to", type=int, metavar="N", help="replay frames up to N (default: the last merged)")
    p.add_argument("--verify", action="store_true", help="compare with the recorded hashes and projection")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "export", help="write a snapshot of a world at frame N: one verified, compressed archive"
    )
    p.add_argument("--world", default=world, help="world (default: %(default)s)")
    p.add_argument(
        "--frame", type=int, required=True, metavar="N", help="the frame (every frame <= N merged)"
    )
    p.add_argument("file", metavar="FILE", type=Path, help="archive to write (a .tar.gz)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export)

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
    p.add_argument("--world", default=world, help="world (default: %(default)s)")
    p.add_argument(
        "directory", metavar="DIR", type=Path, help="directory to write (no *.json files in it yet)"
    )
    p.add_argument("--to", type=int, metavar="N", help="only the deltas of frames up to N")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_export_dir)
