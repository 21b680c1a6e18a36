"""``dreamcatcher ingest DIR``: load a directory of delta files written by a fleet.

Real fleets write one file per delta, named ``frame-<N>-<stream>.json``, in
shapes that vary (DESIGN.md §6). Three layers:

* :func:`parse_delta_file` — pure: a file name and its bytes become either a
  :class:`ParsedDelta` or an :class:`Unreadable` with its reason. No I/O.
* :func:`read_directory` and :func:`ingest_directory` — the I/O: read the
  directory, append every readable delta with ``dreamcatcher.append_deltas``
  (one batch per stream), quarantine what cannot be stored, close the ingested
  frames and merge them.
* :func:`register` — the CLI command, the only part that prints.

Rules of the envelope:

* ``frame`` and ``stream_id`` come from the document; the file name is only the
  fallback when they are missing (``null`` counts as missing). A document that
  disagrees with its file name wins, and the disagreement is logged and noted.
  ``frame`` may be a string of digits; a negative, non-integer or too large
  frame makes the file unreadable. A stream taken from the file name is
  NFC-normalised (macOS file systems hand out decomposed names).
* ``utc`` (the delta's identity clock) comes from the document's ``utc``, else
  ``_meta.timestamp``, else ``completed_at`` (ISO 8601, ``Z`` allowed, a naive
  time is UTC; a value that does not parse is skipped with a note). When none
  is usable it is :data:`FALLBACK_UTC`, the Unix epoch: fixed and
  deterministic, so a re-ingest finds the same key. Never the file's mtime.
* The stored payload is the whole document as it is; the merge ignores the
  envelope keys.

The walk is not recursive: the directory's entries are taken in sorted name
order, and anything that is not a regular ``*.json`` file (suffix in any case)
is ignored and counted. When two files hold the same (frame, stream, utc) with
different payloads, the first in name order is stored and the other is a
conflict, quarantined with its payload.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import stat
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from rich.table import Table

from .errors import DRIVER_ERRORS, ConnectionLostError, map_db_error
from .merger import Merger
from .models import MAX_DEPTH, MAX_FRAME, batch_bounds, validate_identity
from .queries import query
from .settings import DEFAULT_MAX_PAYLOAD_BYTES, Settings

log = logging.getLogger(__name__)

#: The ``utc`` of a delta whose document carries no usable timestamp.
FALLBACK_UTC = datetime(1970, 1, 1, tzinfo=UTC)
#: Where ``utc`` is looked for, in order.
UTC_SOURCES = ("utc", "_meta.timestamp", "completed_at")
#: How much of an unreadable file's text goes into its quarantine row.
PREVIEW_CHARS = 1000
MAX_STREAM_LEN = 200
BATCH_SIZE = 500

_FILE_NAME = re.compile(r"frame-([0-9]+)-(.+)\.json", re.IGNORECASE | re.DOTALL)
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class ParsedDelta:
    """A readable delta file: world-independent, ready to append."""

    file: str
    frame: int
    stream_id: str
    utc: datetime
    utc_source: str  # one of UTC_SOURCES, or "fallback"
    payload: dict[str, Any]
    notes: tuple[str, ...] = ()
    #: the document as written (stored as it is: jsonb keeps numbers orjson would round)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file that cannot become a delta. ``frame``/``stream_id`` come from its name, if it matches."""

    file: str
    #: empty | too_large | not_utf8 | nul | not_json | not_object | too_deep | frame | stream | io | rejected
    code: str
    reason: str
    frame: int | None = None
    stream_id: str | None = None
    text: str | None = None  # the first PREVIEW_CHARS characters, when the bytes decode
    size: int = 0


# -- parsing (pure) -------------------------------------------------------------


def parse_file_name(name: str) -> tuple[int | None, str | None]:
    """``frame-<N>-<stream>.json`` -> (N, stream); None for what the name does not give."""
    match = _FILE_NAME.fullmatch(name)
    if match is None:
        return None, None
    frame = int(match.group(1))
    stream = unicodedata.normalize("NFC", match.group(2))
    return (frame if frame <= MAX_FRAME else None), (stream if _stream_problem(stream) is None else None)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 string as an aware UTC datetime (naive means UTC); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if parsed.replace(tzinfo=None) in (datetime.min, datetime.max):
        return None  # the driver would send -infinity / infinity: not a time a delta was written at
    return parsed


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_frame(value: Any) -> int | str:
    """The frame, or why it is unreadable."""
    if isinstance(value, bool):
        return f"frame {value!r} is not an integer"
    if isinstance(value, float):
        if not value.is_integer():
            return f"frame {_short(value)} is not an integer"
        value = int(value)
    elif isinstance(value, str):
        if not _DIGITS.fullmatch(value.strip()):
            body = value.strip()
            if body.startswith("-") and _DIGITS.fullmatch(body[1:]):
                return f"frame {_short(value)} is negative"
            return f"frame {_short(value)} is not an integer"
        value = int(value.strip())
    if not isinstance(value, int):
        return f"frame {_short(value)} is not an integer"
    if value < 0:
        return f"frame {value} is negative"
    if value > MAX_FRAME:
        return f"frame {value} is too large (the largest is {MAX_FRAME})"
    return value


