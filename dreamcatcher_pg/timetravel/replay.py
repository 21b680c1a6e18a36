"""Replay: rebuild a world's projection from its log alone, and check it.

How :func:`replay_verify` works. The state hash is world-agnostic (docs/design.md
§2.8), so the log of world W can be merged again under another name and must
give the same hash after every frame. The replay runs in ONE transaction on
one connection, under a scratch world name, and that transaction is always
rolled back: nothing it writes ever becomes visible, and the append-only log
never holds a scratch world. Frame by frame (in chunks):

1. copy W's deltas of those frames into the scratch world (with their
   ``late`` flags), and the late deltas deferred into them together with
   their ``deferred_log`` rows, so that every late delta merges into the same
   frame as it did in W;
2. create the scratch frame rows, closed, and merge each in ascending order
   with ``dreamcatcher.merge_frame_with``, the very function the merger runs,
   and the rule set that merged that frame of W (``frame_log.rules``);
3. compare the hash and the delta count it returns with what W's merge
   recorded in ``frame_log``.

After the last frame, W's versioned projection (``entity_versions``) is
compared with the replayed one, version by version: that catches a tampered
projection, which the recorded hashes alone would not (they were computed when
the frame merged). The transaction is REPEATABLE READ, so a merger working on
W meanwhile does not move the ground under the comparison. The caller needs
INSERT on the dreamcatcher tables (the merger's rights), not only SELECT.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import orjson

from ..db.connect import ConnOrDsn, connected, transaction, utc
from ..db.queries import query
from ..errors import FrameNotMergedError, TimeTravelError, UnknownWorldError

log = logging.getLogger(__name__)

#: ``on_progress(done, total)``, called after each merged frame.
Progress = Callable[[int, int], None]

#: Frames whose log is copied into the scratch world at once.
CHUNK_FRAMES = 256
#: At most this many hash mismatches are listed in a report.
MAX_LISTED = 100


@dataclass(frozen=True, slots=True)
class Divergence:
    """The first frame whose state is not what the log gives, and the entity that shows it."""

    frame: int
    reason: str
    kind: str | None = None
    key: str | None = None
    recorded_hash: str | None = None  # frame_log.state_hash of the world
    replayed_hash: str | None = None  # what merging the log gives
    recorded: Any = None  # the entity in the world's projection right after ``frame``
    replayed: Any = None  # the entity as the log gives it
    fields: tuple[str, ...] = ()  # fields that differ, when both sides are objects


@dataclass
class ReplayReport:
    """What :func:`replay_verify` found. ``ok`` is False when anything diverged."""

    world: str
    to_frame: int | None
    verified: bool
    frames: int = 0
    deltas: int = 0
    first_frame: int | None = None
    last_frame: int | None = None
    final_hash: str | None = None
    seconds: float = 0.0
    #: replayed state hash of every frame
    hashes: dict[int, str] = field(default_factory=dict)
    #: frames whose replayed hash or delta count differs from the recorded one (first MAX_LISTED)
    hash_mismatches: list[int] = field(default_factory=list)
    #: versions of the projection that differ from the replayed ones (first MAX_LISTED)
    projection_mismatches: int = 0
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["hashes"] = {str(k): v for k, v in self.hashes.items()}
        doc["ok"] = self.ok
        return doc


def scratch_world() -> str:
    """A world name nobody uses, for a replay that is rolled back."""
    return f"__dreamcatcher_replay_{secrets.token_hex(8)}"


async def merged_frames(
    conn: asyncpg.Connection, world: str, to_frame: int | None
) -> tuple[list[asyncpg.Record], int | None]:
    """The merged frames of ``world`` up to ``to_frame`` (default: the last merged), and that bound.

    Raises :class:`UnknownWorldError` or :class:`FrameNotMergedError`.
    """
    horizon = to_frame if to_frame is not None else (1 << 63) - 1
    summary = await conn.fetchrow(query("world_replay_summary"), world, horizon)
    assert summary is not None
    if not summary["known"]:
        raise UnknownWorldError(f"world {world!r} does not exist in this database")
    last = summary["last_merged"]
    if to_frame is None:
        to_frame = last
    elif summary["first_unmerged"] is not None or last is None or to_frame > last:
        pending = summary["first_unmerged"]
        raise FrameNotMergedError(
            f"world {world!r}: frame {pending if pending is not None else to_frame} is not merged yet"
            + (f" (the last merged frame is {last})" if last is not None else " (no frame is merged)")
        )
    if to_frame is None:
        return [], None
    return list(await conn.fetch(query("merged_frames_to"), world, to_frame)), to_frame


async def merge_one(
    conn: asyncpg.Connection, world: str, frame: int, *, rules_of: str | None = None
) -> tuple[str, int]:
    """Merge one closed frame in the current transaction; (state hash, delta count). With
    ``rules_of``, merge it with the rule set that merged that frame of world ``rules_of``."""
    if rules_of is None:
        raw = await conn.fetchval(query("merge_frame"), world, frame)
    else:
        raw = await conn.fetchval(query("merge_frame_as"), world, frame, rules_of)
    if raw is None:
        raise TimeTravelError(f"world {world!r}: frame {frame} was not ready to merge")
    stats = orjson.loads(raw)
    return str(stats["state_hash"]), int(stats["deltas"])


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def changed_fields(a: Any, b: Any) -> tuple[str, ...]:
    """The keys whose values differ, when both are JSON objects."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return ()
    return tuple(sorted(k for k in a.keys() | b.keys() if a.get(k, ...) != b.get(k, ...)))


