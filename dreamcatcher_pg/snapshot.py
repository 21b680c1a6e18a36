"""Portable snapshots (``export`` / ``import``) and the git layout (``export-dir``).

A snapshot of world W at frame N is one gzip-compressed tar file, self-describing:

* ``manifest.json`` (first member): ``format`` (``dreamcatcher-snapshot``),
  ``version``, ``world``, ``frame`` (N), ``last_merged_frame`` (the last merged
  frame at or below N: the state is the one right after it), ``state_hash``,
  ``frames`` (every merged frame up to N -> its state hash), ``world_config``,
  ``counts``, and ``members``: name -> ``sha256``, ``bytes``, ``lines``;
* JSON-lines members: ``deltas.jsonl`` (the log up to N, with ``late`` flags),
  ``deferred.jsonl`` (which frame merged each late delta), ``frames.jsonl``
  (frame metadata and hashes), ``quarantine.jsonl``, ``late_attempts.jsonl``,
  and ``state.jsonl`` (the state at N: kind, key, data, first/last frame).

:func:`import_snapshot` trusts none of it: it checks every member's checksum,
inserts the log, merges it frame by frame with ``dreamcatcher.merge_frame`` and
requires every frame's hash to equal the manifest's and the final state to equal
``state.jsonl``; all in ONE transaction, so a failure changes nothing.

:func:`export_dir` writes a world's log as ``frame-<N>-<stream>.json`` files,
the layout of the git version of the protocol, that ``dreamcatcher ingest``
reads back (see its docstring for the round trip and its limits).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import logging
import math
import os
import re
import tarfile
import tempfile
import time
import unicodedata
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from . import __version__
from .ingest import ParsedDelta, parse_delta_file
from .models import MAX_FRAME, validate_identity
from .queries import query
from .replay import (
    ConnOrDsn,
    Progress,
    TimeTravelError,
    connected,
    merge_one,
    merged_frames,
    transaction,
)
from .settings import DEFAULT_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

FORMAT = "dreamcatcher-snapshot"
VERSION = 1
MANIFEST = "manifest.json"
#: The members after the manifest, in archive order, with the query that exports each.
MEMBERS = {
    "rules.jsonl": "snapshot_export_rules",
    "frames.jsonl": "snapshot_export_frames",
    "deltas.jsonl": "snapshot_export_deltas",
    "deferred.jsonl": "snapshot_export_deferred",
    "quarantine.jsonl": "snapshot_export_quarantine",
    "late_attempts.jsonl": "snapshot_export_late",
    "state.jsonl": "snapshot_export_state",
}
#: Members an archive written before they existed lacks (rules.jsonl: every frame merged by
#: the default rules).
OPTIONAL_MEMBERS = frozenset({"rules.jsonl"})
BATCH = 2000
MAX_MANIFEST_BYTES = 64 << 20
#: The longest line a member may hold: one delta row of the largest payload the log accepts
#: (16 MiB as stored), with room for JSON escapes.
MAX_LINE_BYTES = 96 << 20
#: The most an archive may make the reader read at once: a tar header (a pax header is read
#: whole), the manifest, or a block of a line. Anything asking for more is refused unread.
MAX_READ_BYTES = max(MAX_MANIFEST_BYTES, 1 << 20) + 1


class SnapshotError(TimeTravelError):
    """A snapshot could not be written or loaded."""


class SnapshotCorruptError(SnapshotError):
    """The archive is damaged: truncated, not gzip/tar, a checksum or a count does not match."""


class SnapshotFormatError(SnapshotError):
    """The file is not a dreamcatcher snapshot, or one of a version this code does not read."""


class SnapshotVerificationError(SnapshotError):
    """Replaying the archive's log does not give the hashes or the state it claims."""


class WorldNotEmptyError(SnapshotError):
    """The target world of an import already has data (frames, deltas, state...)."""


class ExportDirError(TimeTravelError):
    """``export-dir`` refused its target directory."""


class MemberInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: str
    bytes: int
    lines: int


