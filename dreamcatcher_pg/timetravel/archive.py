"""The snapshot archive: its format, writing it, and reading it back without trusting it.

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

Reading checks every member's checksum, size and line count, and bounds every
read (a hostile archive cannot make it read more than it declares).
"""

from __future__ import annotations

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
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, cast

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import (
    SnapshotCorruptError,
    SnapshotFormatError,
)
from ..validation import MAX_FRAME, name_problem

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


def write_archive(path: Path, manifest: dict[str, Any], members: Path) -> int:
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

DAMAGE = (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError, orjson.JSONDecodeError)


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


class Archive:
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
    return isinstance(value, str) and name_problem(value) is None


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


def damage_error(path: Path, exc: BaseException) -> SnapshotCorruptError:
    kind = "truncated" if isinstance(exc, EOFError) else "damaged"
    return SnapshotCorruptError(f"{path}: the archive is {kind} ({type(exc).__name__}: {exc})")


def check_archive(path: Path | str) -> Manifest:
    """Read the whole archive and check every member against the manifest; return the manifest.

    Raises :class:`SnapshotCorruptError` or :class:`SnapshotFormatError`; a missing file is an OSError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    archive: Archive | None = None
    try:
        archive = Archive(path)
        for _name, batches in archive.members():
            for _batch in batches:
                pass
        return archive.manifest
    except DAMAGE as exc:
        raise damage_error(path, exc) from exc
    finally:
        if archive is not None:
            archive.close()