async def _entity_pair(
    conn: asyncpg.Connection, world: str, scratch: str, kind: str, key: str, frame: int
) -> tuple[Any, Any]:
    recorded = _json(await conn.fetchval(query("entity_at"), world, kind, key, frame))
    replayed = _json(await conn.fetchval(query("entity_at"), scratch, kind, key, frame))
    return recorded, replayed


async def replay_verify(
    conn_or_dsn: ConnOrDsn,
    world: str,
    *,
    to_frame: int | None = None,
    verify: bool = True,
    on_progress: Progress | None = None,
) -> ReplayReport:
    """Rebuild ``world``'s projection from its log alone, up to ``to_frame`` (default: the last
    merged frame), and with ``verify`` compare it with what is recorded: every frame's state
    hash and delta count, then the projection version by version.

    Nothing is written: see the module docstring. ``report.divergence`` names the first
    divergent frame and, when the projection shows it, the entity (kind, key).
    """
    started = time.perf_counter()
    async with connected(conn_or_dsn) as conn:
        tr = transaction(conn)
        await tr.start()
        try:
            frames, to_frame = await merged_frames(conn, world, to_frame)
            report = ReplayReport(world=world, to_frame=to_frame, verified=verify)
            if frames:
                await _replay(conn, world, frames, report, verify, on_progress)
        finally:
            await tr.rollback()
    report.seconds = time.perf_counter() - started
    log.info(
        "replay world=%s frames=%d deltas=%d ok=%s seconds=%.2f",
        world,
        report.frames,
        report.deltas,
        report.ok,
        report.seconds,
        extra={
            "world": world,
            "frames": report.frames,
            "deltas": report.deltas,
            "ok": report.ok,
            "duration_ms": round(report.seconds * 1000, 1),
        },
    )
    return report


async def _replay(
    conn: asyncpg.Connection,
    world: str,
    frames: Sequence[asyncpg.Record],
    report: ReplayReport,
    verify: bool,
    on_progress: Progress | None,
) -> None:
    scratch = scratch_world()
    await utc(conn)
    report.first_frame, report.last_frame = frames[0]["frame"], frames[-1]["frame"]
    first_bad: Divergence | None = None
    done = 0
    previous = -1
    for start in range(0, len(frames), CHUNK_FRAMES):
        chunk = frames[start : start + CHUNK_FRAMES]
        upto = int(chunk[-1]["frame"])
        await conn.execute(query("replay_copy_log"), world, scratch, previous, upto)
        await conn.execute(query("replay_open_frames"), scratch, [r["frame"] for r in chunk])
        previous = upto
        for row in chunk:
            frame = int(row["frame"])
            state_hash, deltas = await merge_one(conn, scratch, frame, rules_of=world)
            report.hashes[frame] = state_hash
            report.deltas += deltas
            if verify and (state_hash != row["state_hash"] or deltas != row["delta_count"]):
                if len(report.hash_mismatches) < MAX_LISTED:
                    report.hash_mismatches.append(frame)
                if first_bad is None:
                    reason = (
                        f"the recorded state hash is {row['state_hash']}, the log replays to {state_hash}"
                        if state_hash != row["state_hash"]
                        else f"the merge recorded {row['delta_count']} deltas, the log holds {deltas}"
                    )
                    first_bad = Divergence(frame, reason, None, None, row["state_hash"], state_hash)
            done += 1
            if on_progress is not None:
                on_progress(done, len(frames))
    report.frames = done
    report.final_hash = report.hashes[int(frames[-1]["frame"])]
    if not verify:
        return
    assert report.to_frame is not None
    rows = await conn.fetch(query("replay_compare_projection"), world, scratch, report.to_frame, MAX_LISTED)
    report.projection_mismatches = len(rows)
    if rows and (first_bad is None or rows[0]["frame"] <= first_bad.frame):
        top = rows[0]
        frame = int(top["frame"])
        recorded, replayed = await _entity_pair(conn, world, scratch, top["kind"], top["ekey"], frame)
        hashes = {int(r["frame"]): r["state_hash"] for r in frames}
        # the state right after `frame` is the one of the last merged frame at or below it
        at = max((f for f in hashes if f <= frame), default=None)
        first_bad = Divergence(
            frame=frame,
            reason=f"{top['kind']} {top['ekey']}: {top['what']}",
            kind=top["kind"],
            key=top["ekey"],
            recorded_hash=hashes.get(at) if at is not None else None,
            replayed_hash=report.hashes.get(at) if at is not None else None,
            recorded=recorded,
            replayed=replayed,
            fields=changed_fields(recorded, replayed),
        )
    elif first_bad is not None and not rows:
        first_bad = Divergence(
            first_bad.frame,
            first_bad.reason + "; the projection equals the replayed state (the recorded hash was altered)",
            recorded_hash=first_bad.recorded_hash,
            replayed_hash=first_bad.replayed_hash,
        )
    report.divergence = first_bad