class Manifest(BaseModel):
    """``manifest.json``, validated."""

    model_config = ConfigDict(extra="allow", strict=True)
    format: str
    version: int
    world: str
    frame: int
    last_merged_frame: int | None
    state_hash: str | None
    frames: dict[str, str]
    world_config: dict[str, Any]
    counts: dict[str, Any]
    members: dict[str, MemberInfo]


@dataclass
class SnapshotReport:
    """What an export or an import did."""

    path: str
    world: str
    frame: int
    last_merged_frame: int | None
    state_hash: str | None
    frames: int
    deltas: int
    entities: int
    bytes: int = 0
    seconds: float = 0.0
    source_world: str | None = None  # import: the world the snapshot was taken of
    schema_applied: bool = False  # import: the database had no dreamcatcher schema

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- export ----------------------------------------------------------------------------


async def export_snapshot(
    conn_or_dsn: ConnOrDsn, world: str, frame: int, path: Path | str, *, on_progress: Progress | None = None
) -> SnapshotReport:
    """Write the snapshot of ``world`` at ``frame`` to ``path`` (replaced atomically).

    Every frame at or below ``frame`` must be merged. Reads one consistent
    (REPEATABLE READ) view, so a merger may keep working meanwhile.
    """
    started = time.perf_counter()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="dc-export-") as tmp:
        async with connected(conn_or_dsn) as conn, transaction(conn, readonly=True):
            await conn.execute("SET LOCAL TimeZone = 'UTC'")
            frames, _ = await merged_frames(conn, world, frame)
            config = await conn.fetchrow(query("snapshot_world_config"), world)
            members: dict[str, MemberInfo] = {}
            for done, (name, sql_name) in enumerate(MEMBERS.items(), 1):
                members[name] = await _dump(conn, query(sql_name), world, frame, Path(tmp, name))
                if on_progress is not None:
                    on_progress(done, len(MEMBERS))
            state_counts = {
                r["kind"]: r["n"] for r in await conn.fetch(query("snapshot_state_counts"), world, frame)
            }
        last = frames[-1] if frames else None
        last_frame: int | None = last["frame"] if last else None
        last_hash: str | None = last["state_hash"] if last else None
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "world": world,
            "frame": frame,
            "last_merged_frame": last_frame,
            "state_hash": last_hash,
            "created_at": datetime.now(UTC).isoformat(),
            "created_by": f"dreamcatcher_pg {__version__}",
            "world_config": dict(config) if config else {},
            "frames": {str(r["frame"]): r["state_hash"] for r in frames},
            "counts": {
                "frames": members["frames.jsonl"].lines,
                "deltas": members["deltas.jsonl"].lines,
                "deferred": members["deferred.jsonl"].lines,
                "quarantine": members["quarantine.jsonl"].lines,
                "late_attempts": members["late_attempts.jsonl"].lines,
                "entities": members["state.jsonl"].lines,
                "entities_by_kind": state_counts,
            },
            "members": {name: info.model_dump() for name, info in members.items()},
        }
        size = await asyncio.to_thread(_write_archive, path, manifest, Path(tmp))
    report = SnapshotReport(
        str(path), world, frame, last_frame, last_hash,
        len(frames), members["deltas.jsonl"].lines, members["state.jsonl"].lines, size,
        time.perf_counter() - started,
    )  # fmt: skip
    log.info("exported world=%s frame=%s to %s (%d bytes)", world, frame, path, size,
             extra={"world": world, "frame": frame, "path": str(path), "bytes": size})  # fmt: skip
    return report


async def _dump(conn: asyncpg.Connection, sql: str, world: str, frame: int, target: Path) -> MemberInfo:
    digest = hashlib.sha256()
    size = lines = 0
    with target.open("wb") as out:
        async for row in conn.cursor(sql, world, frame, prefetch=BATCH):
            line = row[0].encode("utf-8") + b"\n"
            digest.update(line)
            out.write(line)
            size += len(line)
            lines += 1
    return MemberInfo(sha256=digest.hexdigest(), bytes=size, lines=lines)


def _write_archive(path: Path, manifest: dict[str, Any], members: Path) -> int:
    body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    mtime = int(time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar,
        ):
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(body), mtime, 0o644
            tar.addfile(info, io.BytesIO(body))
            for name in MEMBERS:
                member = members / name
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = member.stat().st_size, mtime, 0o644
                with member.open("rb") as data:
                    tar.addfile(info, data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path.stat().st_size


# -- reading an archive ------------------------------------------------------------------

_DAMAGE = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError, orjson.JSONDecodeError)