def _stream_problem(stream: str) -> str | None:
    if not stream.strip():
        return "stream_id is empty"
    if len(stream) > MAX_STREAM_LEN:
        return f"stream_id is {len(stream)} characters long (the limit is {MAX_STREAM_LEN})"
    if "\x00" in stream:
        return "stream_id contains a NUL character"
    try:
        stream.encode("utf-8")
    except UnicodeEncodeError:
        return "stream_id is not valid Unicode"
    return None


def _json_problem(doc: dict[str, Any]) -> tuple[str, str] | None:
    """What PostgreSQL jsonb cannot hold: U+0000 (``\\u0000`` escapes) and very deep nesting."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "too_deep", f"the document is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str):
            if "\x00" in value:
                return "nul", "the document contains a NUL character (\\u0000), which jsonb cannot store"
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return "nul", "a key contains a NUL character (\\u0000), which jsonb cannot store"
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_delta_file(
    name: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> ParsedDelta | Unreadable:
    """Turn one delta file into a :class:`ParsedDelta`, or say why it is :class:`Unreadable`."""
    name_frame, name_stream = parse_file_name(name)
    preview: str | None = None

    def unreadable(code: str, reason: str) -> Unreadable:
        return Unreadable(name, code, reason, name_frame, name_stream, preview, len(data))

    if len(data) > max_bytes:
        return unreadable("too_large", f"the file is {len(data)} bytes, over the limit of {max_bytes}")
    if not data.strip():
        return unreadable("empty", "the file is empty" if not data else "the file holds only whitespace")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return unreadable("not_utf8", f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    preview = text[:PREVIEW_CHARS].replace("\x00", "\ufffd")
    if "\x00" in text:
        return unreadable("nul", "the file contains a NUL byte, which jsonb cannot store")
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return unreadable("not_json", f"not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return unreadable("not_object", f"the document is {_json_kind(doc)}, not a JSON object")
    problem = _json_problem(doc)
    if problem is not None:
        return unreadable(*problem)

    notes: list[str] = []
    if doc.get("frame") is None:
        if name_frame is None:
            return unreadable(
                "frame", "the document has no frame and the file name is not frame-<N>-<stream>.json"
            )
        frame = name_frame
    else:
        read = _read_frame(doc["frame"])
        if isinstance(read, str):
            return unreadable("frame", read)
        frame = read
        if name_frame is not None and name_frame != frame:
            notes.append(
                f"the document says frame {frame}, the file name says {name_frame}: the document wins"
            )

    raw_stream = doc.get("stream_id")
    if raw_stream is None:
        if name_stream is None:
            return unreadable("stream", "the document has no stream_id and the file name gives none")
        stream = name_stream
    else:
        if isinstance(raw_stream, int) and not isinstance(raw_stream, bool):
            raw_stream = str(raw_stream)
        if not isinstance(raw_stream, str):
            return unreadable("stream", f"stream_id {_short(raw_stream)} is not a string")
        stream_problem = _stream_problem(raw_stream)
        if stream_problem is not None:
            return unreadable("stream", stream_problem)
        stream = raw_stream
        if name_stream is not None and unicodedata.normalize("NFC", stream) != name_stream:
            notes.append(
                f"the document says stream {stream!r}, the file name says {name_stream!r}: the document wins"
            )

    meta = doc.get("_meta")
    candidates = (
        ("utc", doc.get("utc")),
        ("_meta.timestamp", meta.get("timestamp") if isinstance(meta, dict) else None),
        ("completed_at", doc.get("completed_at")),
    )
    utc, utc_source = FALLBACK_UTC, "fallback"
    for source, value in candidates:
        if value is None:
            continue
        parsed = parse_timestamp(value)
        if parsed is None:
            notes.append(f"{source} {_short(value)} is not an ISO 8601 timestamp; ignored")
            continue
        utc, utc_source = parsed, source
        break
    if utc_source == "fallback":
        notes.append(f"no usable utc, _meta.timestamp or completed_at: utc is {FALLBACK_UTC.isoformat()}")
    return ParsedDelta(name, frame, stream, utc, utc_source, doc, tuple(notes), text)


# -- reading a directory (blocking I/O) -------------------------------------------


def _delta_fields(delta: ParsedDelta) -> dict[str, Any]:
    """The structured log fields of a line about one delta file."""
    return {"file": delta.file, "frame": delta.frame, "stream": delta.stream_id}


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


# -- the report -------------------------------------------------------------------


@dataclass
class IngestReport:
    """What one ``ingest`` did. ``to_dict()`` is what ``--json`` prints."""

    world: str
    directory: str
    files_seen: int = 0  # directory entries looked at
    ignored: int = 0  # entries that are not regular *.json files
    stored: int = 0
    duplicate: int = 0
    late: int = 0  # refused: the frame had closed (world policy reject); see dreamcatcher.late_attempts
    deferred: int = 0  # late, accepted under policy defer: merged into the next frame to merge
    conflict: int = 0  # same (frame, stream, utc) as a stored delta, other payload: quarantined
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # {file, reason}
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # {file, frame, stream_id, utc}
    notes: list[dict[str, str]] = field(default_factory=list)  # {file, note}
    deltas: list[dict[str, Any]] = field(default_factory=list)  # {file, frame, stream_id, utc, status}
    quarantine_rows_added: int = 0
    merge: bool = True
    frames: list[int] = field(default_factory=list)  # frames the ingested deltas belong to
    frames_closed: list[int] = field(default_factory=list)  # closed by this run
    frames_merged: list[int] = field(default_factory=list)
    frames_unmerged: list[int] = field(default_factory=list)
    blocked_by: int | None = None  # an open frame below them, holding their merge back
    frame_hashes: dict[int, str] = field(default_factory=dict)
    merge_quarantined: int = 0  # items the merge of the ingested frames quarantined
    unmerged_keys: dict[str, int] = field(default_factory=dict)  # keys no rule reads, per delta

    @property
    def ok(self) -> bool:
        """Everything readable was stored (or was already) and, if asked, merged."""
        return not self.frames_unmerged and self.late == 0

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["frame_hashes"] = {str(k): v for k, v in self.frame_hashes.items()}
        doc["ok"] = self.ok
        return doc


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
            "batch of %d deltas of stream %r refused (%s); appending one by one", len(batch), stream, exc,
            extra={"world": world, "stream": stream},
        )  # fmt: skip
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
                log.warning("world %r: frames %s not merged within %ss", world, pending, timeout,
                            extra={"world": world, "frames": pending})  # fmt: skip
                return
            if not merger.stats.is_leader:
                log.info("another merger leads world %r; waiting for frames %s", world, pending,
                         extra={"world": world, "frames": pending})  # fmt: skip
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
            "file": delta.file, "frame": delta.frame, "stream_id": delta.stream_id,
            "utc": delta.utc.isoformat(), "status": status.partition(":")[0],
        }  # fmt: skip
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
            log.warning("%s: %s", delta.file, reason, extra=_delta_fields(delta))
            item = {"file": delta.file, "error": "conflict", "payload": delta.payload}
            rows.append((delta.frame, delta.stream_id, delta.utc, reason, item))
        else:  # "rejected: <the database's message>"
            reason = f"the database refused the delta: {status.removeprefix('rejected: ')}"
            bad.append(Unreadable(delta.file, "rejected", reason, delta.frame, delta.stream_id))
    for u in bad:
        log.warning("%s: unreadable: %s", u.file, u.reason,
                    extra={"file": u.file, "frame": u.frame, "stream": u.stream_id})  # fmt: skip
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
            log.warning("%s: %s", delta.file, note, extra=_delta_fields(delta))
            report.notes.append({"file": delta.file, "note": note})
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise map_db_error(exc) from exc
    try:
        from .rules.store import apply_directory_rules  # rules-from-frame-N.toml (export-dir)

        await apply_directory_rules(conn, world, directory)
        statuses = await _store(conn, world, deltas)
        quarantine = _account(report, deltas, statuses, bad)
        if quarantine:
            added = await conn.fetchval(
                query("ingest_quarantine"), world,
                [q[0] for q in quarantine], [q[1] for q in quarantine], [q[2] for q in quarantine],
                [q[3] for q in quarantine], [orjson.dumps(q[4]).decode() for q in quarantine],
            )  # fmt: skip
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


# -- the command ------------------------------------------------------------------


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
    p.add_argument(
        "--world", default=Settings.from_env().world, help="world to load into (default: %(default)s)"
    )
    p.add_argument(
        "--no-merge", dest="merge", action="store_false", help="only insert: do not close or merge"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the merge (default 30)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ingest)


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
        dsn, args.directory, args.world, merge=args.merge, timeout=args.timeout,
        max_bytes=max_bytes, on_progress=on_progress,
    )  # fmt: skip


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
