"""Observing merges (a test-side audit trigger) and the verdict: nothing lost, doubled or mis-merged."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from dreamcatcher_pg import (
    DeltaClient,
    Merger,
)
from dreamcatcher_pg.validation import batch_bounds

from .common import Ledger, connection

# -- observing merges ------------------------------------------------------------


async def install_merge_audit(conn: asyncpg.Connection) -> None:
    """Record, with its backend, every committed ``UPDATE`` of a frame's status that leaves it
    'merged' (a second merge of a merged frame would show as a second row). Test-side: a
    trigger of the run's own, never library code; a rolled-back merge leaves no row."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS public.reliability_merge_audit (
            seq bigint GENERATED ALWAYS AS IDENTITY, world text, frame bigint, old_status text,
            backend_pid int, at timestamptz DEFAULT clock_timestamp());
        CREATE OR REPLACE FUNCTION public.reliability_audit_merge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.status = 'merged' THEN
                INSERT INTO public.reliability_merge_audit (world, frame, old_status, backend_pid)
                VALUES (NEW.world, NEW.frame, OLD.status, pg_backend_pid());
            END IF;
            RETURN NULL;
        END $$;
        CREATE OR REPLACE TRIGGER zz_reliability_merge_audit AFTER UPDATE OF status ON dreamcatcher.frame_log
            FOR EACH ROW EXECUTE FUNCTION public.reliability_audit_merge();
        """
    )


async def merge_audit(conn: asyncpg.Connection, world: str) -> list[tuple[int, int, datetime]]:
    """(frame, backend_pid, at) of every merge of ``world``, in commit order."""
    rows = await conn.fetch(
        "SELECT frame, backend_pid, at FROM public.reliability_merge_audit WHERE world = $1 ORDER BY seq",
        world,
    )
    return [(r["frame"], r["backend_pid"], r["at"]) for r in rows]


async def last_merged(conn: asyncpg.Connection, world: str) -> int:
    value = await conn.fetchval(
        "SELECT max(frame) FROM dreamcatcher.frame_log WHERE world = $1 AND status = 'merged'", world
    )
    return -1 if value is None else int(value)


async def merge_all(dsn: str, world: str) -> int:
    """Merge every frame that is ready with an in-process Merger; return how many merged."""
    merger = Merger(dsn, world)
    merged = 0
    try:
        while results := await merger.run_until_idle():
            merged += len(results)
        if not merger.stats.is_leader:
            raise RuntimeError(f"merge_all: another merger holds the leader lock of {world!r}")
    finally:
        await merger.aclose()
    return merged


MERGE_ACTIVE = """
SELECT EXISTS (SELECT 1 FROM pg_stat_activity
               WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
                 AND query LIKE '%dreamcatcher.merge_frame(%')