class _BoundedReads(io.RawIOBase):
    """The decompressed archive, for tarfile: a read of more than ``MAX_READ_BYTES`` at once
    (a forged pax or long-name header declares any size, and tarfile reads it whole) is
    refused before it happens."""

    def __init__(self, path: Path, raw: gzip.GzipFile) -> None:
        self.path, self.raw = path, raw

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > MAX_READ_BYTES:
            raise SnapshotCorruptError(
                f"{self.path}: the archive asks for a read of {size} bytes at once "
                f"(a header or a member larger than {MAX_READ_BYTES} bytes); not read"
            )
        return self.raw.read(size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Archive:
    """Sequential reader of a snapshot archive (blocking; call from a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stream = _BoundedReads(path, gzip.open(path, "rb"))  # noqa: SIM115 (closed by close())
        try:
            self.tar = tarfile.open(fileobj=cast(IO[bytes], self.stream), mode="r:")  # noqa: SIM115
            self.manifest = self._manifest()
        except BaseException:
            self.stream.close()
            raise

    def close(self) -> None:
        self.tar.close()
        self.stream.close()

    def _manifest(self) -> Manifest:
        first = self.tar.next()
        if first is None or first.name != MANIFEST or not first.isfile():
            raise SnapshotFormatError(f"{self.path}: not a dreamcatcher snapshot (no {MANIFEST} first)")
        if first.size > MAX_MANIFEST_BYTES:
            raise SnapshotCorruptError(f"{self.path}: {MANIFEST} is {first.size} bytes, too large")
        body = self._file(first).read(MAX_MANIFEST_BYTES + 1)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SnapshotCorruptError(f"{self.path}: {MANIFEST} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotFormatError(f"{self.path}: not a dreamcatcher snapshot (format is not {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise SnapshotFormatError(
                f"{self.path}: snapshot format version {doc.get('version')!r}; "
                f"this code reads version {VERSION}"
            )
        try:
            manifest = Manifest.model_validate(doc)
        except ValidationError as exc:
            raise SnapshotCorruptError(f"{self.path}: {MANIFEST} is malformed: {exc}") from exc
        if set(manifest.members) - OPTIONAL_MEMBERS != set(MEMBERS) - OPTIONAL_MEMBERS:
            raise SnapshotCorruptError(
                f"{self.path}: the manifest lists members {sorted(manifest.members)}, "
                f"expected {sorted(MEMBERS)}"
            )
        problem = manifest_problem(manifest)
        if problem is not None:
            raise SnapshotCorruptError(f"{self.path}: {MANIFEST}: {problem}")
        return manifest

    def _file(self, member: tarfile.TarInfo) -> IO[bytes]:
        handle = self.tar.extractfile(member)
        if handle is None:
            raise SnapshotCorruptError(f"{self.path}: member {member.name} is not a file")
        return handle

    def members(self) -> Iterator[tuple[str, Iterator[list[bytes]]]]:
        """(name, batches of lines) of every data member, in order; each checked against the manifest
        when its last batch has been read."""
        seen: list[str] = []
        while True:
            member = self.tar.next()
            if member is None:
                break
            if member.name not in MEMBERS or member.name in seen or not member.isfile():
                raise SnapshotCorruptError(f"{self.path}: unexpected member {member.name!r}")
            seen.append(member.name)
            yield member.name, self._batches(member)
        missing = [name for name in MEMBERS if name not in seen and name in self.manifest.members]
        if missing:
            raise SnapshotCorruptError(f"{self.path}: truncated: members {missing} are missing")
        # read the compressed stream to its end: its trailer (CRC, length) is checked there
        stream = self.tar.fileobj
        while stream is not None and stream.read(1 << 20):
            pass

    def _batches(self, member: tarfile.TarInfo) -> Iterator[list[bytes]]:
        expected = self.manifest.members[member.name]
        if member.size != expected.bytes:  # (before a byte of it is read)
            raise SnapshotCorruptError(
                f"{self.path}: member {member.name} is {member.size} bytes, "
                f"the manifest says {expected.bytes}"
            )
        digest = hashlib.sha256()
        size = lines = 0
        handle = self._file(member)
        batch: list[bytes] = []
        while line := handle.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise SnapshotCorruptError(
                    f"{self.path}: member {member.name} has a line longer than {MAX_LINE_BYTES} bytes"
                )
            digest.update(line)
            size += len(line)
            lines += 1
            batch.append(line)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if (digest.hexdigest(), size, lines) != (expected.sha256, expected.bytes, expected.lines):
            raise SnapshotCorruptError(
                f"{self.path}: member {member.name} is damaged: sha256/size/lines "
                f"{digest.hexdigest()[:16]}…/{size}/{lines}, the manifest says "
                f"{expected.sha256[:16]}…/{expected.bytes}/{expected.lines}"
            )
        if batch:
            yield batch


#: The values of a world's configuration an import takes from a manifest, and their checks.
_CONFIG_CHECKS: dict[str, Callable[[Any], bool]] = {
    "late_policy": lambda v: v in ("reject", "defer"),
    "expected_streams": lambda v: isinstance(v, list) and all(_is_name(s) for s in v),
    "close_after": lambda v: _is_number(v) and 0 < v < 1e9,
    "max_frame_ahead": lambda v: type(v) is int and 1 <= v <= MAX_FRAME,
    "idle_writer_timeout": lambda v: _is_number(v) and 0 < v < 1e9,
}


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200 and "\x00" not in value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def manifest_problem(manifest: Manifest) -> str | None:
    """What is wrong with the values of a manifest that an import uses, or None. The frames and
    hashes are checked again against the log when it is merged; these are the values taken
    as they are (the world, its configuration, the frame, the last merged frame)."""
    if not _is_name(manifest.world):
        return f"world {manifest.world!r} is not a world name"
    if not 0 <= manifest.frame <= MAX_FRAME:
        return f"frame {manifest.frame} is out of range"
    try:
        listed = sorted(int(f) for f in manifest.frames)
    except ValueError:
        return "frames lists a frame that is not an integer"
    if any(not 0 <= f <= manifest.frame for f in listed) or len(set(listed)) != len(listed):
        return "frames lists a frame out of range, or one twice"
    last = listed[-1] if listed else None
    if manifest.last_merged_frame != last:
        return f"last_merged_frame is {manifest.last_merged_frame}, but the last frame it lists is {last}"
    if manifest.state_hash != (manifest.frames[str(last)] if last is not None else None):
        return "state_hash is not the hash of the last frame it lists"
    if any(not re.fullmatch(r"[0-9a-f]{16}", h) for h in manifest.frames.values()):
        return "a frame's state hash is not 16 hex digits"
    for key, value in manifest.world_config.items():
        check = _CONFIG_CHECKS.get(key)
        if check is not None and value is not None and not check(value):
            return f"world_config.{key} = {value!r} is not a valid setting"
    for name, info in manifest.members.items():
        if not re.fullmatch(r"[0-9a-f]{64}", info.sha256) or info.bytes < 0 or info.lines < 0:
            return f"member {name}: sha256, bytes or lines are malformed"
    return None


def _damage(path: Path, exc: BaseException) -> SnapshotCorruptError:
    kind = "truncated" if isinstance(exc, EOFError) else "damaged"
    return SnapshotCorruptError(f"{path}: the archive is {kind} ({type(exc).__name__}: {exc})")


def check_archive(path: Path | str) -> Manifest:
    """Read the whole archive and check every member against the manifest; return the manifest.

    Raises :class:`SnapshotCorruptError` or :class:`SnapshotFormatError`; a missing file is an OSError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    archive: _Archive | None = None
    try:
        archive = _Archive(path)
        for _name, batches in archive.members():
            for _batch in batches:
                pass
        return archive.manifest
    except _DAMAGE as exc:
        raise _damage(path, exc) from exc
    finally:
        if archive is not None:
            archive.close()


# -- import ------------------------------------------------------------------------------

_IMPORT_QUERIES = {
    "deltas.jsonl": "snapshot_import_deltas",
    "deferred.jsonl": "snapshot_import_deferred",
    "frames.jsonl": "snapshot_import_frames",
    "quarantine.jsonl": "snapshot_import_quarantine",
    "late_attempts.jsonl": "snapshot_import_late",
}


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, None)


