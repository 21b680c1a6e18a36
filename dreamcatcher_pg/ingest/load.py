"""Loading a directory of delta files: read it, append every readable delta, quarantine
what cannot be stored, close the ingested frames and merge them.

Parsing one file is :mod:`.parse` (pure); the command is :mod:`dreamcatcher_pg.cli.ingest`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from ..db.connect import connect
from ..db.queries import query
from ..errors import DRIVER_ERRORS, ConnectionLostError, map_db_error
from ..merger import Merger
from ..settings import DEFAULT_MAX_PAYLOAD_BYTES
from ..validation import batch_bounds, validate_identity
from .parse import ParsedDelta, Unreadable, parse_delta_file, parse_file_name
from .report import IngestReport

log = logging.getLogger(__name__)

#: Deltas appended per call of ``dreamcatcher.append_deltas``.
BATCH_SIZE = 500


# -- reading a directory (blocking I/O) -------------------------------------------


def _safe_text(text: str) -> str:
    """Text PostgreSQL accepts: undecodable file-name bytes and NULs replaced."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "\ufffd")


def read_directory(
    directory: Path,
    *,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[ParsedDelta | Unreadable], int, int]:
    """Parse every regular ``*.json`` file of ``directory`` (not recursive, sorted by name).

    Symbolic links are never followed and other entries that are not regular files (a
    directory, a FIFO, a device) are never opened: they are counted as ignored, and a link
    named like a delta file is logged (its target could be any file the process may read).
    A file is opened without following links and read no further than ``max_bytes``.
    Returns (parsed files, entries seen, entries ignored). ``on_progress(done, total)``
    is called after each file.
    """
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    files = []
    for entry in entries:
        if not entry.name.lower().endswith(".json"):
            continue
        if entry.is_symlink():
            log.warning("%s: a symbolic link; not followed", _safe_text(entry.name))
        elif entry.is_file(follow_symlinks=False):
            files.append(Path(entry.path))
    results: list[ParsedDelta | Unreadable] = []
    for done, path in enumerate(files, 1):
        name = _safe_text(path.name)
        result: ParsedDelta | Unreadable
        try:
            result = _read_file(path, name, max_bytes)
        except OSError as exc:
            result = Unreadable(
                name, "io", f"cannot read the file: {exc.strerror or exc}", *parse_file_name(name)
            )
        results.append(result)
        if on_progress is not None:
            on_progress(done, len(files))
    return results, len(entries), len(entries) - len(files)


def _read_file(path: Path, name: str, max_bytes: int) -> ParsedDelta | Unreadable:
    """One file, opened without following a link (a link swapped in since the directory was
    listed fails to open), checked to be regular, and read up to ``max_bytes`` + 1 bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return Unreadable(name, "io", "not a regular file; not read", *parse_file_name(name))
        if info.st_size > max_bytes:  # not even read
            frame, stream = parse_file_name(name)
            reason = f"the file is {info.st_size} bytes, over the limit of {max_bytes}"
            return Unreadable(name, "too_large", reason, frame, stream, None, info.st_size)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # (it grew since)
        frame, stream = parse_file_name(name)
        reason = f"the file is over {max_bytes} bytes, the limit"
        return Unreadable(name, "too_large", reason, frame, stream, None, len(data))
    return parse_delta_file(name, data, max_bytes=max_bytes)


# -- storing, closing, merging ------------------------------------------------------


async def _append_batch(
    conn: asyncpg.Connection, world: str, stream: str, batch: list[ParsedDelta]
) -> list[str]:
    """Append one batch of one stream; statuses in order. A batch the database refuses
    is retried delta by delta, and a delta it still refuses gets status ``rejected: ...``."""
    texts = [d.text if d.text is not None else orjson.dumps(d.payload).decode() for d in batch]
    try:
        statuses = await conn.fetchval(
            query("append_deltas"), world, stream, [d.frame for d in batch], [d.utc for d in batch], texts
        )
        return [str(s) for s in statuses]
    except asyncpg.PostgresError as exc:
        err = map_db_error(exc)
        if isinstance(err, ConnectionLostError):
            raise err from exc
        if len(batch) == 1:
            return [f"rejected: {exc}"]
        log.warning(
            "batch of %d deltas of stream %r refused (%s); appending one by one", len(batch), stream, exc
        )
    return [s for d in batch for s in await _append_batch(conn, world, stream, [d])]


async def _store(conn: asyncpg.Connection, world: str, deltas: list[ParsedDelta]) -> list[str]:
    """Append every delta (one batch per stream and round); statuses in input order.

    Deltas sharing a key within a stream go in successive rounds, so the database
    itself judges the second one duplicate or conflict against the first."""
    statuses: list[str] = [""] * len(deltas)
    by_stream: dict[str, list[int]] = defaultdict(list)
    for index, delta in enumerate(deltas):
        by_stream[delta.stream_id].append(index)
    for stream in sorted(by_stream):
        rounds: list[list[int]] = []
        seen: dict[tuple[int, datetime], int] = defaultdict(int)
        for index in by_stream[stream]:
            key = (deltas[index].frame, deltas[index].utc)
            if seen[key] == len(rounds):
                rounds.append([])
            rounds[seen[key]].append(index)
            seen[key] += 1
        for indexes in rounds:
            for start, end in batch_bounds([deltas[i].frame for i in indexes], BATCH_SIZE):
                chunk = indexes[start:end]
                got = await _append_batch(conn, world, stream, [deltas[i] for i in chunk])
                for index, status in zip(chunk, got, strict=True):
                    statuses[index] = status
    return statuses


async def _frame_rows(conn: asyncpg.Connection, world: str, frames: list[int]) -> dict[int, asyncpg.Record]:
    return {int(r["frame"]): r for r in await conn.fetch(query("ingest_frames"), world, frames)}


async def _merge(
    dsn: str, conn: asyncpg.Connection, world: str, frames: list[int], timeout: float, poll: float
) -> None:
    """Merge (leading if no other merger does) until ``frames`` are merged or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    merger = Merger(dsn, world, poll_interval=poll)
    try:
        while True:
            await merger.run_until_idle()
            rows = await _frame_rows(conn, world, frames)
            pending = [f for f in frames if f not in rows or rows[f]["status"] != "merged"]
            if not pending:
                return
            if loop.time() >= deadline:
                log.warning("world %r: frames %s not merged within %ss", world, pending, timeout)
                return
            if not merger.stats.is_leader:
                log.info("another merger leads world %r; waiting for frames %s", world, pending)
            await asyncio.sleep(min(poll, max(0.0, deadline - loop.time())))
    finally:
        await merger.aclose()