"""


# -- the verdict ---------------------------------------------------------------------


@dataclass
class Verdict:
    """The database against the ledger. ``problems`` is empty when nothing went wrong."""

    acked: int = 0
    refused: int = 0
    logged: int = 0  # deltas in the log
    merged: int = 0  # acknowledged deltas merged exactly once
    lost: int = 0  # acknowledged, but not in the log or not in the state
    doubled: int = 0  # a delta's marker more than once in the state
    phantom: int = 0  # in the log or the state without an acknowledgement
    frames: int = 0
    frames_unmerged: int = 0
    frames_merged_twice: int = 0
    hashes_compared: int = 0
    hash_mismatches: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, what: str, examples: Sequence[object] = ()) -> None:
        shown = ", ".join(map(str, list(examples)[:5]))
        self.problems.append(f"{what}" + (f" (e.g. {shown})" if shown else ""))


async def verify(dsn: str, world: str, ledger: Ledger, *, replay: bool = True) -> Verdict:
    """Is every acknowledged delta merged exactly once, every frame once, every hash replayable?"""
    v = Verdict(acked=len(ledger.acked), refused=len(ledger.refused))
    async with connection(dsn) as conn:
        logged = {
            (r["frame"], r["stream_id"], r["utc"]): r["marker"]
            for r in await conn.fetch(
                "SELECT frame, stream_id, utc, payload -> 'observations' -> 0 ->> 'id' AS marker"
                " FROM dreamcatcher.delta_log WHERE world = $1",
                world,
            )
        }
        in_state = {
            r["id"]: r["n"]
            for r in await conn.fetch(
                "SELECT data ->> 'id' AS id, count(*) AS n FROM dreamcatcher.observations"
                " WHERE world = $1 AND data ? 'id' GROUP BY 1",
                world,
            )
        }
        observations = int(
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.observations WHERE world = $1", world)
        )
        frames = {
            r["frame"]: r["status"]
            for r in await conn.fetch(
                "SELECT frame, status FROM dreamcatcher.frame_log WHERE world = $1", world
            )
        }
        audited = Counter(frame for frame, _, _ in await merge_audit(conn, world))
    v.logged = len(logged)
    lost, doubled = [], []
    for key, (mark, _) in ledger.acked.items():
        count = in_state.get(mark, 0)
        if key not in logged or count == 0:
            lost.append(key)
        elif count == 1:
            v.merged += 1
        else:
            doubled.append(key)
    acked_marks = {mark for mark, _ in ledger.acked.values()}
    doubled += [m for m, n in in_state.items() if n > 1 and m not in acked_marks]
    # by marker: a delta stored without an acknowledgement counts once, in the log and the state
    unacked_logged = {m for k, m in logged.items() if k not in ledger.acked}
    phantom = sorted(unacked_logged | (in_state.keys() - acked_marks))
    v.lost, v.doubled, v.phantom = len(lost), len(doubled), len(phantom)
    if lost:
        v.problem(f"{len(lost)} acknowledged deltas lost", lost)
    if doubled:
        v.problem(f"{len(doubled)} deltas merged more than once", doubled)
    if phantom:
        v.problem(f"{len(phantom)} deltas stored or merged without an acknowledgement", phantom)
    refused_stored = [k for k in ledger.refused if k in logged]
    if refused_stored:
        v.problem(f"{len(refused_stored)} refused deltas are in the log", refused_stored)
    expected = sum(n for _, n in ledger.acked.values())
    if observations != expected:
        v.problem(f"{observations} observations in the state, {expected} acknowledged")
    v.frames = len(frames)
    unmerged = sorted(f for f, status in frames.items() if status != "merged")
    twice = sorted(f for f, n in audited.items() if n > 1)
    unaudited = sorted(f for f, status in frames.items() if status == "merged" and audited[f] != 1)
    v.frames_unmerged, v.frames_merged_twice = len(unmerged), len(twice)
    if unmerged:
        v.problem(f"{len(unmerged)} frames not merged", unmerged)
    if twice:
        v.problem(f"{len(twice)} frames merged more than once", twice)
    if unaudited and not twice:
        v.problem(f"{len(unaudited)} merged frames without exactly one recorded merge", unaudited)
    if ledger.unexpected:
        v.problem(f"{len(ledger.unexpected)} unexpected errors", ledger.unexpected)
    if replay:
        into = f"{world}~replay~{secrets.token_hex(3)}"
        v.hashes_compared, mismatches = await replay_hashes(dsn, world, into)
        v.hash_mismatches = len(mismatches)
        if mismatches:
            v.problem(f"{len(mismatches)} frame hashes differ from a replay", mismatches)
    return v


async def replay_hashes(dsn: str, world: str, into: str) -> tuple[int, list[int]]:
    """Replay ``world``'s log into a fresh world ``into`` with an in-process Merger.

    Returns (frames compared, frames whose state_hash differs). The hash covers the
    state's content only (docs/design.md §2.8), so another world name must give the same hashes.
    """
    async with connection(dsn) as conn:
        if await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1 AND late", world
        ):
            raise ValueError("replay_hashes: the world has deferred (late) deltas; replay them by hand")
        rows = await conn.fetch(
            "SELECT stream_id, frame, utc, payload::text AS payload FROM dreamcatcher.delta_log"
            " WHERE world = $1 ORDER BY stream_id, frame, utc",
            world,
        )
        frames = [
            r["frame"]
            for r in await conn.fetch(
                "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1 ORDER BY frame", world
            )
        ]
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_stream.setdefault(r["stream_id"], []).append(
            {"frame": r["frame"], "utc": r["utc"], "payload": orjson.loads(r["payload"])}
        )
    for stream, items in by_stream.items():
        async with DeltaClient.connect(dsn, stream_id=stream, world=into) as dc:
            for start, end in batch_bounds([item["frame"] for item in items], 500):
                await dc.insert_deltas(items[start:end])
    async with DeltaClient.connect(dsn, stream_id="replay", world=into) as dc:
        for frame in frames:
            await dc.close_frame(frame)
    await merge_all(dsn, into)
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            "SELECT o.frame, o.state_hash AS original, r.state_hash AS replayed"
            " FROM dreamcatcher.frame_log o"
            " LEFT JOIN dreamcatcher.frame_log r ON r.world = $2 AND r.frame = o.frame"
            " WHERE o.world = $1 ORDER BY o.frame",
            world,
            into,
        )
    return len(rows), [r["frame"] for r in rows if r["original"] is None or r["original"] != r["replayed"]]