async def import_snapshot(
    conn_or_dsn: ConnOrDsn,
    path: Path | str,
    *,
    world: str | None = None,
    on_progress: Progress | None = None,
) -> SnapshotReport:
    """Load the snapshot at ``path`` into ``world`` (default: the world it was taken of).

    The database may be empty (the schema is applied first); the target world
    must hold no data. The log is inserted and merged frame by frame; every
    frame's hash must equal the manifest's and the final state must equal the
    archived one. All in one transaction: on any error nothing is changed.
    """
    started = time.perf_counter()
    path = Path(path)
    manifest = await asyncio.to_thread(check_archive, path)
    target = world or manifest.world
    validate_identity(target, "import")
    async with connected(conn_or_dsn) as conn, transaction(conn, isolation="read_committed"):
        applied = await _ensure_schema(conn)
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        await conn.execute(query("snapshot_lock_world"), target)
        if await conn.fetchval(query("snapshot_world_has_data"), target):
            raise WorldNotEmptyError(
                f"world {target!r} already has data in this database; import into a new world (--world NEW)"
            )
        cfg = manifest.world_config  # (each value checked by manifest_problem)
        await conn.execute(
            query("snapshot_import_world"), target, cfg.get("late_policy") or "reject",
            list(cfg.get("expected_streams") or []), float(cfg.get("close_after") or 60.0),
            int(cfg.get("max_frame_ahead") or 10_000_000), float(cfg.get("idle_writer_timeout") or 30.0),
        )  # fmt: skip
        frames, quarantined = await _load(conn, path, target)
        await _merge_and_check(conn, target, manifest, frames, on_progress)
        await _check_state(conn, target, manifest, quarantined)
        if frames:  # (the last frame merged here, which manifest_problem matched to last_merged_frame)
            await conn.execute(query("snapshot_set_horizon"), target, int(frames[-1]["frame"]))
    report = SnapshotReport(
        str(path), target, manifest.frame, manifest.last_merged_frame, manifest.state_hash,
        len(frames), int(manifest.counts.get("deltas", 0)), int(manifest.counts.get("entities", 0)),
        path.stat().st_size, time.perf_counter() - started, manifest.world, applied,
    )  # fmt: skip
    log.info("imported %s into world=%s: %d frames verified", path, target, len(frames),
             extra={"world": target, "path": str(path), "frames": len(frames)})  # fmt: skip
    return report