_QuarantineRow = tuple[int | None, str | None, datetime | None, str, dict[str, Any]]


def _account(
    report: IngestReport, deltas: list[ParsedDelta], statuses: list[str], bad: list[Unreadable]
) -> list[_QuarantineRow]:
    """Count the outcomes into ``report``; return the quarantine rows (conflicts, unreadable files)."""
    rows: list[_QuarantineRow] = []
    item: dict[str, Any]
    details: dict[str, Any]
    for delta, status in zip(deltas, statuses, strict=True):
        outcome = {
            "file": delta.file,
            "frame": delta.frame,
            "stream_id": delta.stream_id,
            "utc": delta.utc.isoformat(),
            "status": status.partition(":")[0],
        }
        report.deltas.append(outcome)
        if status == "stored":
            report.stored += 1
        elif status == "duplicate":
            report.duplicate += 1
        elif status == "late":
            report.late += 1
        elif status == "deferred":
            report.deferred += 1
        elif status == "conflict":
            report.conflict += 1
            report.conflicts.append(outcome)
            reason = "ingest: conflict: another delta with this (frame, stream_id, utc) is already stored"
            log.warning("%s: %s", delta.file, reason)
            item = {"file": delta.file, "error": "conflict", "payload": delta.payload}
            rows.append((delta.frame, delta.stream_id, delta.utc, reason, item))
        else:  # "rejected: <the database's message>"
            reason = f"the database refused the delta: {status.removeprefix('rejected: ')}"
            bad.append(Unreadable(delta.file, "rejected", reason, delta.frame, delta.stream_id))
    for u in bad:
        log.warning("%s: unreadable: %s", u.file, u.reason)
        report.unreadable.append({"file": u.file, "reason": u.reason})
        details = {"file": u.file, "error": u.code, "size": u.size, "text": u.text}
        rows.append((u.frame, u.stream_id, None, f"ingest: unreadable delta file: {u.reason}", details))
    return rows


async def ingest_directory(
    dsn: str,
    directory: Path | str,
    world: str = "default",
    *,
    merge: bool = True,
    timeout: float = 30.0,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    poll_interval: float = 0.2,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Ingest a directory of delta files into ``world``; see the module docstring."""
    validate_identity(world, "ingest")
    directory = Path(directory)
    files, seen, ignored = await asyncio.to_thread(
        read_directory, directory, max_bytes=max_bytes, on_progress=on_progress
    )
    report = IngestReport(
        world=world, directory=str(directory), files_seen=seen, ignored=ignored, merge=merge
    )
    deltas = [f for f in files if isinstance(f, ParsedDelta)]
    bad = [f for f in files if isinstance(f, Unreadable)]
    for delta in deltas:
        for note in delta.notes:
            log.warning("%s: %s", delta.file, note)
            report.notes.append({"file": delta.file, "note": note})
    conn = await connect(dsn, application_name="dreamcatcher ingest")
    try:
        from ..rules.store import apply_directory_rules  # rules-from-frame-N.toml (export-dir)

        await apply_directory_rules(conn, world, directory)
        statuses = await _store(conn, world, deltas)
        quarantine = _account(report, deltas, statuses, bad)
        if quarantine:
            added = await conn.fetchval(
                query("ingest_quarantine"),
                world,
                [q[0] for q in quarantine],
                [q[1] for q in quarantine],
                [q[2] for q in quarantine],
                [q[3] for q in quarantine],
                [orjson.dumps(q[4]).decode() for q in quarantine],
            )
            report.quarantine_rows_added = int(added)
        report.frames = sorted(
            {d.frame for d, s in zip(deltas, statuses, strict=True) if s in ("stored", "duplicate")}
        )
        if merge and report.frames:
            for frame in report.frames:
                if await conn.fetchval(query("close_frame"), world, frame, "ingest") == "closed":
                    report.frames_closed.append(frame)
            await _merge(dsn, conn, world, report.frames, timeout, poll_interval)
            _collect(report, await _frame_rows(conn, world, report.frames))
            if report.frames_unmerged:
                report.blocked_by = await conn.fetchval(
                    query("ingest_blocking_frame"), world, report.frames_unmerged[0]
                )
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
    finally:
        await conn.close()
    return report


def _collect(report: IngestReport, rows: dict[int, asyncpg.Record]) -> None:
    keys: dict[str, int] = defaultdict(int)
    for frame in report.frames:
        row = rows.get(frame)
        if row is None or row["status"] != "merged":
            report.frames_unmerged.append(frame)
            continue
        report.frames_merged.append(frame)
        report.frame_hashes[frame] = row["state_hash"]
        stats = orjson.loads(row["stats"]) if row["stats"] else {}
        report.merge_quarantined += int(stats.get("quarantined", 0))
        for key, count in (stats.get("unmerged_keys") or {}).items():
            keys[key] += int(count)
    report.unmerged_keys = dict(sorted(keys.items()))
