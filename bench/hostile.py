"""The "hostile writer" row of ``python -m bench.reliability``: one writer tries, one by one,
everything that used to stall a world, through the SQL functions a worker may call directly.

One merger task per world runs in this process, for the world under attack and for a
bystander world. During each attack a well-behaved writer writes a frame of the victim and
waits for its merge, and the bystander merges one of its own: a wait that runs out is a
stalled world. At the end every delta the well-behaved writer was told was stored must be in
the state exactly once, and every frame of the victim merged. An attack that the database
lets through (a value it should refuse) is a problem too.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import orjson

from bench.reliability import T0, Ledger, Report, Verdict, connection, insert_acked, marker, replay_hashes
from dreamcatcher_pg import DeltaClient, Merger

VICTIM = "hostile-victim"
BYSTANDER = "hostile-bystander"
#: How long a well-behaved frame may take to merge during an attack before the world counts as stalled.
STALL = 20.0
APPEND = "SELECT dreamcatcher.append_delta($1, $2, $3, $4::text::timestamptz, $5::text::jsonb)"
Attack = Callable[["Run"], Awaitable[None]]


class Refused(Exception):
    """An attack was refused as it must be (the expected SQLSTATE)."""


class Run:
    """The state of one run: the next frame of each world, the ledger, what went wrong."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.frame = 0
        self.bystander_frame = 0
        self.ledger = Ledger()
        self.stalled: list[str] = []
        self.let_through: list[str] = []

    async def expect_refusal(self, attack: str, sqlstate: str, statement: str, *args: Any) -> None:
        """``statement`` on a fresh connection must fail with ``sqlstate``."""
        async with connection(self.dsn) as conn:
            try:
                await conn.fetchval(statement, *args)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != sqlstate:
                    self.let_through.append(f"{attack}: {exc.sqlstate} {exc}, expected {sqlstate}")
                return
        self.let_through.append(f"{attack}: accepted")

    async def good_frame(self, attack: str, payload_extra: dict[str, Any] | None = None) -> None:
        """A well-behaved frame of the victim, merged within STALL seconds; one of the bystander too."""
        self.frame += 1
        frame = self.frame
        utc = T0 + timedelta(seconds=frame)
        payload = {"observations": [{"id": marker(VICTIM, "good", frame, utc)}], **(payload_extra or {})}
        try:
            async with DeltaClient.connect(self.dsn, stream_id="good", world=VICTIM) as dc:
                await asyncio.wait_for(insert_acked(dc, self.ledger, frame, payload, utc), STALL)
                await asyncio.wait_for(dc.close_frame(frame), STALL)
                await dc.wait_merged(frame, timeout=STALL)
            self.bystander_frame += 1
            async with DeltaClient.connect(self.dsn, stream_id="b", world=BYSTANDER) as dc:
                await dc.insert_delta(self.bystander_frame, {"observations": [{"n": self.bystander_frame}]})
                await dc.close_frame(self.bystander_frame)
                await dc.wait_merged(self.bystander_frame, timeout=STALL)
        except TimeoutError:
            self.stalled.append(f"{attack}: frame {frame} not merged within {STALL:.0f}s")


