"""``export-dir``: a world's log as ``frame-<N>-<stream>.json`` files.

That is the layout of the git version of the protocol, which ``dreamcatcher
ingest`` reads back (see :func:`export_dir` for the round trip and its limits).
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..db.connect import ConnOrDsn, connected, transaction, utc
from ..db.queries import query
from ..errors import (
    ExportDirError,
)
from ..ingest.parse import ParsedDelta, parse_delta_file
from ..settings import DEFAULT_MAX_PAYLOAD_BYTES
from .archive import BATCH
from .replay import Progress

log = logging.getLogger(__name__)

# -- export-dir: the git layout ----------------------------------------------------------

_UNSAFE = re.compile(r"[^\w.-]+")


@dataclass
class ExportDirReport:
    """What :func:`export_dir` wrote."""

    world: str
    directory: str
    files: int = 0
    frames: int = 0
    envelope_added: int = 0  # files whose document needed frame/stream_id/utc set explicitly
    late: int = 0  # deltas that were merged into a later frame (policy defer): see export_dir
    not_ingestable: list[dict[str, str]] = field(default_factory=list)  # {file, reason}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def delta_file(
    frame: int, stream: str, utc: datetime, payload: str, with_envelope: str, name: str
) -> tuple[bytes, bool, str | None]:
    """The bytes of file ``name`` for one delta, such that ingest reads back exactly (frame, stream,
    utc, payload): the payload as stored when that already holds, else with the envelope keys set.
    Returns (bytes, envelope added, why ingest cannot read it back, or None)."""
    reason = "the document does not read back as this delta"
    for data, added in ((payload.encode("utf-8"), False), (with_envelope.encode("utf-8"), True)):
        parsed = parse_delta_file(name, data, max_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
        if not isinstance(parsed, ParsedDelta):
            reason = parsed.reason
        elif (parsed.frame, parsed.stream_id, parsed.utc) == (frame, stream, utc):
            return data, added, None
    return with_envelope.encode("utf-8"), True, reason


async def export_dir(
    conn_or_dsn: ConnOrDsn,
    world: str,
    directory: Path | str,
    *,
    to_frame: int | None = None,
    on_progress: Progress | None = None,
) -> ExportDirReport:
    """Write every delta of ``world`` (frames up to ``to_frame``) as ``frame-<N>-<stream>.json``.

    One file per delta, named by :func:`file_name` (a second delta of a stream in
    one frame, or a stream id that is not a safe file name, gets
    ``frame-<N>~<k>-<stem>.json``). Whenever the name would not give the delta's
    frame and stream, or the document would not give its utc, the document
    carries ``frame``, ``stream_id`` and ``utc`` (ingest reads them from the
    document first), so ``dreamcatcher ingest`` reads back the same deltas and
    merging them gives the same frame hashes; every file is checked with
    ingest's own parser before it is written.

    Not carried by the layout: frames without any delta (no file, so no such
    frame after ingest), quarantine rows of unreadable files, and which later
    frame merged a late (deferred) delta: ingest puts it back into its own
    frame, so frames from there to where it was merged can hash differently.
    ``report.late`` counts them. Refuses a directory that already holds
    ``*.json`` files (ingest would read them too). When the world was merged (or
    is to be merged) with other rules than the database's default, the rules go
    beside the deltas as ``rules-from-frame-<N>.toml``, which ingest applies first.
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise ExportDirError(f"{directory} is not a directory")
        if any(p.name.lower().endswith(".json") for p in directory.iterdir()):
            raise ExportDirError(f"{directory} already holds *.json files; export into an empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    report = ExportDirReport(world=world, directory=str(directory))
    used: set[str] = set()
    frames: set[int] = set()
    async with connected(conn_or_dsn) as conn, transaction(conn, readonly=True):
        await utc(conn)
        total = await conn.fetchval(query("export_dir_count"), world, to_frame)
        cursor = await conn.cursor(query("export_dir_deltas"), world, to_frame)
        from ..rules.store import export_directory_rules

        rules_files = await export_directory_rules(conn, world, to_frame)
        await asyncio.to_thread(_write_files, directory, [(n, s.encode()) for n, s in rules_files.items()])
        while rows := await cursor.fetch(BATCH):
            files = []
            for r in rows:
                name = file_name(r["frame"], r["stream_id"], used)
                data, added, problem = delta_file(
                    r["frame"], r["stream_id"], r["utc"], r["payload"], r["with_envelope"], name
                )
                files.append((name, data))
                frames.add(r["frame"])
                report.envelope_added += added
                report.late += r["late"]
                if problem is not None:
                    report.not_ingestable.append({"file": name, "reason": problem})
                    log.warning("%s: ingest will not read it back: %s", name, problem)
            await asyncio.to_thread(_write_files, directory, files)
            report.files += len(files)
            if on_progress is not None:
                on_progress(report.files, int(total))
    report.frames = len(frames)
    if report.late:
        log.warning(
            "world %r: %d late (deferred) deltas go back into their own frame on ingest; "
            "hashes can differ from that frame until the one that merged them",
            world,
            report.late,
        )
    return report


def file_name(frame: int, stream: str, used: set[str]) -> str:
    """``frame-<N>-<stream>.json`` for the first delta of a stream in a frame when the stream is a
    safe file name; else ``frame-<N>~<k>-<safe stream>.json``, a name outside ingest's pattern (so
    ingest takes frame and stream from the document, without noting a disagreement)."""
    safe = _UNSAFE.sub("_", unicodedata.normalize("NFC", stream))[:100].strip(".") or "stream"
    name, k = f"frame-{frame}-{stream}.json", 0
    while safe != stream or name.casefold() in used:  # casefold: case-insensitive file systems
        k += 1
        name = f"frame-{frame}~{k}-{safe}.json"
        if name.casefold() not in used:
            break
    used.add(name.casefold())
    return name


def _write_files(directory: Path, files: list[tuple[str, bytes]]) -> None:
    for name, data in files:
        with (directory / name).open("xb") as out:
            out.write(data)
