"""docs/design.md §2 invariant 3: nothing is lost at the frame boundary.

Many inserters race the close of their frame. Every insert must either land
before the close (and then be merged into that frame exactly once) or fail with
FrameClosedError (and then be nowhere in the log, but recorded as a late
attempt) -- never accepted-then-dropped, never merged twice or into another frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from dreamcatcher_pg import DeltaClient, FrameClosedError, Merger
from tests.support.helpers import (
    connection,
    late_observation_ids,
    logged_observation_ids,
    make_rng,
    observation_ids,
    unique_utc,
)

WORLD = "fence"
CLIENTS = 4  # streams
TASKS_PER_CLIENT = 6  # 24 concurrent inserters, one pooled connection each
TIMEOUT = 60.0  # only so that a broken fence cannot hang the suite


@dataclass
class Ledger:
    """What the inserters were told, per frame."""

    acked: dict[int, list[str]] = field(default_factory=dict)
    refused: dict[int, list[str]] = field(default_factory=dict)
    #: the acked ids as they stood when close_frame(frame) returned
    acked_at_close: dict[int, set[str]] = field(default_factory=dict)
    #: the frame's deltas in the log, read right after close_frame(frame) returned
    logged_at_close: dict[int, Counter[str]] = field(default_factory=dict)

    def ack(self, frame: int, oid: str) -> None:
        self.acked.setdefault(frame, []).append(oid)

    def refuse(self, frame: int, oid: str) -> None:
        self.refused.setdefault(frame, []).append(oid)


def obs(oid: str) -> dict[str, object]:
    return {"observations": [{"id": oid}]}


@contextlib.asynccontextmanager
async def clients(dsn: str, world: str) -> AsyncIterator[list[DeltaClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                DeltaClient.connect(dsn, stream_id=f"stream-{i}", world=world, pool_size=TASKS_PER_CLIENT)
            )
            for i in range(CLIENTS)
        ]


@contextlib.asynccontextmanager
async def running_merger(dsn: str, world: str) -> AsyncIterator[Merger]:
    merger = Merger(dsn, world, poll_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(merger.run(stop))
    try:
        yield merger
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)


async def assert_frame_accounted(conn: asyncpg.Connection, world: str, frame: int, ledger: Ledger) -> None:
    """Every acked delta logged and merged exactly once into ``frame``; every refused one nowhere."""
    acked = ledger.acked.get(frame, [])
    refused = ledger.refused.get(frame, [])
    assert len(set(acked)) == len(acked)
    assert not set(acked) & set(refused)
    logged = Counter(await logged_observation_ids(conn, world, frame))
    merged = Counter(await observation_ids(conn, world, frame))
    late = Counter(await late_observation_ids(conn, world, frame))
    if frame in ledger.logged_at_close:
        # the frame's log is final once close_frame returned: nothing commits into it later
        after_close = set(acked) - set(ledger.logged_at_close[frame])
        assert not after_close, (
            f"frame {frame}: {len(after_close)} acknowledged deltas were not in the log when "
            f"close_frame returned (they committed after the close): {sorted(after_close)[:5]}"
        )
        assert ledger.logged_at_close[frame] == Counter(acked)
    missing = set(acked) - set(merged)
    assert not missing, (
        f"frame {frame}: {len(missing)} acknowledged deltas were never merged: {sorted(missing)[:5]}"
    )
    assert logged == Counter(acked), f"frame {frame}: the log differs from what was acknowledged"
    assert merged == Counter(acked), f"frame {frame}: the merged state differs from what was acknowledged"
    assert late == Counter(refused), f"frame {frame}: late_attempts differs from what was refused"
    row = await conn.fetchrow(
        "SELECT status, delta_count FROM dreamcatcher.frames WHERE world = $1 AND frame = $2", world, frame
    )
    assert tuple(row) == ("merged", len(acked))
    # merged into this frame, not a later one
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.observations"
            " WHERE world = $1 AND frame = $2 AND first_frame <> $2",
            world,
            frame,
        )
        == 0
    )


async def test_inserts_racing_close_are_merged_once_or_refused(dreamcatcher_dsn: str) -> None:
    rng, seed = make_rng()
    frames = [1, 2, 3, 4, 5, 6, 7, 8]
    ledger = Ledger()

    async def inserter(dc: DeltaClient, tag: str, frame: int, reached: asyncio.Event, threshold: int) -> None:
        n = 0
        while True:
            oid = f"{frame}/{tag}/{n}"
            n += 1
            try:
                receipt = await dc.insert_delta(frame, obs(oid), utc=unique_utc())
            except FrameClosedError as exc:
                assert (exc.world, exc.frame) == (WORLD, frame)
                ledger.refuse(frame, oid)
                return
            assert receipt.status == "stored"
            ledger.ack(frame, oid)
            if len(ledger.acked[frame]) >= threshold:
                reached.set()

    async def closer(dc: DeltaClient, frame: int, reached: asyncio.Event, reader: asyncpg.Connection) -> None:
        await reached.wait()
        await asyncio.sleep(rng.uniform(0, 0.01))
        assert await dc.close_frame(frame) == "closed"
        ledger.acked_at_close[frame] = set(ledger.acked.get(frame, []))
        ledger.logged_at_close[frame] = Counter(await logged_observation_ids(reader, WORLD, frame))

    async with (
        clients(dreamcatcher_dsn, WORLD) as dcs,
        DeltaClient.connect(dreamcatcher_dsn, stream_id="closer", world=WORLD) as closing,
        connection(dreamcatcher_dsn) as log_reader,
        running_merger(dreamcatcher_dsn, WORLD) as merger,
    ):
        async with asyncio.timeout(TIMEOUT):
            for frame in frames:
                reached = asyncio.Event()
                threshold = rng.randint(5, 200)
                tasks = [
                    inserter(dc, f"{i}.{t}", frame, reached, threshold)
                    for i, dc in enumerate(dcs)
                    for t in range(TASKS_PER_CLIENT)
                ]
                await asyncio.gather(closer(closing, frame, reached, log_reader), *tasks)
            await closing.wait_merged(frames[-1], timeout=TIMEOUT)
    stats = merger.get_stats()  # after the merger stopped: its counters are final

    async with connection(dreamcatcher_dsn) as conn:
        for frame in frames:
            # every inserter ends on its first refusal: the race really happened
            assert len(ledger.refused[frame]) == CLIENTS * TASKS_PER_CLIENT
            # (an ack may be read after the closer's reply, never a commit after the close)
            assert ledger.acked_at_close[frame] <= set(ledger.acked[frame])
            await assert_frame_accounted(conn, WORLD, frame, ledger)
        total = sum(len(v) for v in ledger.acked.values())
        assert (
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", WORLD)
            == total
        )
    assert stats["frames_merged"] == len(frames), f"seed={seed}"
    assert stats["deltas_merged"] == total


async def test_batches_racing_close_are_merged_once_or_refused(dreamcatcher_dsn: str) -> None:
    """insert_deltas batches that straddle the closing frame and the next one."""
    rng, seed = make_rng()
    frames = [1, 2, 3, 4, 5, 6]
    ledger = Ledger()

    async def inserter(dc: DeltaClient, tag: str, frame: int, reached: asyncio.Event, threshold: int) -> None:
        n = 0
        while True:
            items = []
            for target in (frame, frame, frame, frame + 1):
                items.append({"frame": target, "payload": obs(f"{target}/{tag}/{n}"), "utc": unique_utc()})
                n += 1
            try:
                receipts = await dc.insert_deltas(items)
                refused_now = False
            except FrameClosedError as exc:
                receipts = exc.receipts
                refused_now = True
            stored = {(r.frame, r.utc) for r in receipts if r.status == "stored"}
            assert {r.status for r in receipts} <= {"stored"}
            for item in items:
                oid = item["payload"]["observations"][0]["id"]  # type: ignore[index]
                if (item["frame"], item["utc"]) in stored:
                    ledger.ack(item["frame"], oid)
                else:
                    ledger.refuse(item["frame"], oid)
            if refused_now:
                # the batch's items for the closed frame were refused, the next frame's stored
                assert stored == {(i["frame"], i["utc"]) for i in items if i["frame"] == frame + 1}
                return
            if len(ledger.acked[frame]) >= threshold:
                reached.set()

    async def closer(dc: DeltaClient, frame: int, reached: asyncio.Event, reader: asyncpg.Connection) -> None:
        await reached.wait()
        await asyncio.sleep(rng.uniform(0, 0.01))
        assert await dc.close_frame(frame) == "closed"
        ledger.acked_at_close[frame] = set(ledger.acked.get(frame, []))
        ledger.logged_at_close[frame] = Counter(await logged_observation_ids(reader, WORLD, frame))

    async with (
        clients(dreamcatcher_dsn, WORLD) as dcs,
        DeltaClient.connect(dreamcatcher_dsn, stream_id="closer", world=WORLD) as closing,
        connection(dreamcatcher_dsn) as log_reader,
        running_merger(dreamcatcher_dsn, WORLD),
    ):
        async with asyncio.timeout(TIMEOUT):
            for frame in frames:
                reached = asyncio.Event()
                threshold = rng.randint(12, 240)
                tasks = [
                    inserter(dc, f"{i}.{t}", frame, reached, threshold)
                    for i, dc in enumerate(dcs)
                    for t in range(TASKS_PER_CLIENT)
                ]
                await asyncio.gather(closer(closing, frame, reached, log_reader), *tasks)
            last = frames[-1] + 1
            assert await closing.close_frame(last) == "closed"
            await closing.wait_merged(last, timeout=TIMEOUT)

    async with connection(dreamcatcher_dsn) as conn:
        for frame in [*frames, frames[-1] + 1]:
            if frame in ledger.acked_at_close:
                assert ledger.acked_at_close[frame] <= set(ledger.acked[frame]), f"seed={seed}"
                assert len(ledger.refused[frame]) == 3 * CLIENTS * TASKS_PER_CLIENT
            await assert_frame_accounted(conn, WORLD, frame, ledger)


async def test_a_reader_never_sees_a_merged_frame_without_an_acknowledged_delta(
    dreamcatcher_dsn: str,
) -> None:
    """The ordering hazard (docs/design.md §2.3).

    Inserters keep writing into "the current frame" while a closer rolls the
    frames forward and the merger runs. A reader polls the committed frames:
    as soon as it sees frame F merged it reads F's deltas and merged state, and
    they must already hold every delta acknowledged for F -- in particular every
    one acknowledged before close_frame(F) returned.
    """
    rng, seed = make_rng()
    ledger = Ledger()
    current = [1]
    stop_inserting = asyncio.Event()
    last_frame = 10
    seen_state: dict[int, Counter[str]] = {}
    seen_log: dict[int, Counter[str]] = {}
    acked_when_seen: dict[int, set[str]] = {}

    async def inserter(dc: DeltaClient, tag: str, lag: float = 0.0) -> None:
        n = 0
        while not stop_inserting.is_set():
            frame = current[0]
            oid = f"{tag}/{n}"
            n += 1
            if lag:  # a slow writer: it holds a frame it read a moment ago, so it meets closes
                await asyncio.sleep(lag)
            try:
                await dc.insert_delta(frame, obs(oid), utc=unique_utc())
            except FrameClosedError:
                ledger.refuse(frame, oid)
                await asyncio.sleep(0)
                continue
            ledger.ack(frame, oid)

    async def closer(dc: DeltaClient, log_reader: asyncpg.Connection) -> None:
        for frame in range(1, last_frame + 1):
            threshold = rng.randint(5, 60)
            while len(ledger.acked.get(frame, [])) < threshold:  # noqa: ASYNC110 (a count, not an event)
                await asyncio.sleep(0.002)
            if frame == last_frame:
                stop_inserting.set()
            else:
                current[0] = frame + 1  # new inserts go to the next frame while this one closes
            assert await dc.close_frame(frame) == "closed"
            ledger.acked_at_close[frame] = set(ledger.acked.get(frame, []))
            ledger.logged_at_close[frame] = Counter(await logged_observation_ids(log_reader, WORLD, frame))

    async def reader() -> None:
        async with connection(dreamcatcher_dsn) as conn:
            while len(seen_state) < last_frame:
                merged = await conn.fetch(
                    "SELECT frame FROM dreamcatcher.frames WHERE world = $1 AND status = 'merged'"
                    " AND frame <> ALL ($2::bigint[]) ORDER BY frame",
                    WORLD,
                    list(seen_state),
                )
                for row in merged:
                    frame = row["frame"]
                    seen_state[frame] = Counter(await observation_ids(conn, WORLD, frame))
                    seen_log[frame] = Counter(await logged_observation_ids(conn, WORLD, frame))
                    # taken after the reads: everything acked by now must be in what was read
                    acked_when_seen[frame] = set(ledger.acked.get(frame, []))
                await asyncio.sleep(0.003)

    async with (
        clients(dreamcatcher_dsn, WORLD) as dcs,
        DeltaClient.connect(dreamcatcher_dsn, stream_id="closer", world=WORLD) as closing,
        connection(dreamcatcher_dsn) as log_reader,
        running_merger(dreamcatcher_dsn, WORLD),
    ):
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(
                closer(closing, log_reader),
                reader(),
                *(inserter(dc, f"{i}.{t}") for i, dc in enumerate(dcs) for t in range(TASKS_PER_CLIENT)),
                *(inserter(dcs[0], f"slow.{t}", lag=0.003) for t in range(2)),
            )

    assert sorted(seen_state) == list(range(1, last_frame + 1))
    for frame in range(1, last_frame + 1):
        acked = set(ledger.acked[frame])
        for name, what in (("merged state", seen_state[frame]), ("log", seen_log[frame])):
            missing_at_close = ledger.acked_at_close[frame] - set(what)
            assert not missing_at_close, (
                f"seed={seed}: frame {frame} was merged, but its {name} lacks {len(missing_at_close)} deltas "
                f"acknowledged before close_frame returned: {sorted(missing_at_close)[:5]}"
            )
            missing_when_seen = acked_when_seen[frame] - set(what)
            assert not missing_when_seen, f"frame {frame}: {name} lacks {sorted(missing_when_seen)[:5]}"
            assert what == Counter(acked), f"seed={seed}: frame {frame}: {name} differs from the acks"
    async with connection(dreamcatcher_dsn) as conn:
        for frame in range(1, last_frame + 1):
            await assert_frame_accounted(conn, WORLD, frame, ledger)
    # some inserts did hit a closed frame (the race was real), none was lost
    assert sum(len(v) for v in ledger.refused.values()) > 0