@contextlib.asynccontextmanager
async def _open_transaction(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    tx = conn.transaction()
    await tx.start()
    try:
        yield conn
    finally:
        with contextlib.suppress(Exception):
            await tx.rollback()
        with contextlib.suppress(Exception):
            await conn.close()


# -- the attacks ---------------------------------------------------------------------------------


async def far_future_utc(run: Run) -> None:
    await run.expect_refusal(
        "far_future_utc",
        "22008",
        APPEND,
        VICTIM,
        "h",
        run.frame + 1,
        "294270-01-01 00:00:00+00",
        '{"observations": [1]}',
    )
    await run.good_frame("far_future_utc")


async def far_future_copy(run: Run) -> None:
    async with connection(run.dsn) as conn:
        try:
            row = f'{VICTIM}\t{run.frame + 1}\th\t10000-01-01 00:00:00+00\t{{"observations": [1]}}\n'
            await conn.copy_to_table(
                "delta_log",
                schema_name="dreamcatcher",
                source=io.BytesIO(row.encode()),
                columns=["world", "frame", "stream_id", "utc", "payload"],
            )
            run.let_through.append("far_future_copy: accepted")
        except asyncpg.CheckViolationError:
            pass
    await run.good_frame("far_future_copy")


async def oversize_payload(run: Run) -> None:
    big = orjson.dumps({"observations": ["x" * (1 << 20)] * 17}).decode()
    await run.expect_refusal(
        "oversize_payload", "23514", APPEND, VICTIM, "h", run.frame + 1, "2030-01-01Z", big
    )
    await run.good_frame("oversize_payload")


async def deep_payload(run: Run) -> None:
    doc: Any = 1
    for _ in range(64):
        doc = [doc]
    deep = orjson.dumps({"observations": doc}).decode()
    await run.expect_refusal("deep_payload", "23514", APPEND, VICTIM, "h", run.frame + 1, "2030-01-01Z", deep)
    await run.good_frame("deep_payload")


async def huge_frame(run: Run) -> None:
    close = "SELECT dreamcatcher.close_frame($1, $2)"
    await run.expect_refusal("huge_frame", "22003", close, VICTIM, 2**63 - 1)
    await run.expect_refusal("huge_frame", "DCF01", close, VICTIM, run.frame + 10_000_001)
    await run.good_frame("huge_frame")


async def epoch_ms_frame(run: Run) -> None:
    ms = int(time.time() * 1000)
    await run.expect_refusal("epoch_ms_frame", "DCF01", APPEND, VICTIM, "h", ms, "2030-01-01Z", "{}")
    await run.good_frame("epoch_ms_frame")


async def idle_new_frame(run: Run) -> None:
    """A transaction that opened a frame above the others and went idle: frames below merge."""
    async with _open_transaction(run.dsn) as conn:
        await conn.fetchval(APPEND, VICTIM, "h", run.frame + 1000, "2030-01-01Z", "{}")
        await run.good_frame("idle_new_frame")
        await run.good_frame("idle_new_frame")


async def idle_in_frame(run: Run) -> None:
    """A writer idle in its transaction in the frame the good writer closes: ended, then merged."""
    frame = run.frame + 1
    async with connection(run.dsn) as conn:  # the frame exists, open
        await conn.fetchval(APPEND, VICTIM, "h2", frame, "2030-01-01Z", '{"posts_created": [1]}')
    async with _open_transaction(run.dsn) as idle:
        await idle.fetchval(APPEND, VICTIM, "h", frame, "2030-01-01Z", "{}")
        await run.good_frame("idle_in_frame")


async def lock_by_hand(run: Run) -> None:
    squatter = await asyncpg.connect(run.dsn)
    try:
        await squatter.execute("SELECT pg_advisory_lock(dreamcatcher.world_lock_key($1))", VICTIM)
        await run.good_frame("lock_by_hand")
    finally:
        with contextlib.suppress(Exception):
            await squatter.close()


async def repeatable_read(run: Run) -> None:
    """A snapshot older than the close of the frame it writes into: refused, never acknowledged."""
    for level in ("repeatable_read", "serializable"):
        conn = await asyncpg.connect(run.dsn)
        try:
            tx = conn.transaction(isolation=level)
            await tx.start()
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.frame_log")
            await run.good_frame("repeatable_read")
            try:
                status = await conn.fetchval(APPEND, VICTIM, "h", run.frame, "2030-01-01Z", "{}")
                run.let_through.append(f"repeatable_read: {level} insert answered {status!r}")
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != "0A000":
                    run.let_through.append(f"repeatable_read: {exc.sqlstate} {exc}")
        finally:
            await conn.close()


async def batch_frames(run: Run) -> None:
    frames = list(range(run.frame + 1, run.frame + 34))
    await run.expect_refusal(
        "batch_frames",
        "54000",
        "SELECT dreamcatcher.append_deltas($1, 'h', $2::bigint[], $3::timestamptz[], $4::text[]::jsonb[])",
        VICTIM,
        frames,
        [T0] * len(frames),
        ["{}"] * len(frames),
    )
    await run.good_frame("batch_frames")


async def batch_size(run: Run) -> None:
    n = 10_001
    await run.expect_refusal(
        "batch_size",
        "54000",
        "SELECT dreamcatcher.append_deltas($1, 'h', $2::bigint[], $3::timestamptz[], $4::text[]::jsonb[])",
        VICTIM,
        [run.frame + 1] * n,
        [T0 + timedelta(microseconds=i) for i in range(n)],
        ["{}"] * n,
    )
    await run.good_frame("batch_size")


async def late_retries(run: Run) -> None:
    await run.good_frame("late_retries")
    async with connection(run.dsn) as conn:
        for _ in range(5):
            await conn.fetchval(APPEND, VICTIM, "h", run.frame, "2030-06-01Z", "{}")
        rows = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.late_log WHERE world = $1 AND stream_id = 'h'", VICTIM
        )
    if rows != 1:
        run.let_through.append(f"late_retries: {rows} rows for one late delta retried 5 times")