async def _ensure_schema(conn: asyncpg.Connection) -> bool:
    if await conn.fetchval(query("snapshot_schema_present")):
        return False
    from .schema import apply_schema

    await apply_schema(conn)
    return True


async def _load(
    conn: asyncpg.Connection, path: Path, target: str
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """Insert the archive's log into ``target``; the state goes to a temporary table. Returns the
    frame rows and the quarantine lines written by merges (to compare with the import's own)."""
    await conn.execute(query("snapshot_state_table"))
    frames: list[dict[str, Any]] = []
    quarantined: list[bytes] = []
    archive: _Archive | None = None
    try:
        archive = await asyncio.to_thread(_Archive, path)
        members = archive.members()
        while (item := await asyncio.to_thread(_next, members)) is not None:
            name, batches = item
            while (batch := await asyncio.to_thread(_next, batches)) is not None:
                lines = [line.decode("utf-8") for line in batch]
                if name == "state.jsonl":
                    await conn.execute(query("snapshot_import_state"), lines)
                    continue
                if name == "rules.jsonl":
                    await _import_rules(conn, path, target, batch)
                    continue
                await conn.execute(query(_IMPORT_QUERIES[name]), target, lines)
                if name == "frames.jsonl":
                    frames.extend(orjson.loads(line) for line in batch)
                elif name == "quarantine.jsonl":
                    quarantined.extend(q for q in batch if orjson.loads(q).get("merged_in") is not None)
    except _DAMAGE as exc:
        raise _damage(path, exc) from exc
    finally:
        if archive is not None:
            archive.close()
    return frames, quarantined


async def _import_rules(conn: asyncpg.Connection, path: Path, target: str, lines: list[bytes]) -> None:
    """Install the archive's rule sets (compiled again from their source: nothing of the archive
    is trusted) and give ``target`` the archived world's rule versions."""
    from .rules import RulesError, install_rule_set, parse_rules

    for line in lines:
        doc = orjson.loads(line)
        if "source" in doc:
            try:
                rules = parse_rules(str(doc["source"]), "rules.jsonl")
            except RulesError as exc:
                raise SnapshotCorruptError(f"{path}: a rule set of the archive is not valid: {exc}") from exc
            if rules.id != doc.get("rule_set"):
                raise SnapshotCorruptError(
                    f"{path}: rule set {doc.get('rule_set')} does not match its source"
                )
            await install_rule_set(conn, rules)
        else:
            await conn.execute(query("rules_put_world"), target, int(doc["from_frame"]), str(doc["version"]))


async def _merge_and_check(
    conn: asyncpg.Connection,
    target: str,
    manifest: Manifest,
    frames: list[dict[str, Any]],
    on_progress: Progress | None,
) -> None:
    listed = sorted(int(f) for f in manifest.frames)
    if [f["frame"] for f in frames] != listed:
        raise SnapshotCorruptError("frames.jsonl and the manifest list different frames")
    for done, row in enumerate(frames, 1):
        frame = int(row["frame"])
        state_hash, deltas = await merge_one(conn, target, frame, rules_of=target)
        expected = manifest.frames[str(frame)]
        if state_hash != expected:
            raise SnapshotVerificationError(
                f"frame {frame}: the archive's log merges to state hash {state_hash}, "
                f"the manifest says {expected}; nothing was imported"
            )
        if deltas != row["delta_count"]:
            raise SnapshotVerificationError(
                f"frame {frame}: {deltas} deltas merged, the archive recorded {row['delta_count']}; "
                "nothing was imported"
            )
        if on_progress is not None:
            on_progress(done, len(frames))


def _canonical(line: bytes | str) -> bytes:
    doc = orjson.loads(line)
    doc.pop("noted_at", None)
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


async def _check_state(
    conn: asyncpg.Connection, target: str, manifest: Manifest, quarantined: list[bytes]
) -> None:
    """The merged state at the snapshot's frame must equal ``state.jsonl``; so must the quarantine."""
    row = await conn.fetchrow(query("snapshot_compare_state"), target, manifest.frame)
    if row is not None:
        if row["missing"]:
            what = "is in the archived state but not in the state its log merges to"
        elif row["extra"]:
            what = "is in the state the log merges to but not in the archived state"
        else:
            what = "differs between the archived state and the state the log merges to"
        raise SnapshotVerificationError(
            f"{row['kind']} {row['ekey']} {what} (frame {manifest.frame}); nothing was imported"
        )
    merged = await conn.fetch(query("snapshot_merge_quarantine"), target)
    if Counter(_canonical(r[0]) for r in merged) != Counter(_canonical(line) for line in quarantined):
        raise SnapshotVerificationError(
            f"the merges quarantined {len(merged)} items, the archive lists {len(quarantined)} "
            "(or other ones); nothing was imported"
        )


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
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        total = await conn.fetchval(query("export_dir_count"), world, to_frame)
        cursor = await conn.cursor(query("export_dir_deltas"), world, to_frame)
        from .rules.store import export_directory_rules

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
                    log.warning(
                        "%s: ingest will not read it back: %s", name, problem,
                        extra={"world": world, "frame": r["frame"], "stream": r["stream_id"]},
                    )  # fmt: skip
            await asyncio.to_thread(_write_files, directory, files)
            report.files += len(files)
            if on_progress is not None:
                on_progress(report.files, int(total))
    report.frames = len(frames)
    if report.late:
        log.warning(
            "world %r: %d late (deferred) deltas go back into their own frame on ingest; "
            "hashes can differ from that frame until the one that merged them", world, report.late,
            extra={"world": world},
        )  # fmt: skip
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
