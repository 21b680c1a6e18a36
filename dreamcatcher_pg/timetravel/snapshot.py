"""Portable snapshots: ``export`` and ``import`` of a world at a frame.

The archive format is :mod:`.archive`. :func:`import_snapshot` trusts none of
it: it checks every member's checksum, inserts the log, merges it frame by frame
with ``dreamcatcher.merge_frame`` and requires every frame's hash to equal the
manifest's and the final state to equal ``state.jsonl``; all in ONE
transaction, so a failure changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from .. import __version__
from ..db.connect import ConnOrDsn, connected, transaction, utc
from ..db.queries import query
from ..errors import (
    SnapshotCorruptError,
    SnapshotVerificationError,
    WorldNotEmptyError,
)
from ..validation import validate_identity
from .archive import (
    BATCH,
    DAMAGE,
    FORMAT,
    MEMBERS,
    VERSION,
    Archive,
    Manifest,
    MemberInfo,
    check_archive,
    damage_error,
    write_archive,
)
from .replay import Progress, merge_one, merged_frames

log = logging.getLogger(__name__)


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
            await utc(conn)
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
        size = await asyncio.to_thread(write_archive, path, manifest, Path(tmp))
    report = SnapshotReport(
        str(path),
        world,
        frame,
        last_frame,
        last_hash,
        len(frames),
        members["deltas.jsonl"].lines,
        members["state.jsonl"].lines,
        size,
        time.perf_counter() - started,
    )
    log.info("exported world=%s frame=%s to %s (%d bytes)", world, frame, path, size)
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
        await utc(conn)
        await conn.execute(query("snapshot_lock_world"), target)
        if await conn.fetchval(query("snapshot_world_has_data"), target):
            raise WorldNotEmptyError(
                f"world {target!r} already has data in this database; import into a new world (--world NEW)"
            )
        cfg = manifest.world_config  # (each value checked by manifest_problem)
        await conn.execute(
            query("snapshot_import_world"),
            target,
            cfg.get("late_policy") or "reject",
            list(cfg.get("expected_streams") or []),
            float(cfg.get("close_after") or 60.0),
            int(cfg.get("max_frame_ahead") or 10_000_000),
            float(cfg.get("idle_writer_timeout") or 30.0),
        )
        frames, quarantined = await _load(conn, path, target)
        await _merge_and_check(conn, target, manifest, frames, on_progress)
        await _check_state(conn, target, manifest, quarantined)
        if frames:  # (the last frame merged here, which manifest_problem matched to last_merged_frame)
            await conn.execute(query("snapshot_set_horizon"), target, int(frames[-1]["frame"]))
    report = SnapshotReport(
        str(path),
        target,
        manifest.frame,
        manifest.last_merged_frame,
        manifest.state_hash,
        len(frames),
        int(manifest.counts.get("deltas", 0)),
        int(manifest.counts.get("entities", 0)),
        path.stat().st_size,
        time.perf_counter() - started,
        manifest.world,
        applied,
    )
    log.info("imported %s into world=%s: %d frames verified", path, target, len(frames))
    return report


async def _ensure_schema(conn: asyncpg.Connection) -> bool:
    if await conn.fetchval(query("snapshot_schema_present")):
        return False
    from ..ops.schema import apply_schema

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
    archive: Archive | None = None
    try:
        archive = await asyncio.to_thread(Archive, path)
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
    except DAMAGE as exc:
        raise damage_error(path, exc) from exc
    finally:
        if archive is not None:
            archive.close()
    return frames, quarantined


async def _import_rules(conn: asyncpg.Connection, path: Path, target: str, lines: list[bytes]) -> None:
    """Install the archive's rule sets (compiled again from their source: nothing of the archive
    is trusted) and give ``target`` the archived world's rule versions."""
    from ..rules import RulesError, install_rule_set, parse_rules

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