async def one_entity_many_fields(run: Run) -> None:
    """30,000 updates of one post, each with a new field, in the good writer's frame."""
    updates = [{"number": 7, f"f{i}": i} for i in range(30_000)]
    await run.good_frame("one_entity_many_fields", {"posts_updated": updates})


async def quarantine_flood(run: Run) -> None:
    await run.good_frame("quarantine_flood", {"chapters": [[]] * 100_000})
    async with connection(run.dsn) as conn:
        rows = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.quarantine_log WHERE world = $1 AND frame = $2",
            VICTIM,
            run.frame,
        )
    if rows > 101:
        run.let_through.append(f"quarantine_flood: {rows} quarantine rows for one delta")


async def tiny_leader_timeout(run: Run) -> None:
    async with connection(run.dsn) as conn:
        ended = await conn.fetchval("SELECT dreamcatcher.end_silent_leader($1, 0.001)", VICTIM)
    if ended is not None:
        run.let_through.append("tiny_leader_timeout: a healthy leader was ended")
    await run.good_frame("tiny_leader_timeout")


ATTACKS: tuple[Attack, ...] = (
    far_future_utc,
    far_future_copy,
    oversize_payload,
    deep_payload,
    huge_frame,
    epoch_ms_frame,
    idle_new_frame,
    idle_in_frame,
    lock_by_hand,
    repeatable_read,
    batch_frames,
    batch_size,
    late_retries,
    one_entity_many_fields,
    quarantine_flood,
    tiny_leader_timeout,
)


async def hostile(dsn: str) -> Report:
    """Every attack of :data:`ATTACKS`, in order, against one victim world; see the module docstring."""
    started = time.monotonic()
    run = Run(dsn)
    async with DeltaClient.connect(dsn, stream_id="good", world=VICTIM) as dc:
        await dc.configure_world(idle_writer_timeout=1.0)
    stop = asyncio.Event()
    mergers = [Merger(dsn, world, poll_interval=0.1) for world in (VICTIM, BYSTANDER)]
    tasks = [asyncio.create_task(m.run(stop)) for m in mergers]
    try:
        for attack in ATTACKS:
            await attack(run)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    verdict = await _verdict(dsn, run)
    report = Report(
        "hostile",
        verdict,
        faults={"hostile attack": len(ATTACKS)},
        seconds=time.monotonic() - started,
        stalled=len(run.stalled),
    )
    report.notes["attacks"] = [attack.__name__ for attack in ATTACKS]
    report.notes["writers_ended"] = sum(m.get_stats()["writers_ended"] for m in mergers)
    return report


async def _verdict(dsn: str, run: Run) -> Verdict:
    """The well-behaved writer's deltas against the state; every frame merged; nothing let through."""
    v = Verdict(acked=len(run.ledger.acked), refused=len(run.ledger.refused))
    async with connection(dsn) as conn:
        merged = {
            r["id"]: r["n"]
            for r in await conn.fetch(
                "SELECT data ->> 'id' AS id, count(*) AS n FROM dreamcatcher.observations"
                " WHERE world = $1 AND data ? 'id' GROUP BY 1",
                VICTIM,
            )
        }
        unmerged = [
            r["frame"]
            for r in await conn.fetch(
                "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1 AND status <> 'merged'"
                " AND frame <= $2 ORDER BY 1",
                VICTIM,
                run.frame,
            )
        ]
    lost = [key for key, (mark, _) in run.ledger.acked.items() if merged.get(mark, 0) == 0]
    doubled = [key for key, (mark, _) in run.ledger.acked.items() if merged.get(mark, 0) > 1]
    v.merged = len(run.ledger.acked) - len(lost) - len(doubled)
    v.lost, v.doubled, v.frames, v.frames_unmerged = len(lost), len(doubled), run.frame, len(unmerged)
    if lost:
        v.problem(f"{len(lost)} acknowledged deltas lost", lost)
    if doubled:
        v.problem(f"{len(doubled)} deltas merged more than once", doubled)
    if unmerged:
        v.problem(f"{len(unmerged)} frames of the victim not merged", unmerged)
    for what in run.stalled:
        v.problem(f"world stalled: {what}")
    for what in run.let_through:
        v.problem(f"let through: {what}")
    if run.ledger.unexpected:
        v.problem(f"{len(run.ledger.unexpected)} unexpected errors", run.ledger.unexpected)
    v.hashes_compared, mismatches = await replay_hashes(dsn, VICTIM, f"{VICTIM}~replay")
    v.hash_mismatches = len(mismatches)
    if mismatches:
        v.problem(f"{len(mismatches)} frame hashes differ from a replay", mismatches)
    return v
