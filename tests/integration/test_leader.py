"""DESIGN.md §2 invariant 7: one merger per world writes state; a standby takes over.

A test-side trigger (``helpers.install_merge_audit``) records every write that
leaves a frame 'merged', with the backend that did it, so "merged exactly once,
by the leader" is observed in the database, not inferred from the mergers' own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
from helpers import (
    connection,
    install_merge_audit,
    merge_audit,
    observation_ids,
    terminate_backend,
    unique_utc,
    wait_until,
)

from dreamcatcher_pg import DeltaClient, Merger

WORLD = "lead"
TIMEOUT = 20.0
POLL = 0.1


@contextlib.asynccontextmanager
async def two_mergers(
    dsn: str,
) -> AsyncIterator[tuple[list[Merger], list[asyncio.Event], list[asyncio.Task[None]]]]:
    mergers = [Merger(dsn, WORLD, poll_interval=POLL, name=name) for name in ("m1", "m2")]
    stops = [asyncio.Event(), asyncio.Event()]
    tasks: list[asyncio.Task[None]] = []
    try:
        yield mergers, stops, tasks
    finally:
        for stop in stops:
            stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, TIMEOUT)
        for merger in mergers:
            await merger.aclose()


async def leader_lock_pids(conn: asyncpg.Connection) -> list[int]:
    """The backends holding the world's leader advisory lock (PostgreSQL's view)."""
    rows = await conn.fetch(
        """
        SELECT pid FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((classid::bigint << 32) | objid::bigint) = dreamcatcher.leader_lock_key($1)
        """,
        WORLD,
    )
    return [r["pid"] for r in rows]


async def write_frames(dc: DeltaClient, frames: range) -> dict[int, list[str]]:
    written: dict[int, list[str]] = {}
    for frame in frames:
        for i in range(3):
            oid = f"{frame}/{i}"
            assert (
                await dc.insert_delta(frame, {"observations": [{"id": oid}]}, utc=unique_utc())
            ).status == "stored"
            written.setdefault(frame, []).append(oid)
        assert await dc.close_frame(frame) == "closed"
    return written


async def assert_merged_once(
    conn: asyncpg.Connection, written: dict[int, list[str]]
) -> list[tuple[int, str, int]]:
    audit = await merge_audit(conn, WORLD)
    assert Counter(frame for frame, _, _ in audit) == Counter(dict.fromkeys(written, 1)), audit
    assert {old for _, old, _ in audit} == {"closed"}
    assert [frame for frame, _, _ in audit] == sorted(written)  # in ascending order
    for frame, oids in written.items():
        assert Counter(await observation_ids(conn, WORLD, frame)) == Counter(oids)
        assert await conn.fetchval(
            "SELECT status = 'merged' AND merged_at IS NOT NULL FROM dreamcatcher.frames"
            " WHERE world = $1 AND frame = $2",
            WORLD,
            frame,
        )
    return audit


async def test_one_leader_merges_and_a_standby_takes_over_when_it_stops(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        await install_merge_audit(conn)
        async with (
            two_mergers(dreamcatcher_dsn) as (mergers, stops, tasks),
            DeltaClient.connect(dreamcatcher_dsn, stream_id="w", world=WORLD) as dc,
        ):
            # both try at once: exactly one wins, and it is the one PostgreSQL says holds the lock
            leads = await asyncio.gather(*(m.try_lead() for m in mergers))
            assert sorted(leads) == [False, True]
            leader, standby = (mergers[0], mergers[1]) if leads[0] else (mergers[1], mergers[0])
            leader_stop = stops[mergers.index(leader)]
            assert await standby.try_lead() is False  # asking again changes nothing
            assert await leader.try_lead() is True
            leader_pid = await conn.fetchval(
                "SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", WORLD
            )
            assert await leader_lock_pids(conn) == [leader_pid]
            assert await conn.fetchval("SELECT holder FROM dreamcatcher.mergers WHERE world = $1", WORLD) == (
                leader.holder
            )

            tasks.extend(asyncio.create_task(m.run(s)) for m, s in zip(mergers, stops, strict=True))
            written = await write_frames(dc, range(1, 7))
            await dc.wait_merged(6, timeout=TIMEOUT)
            audit = await assert_merged_once(conn, written)
            assert {pid for _, _, pid in audit} == {leader_pid}  # the standby wrote nothing
            assert standby.get_stats()["frames_merged"] == 0
            assert standby.get_stats()["is_leader"] is False

            # the leader stops; the standby notices by itself and merges what comes next
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            leader_stop.set()
            await asyncio.wait_for(tasks[mergers.index(leader)], TIMEOUT)

            async def standby_leads() -> bool:
                return bool(standby.get_stats()["is_leader"])

            await wait_until(standby_leads, timeout=TIMEOUT, what="the standby to take the leader lock")
            took_over = loop.time() - stopped_at
            more = await write_frames(dc, range(7, 10))
            await dc.wait_merged(9, timeout=TIMEOUT)
            merged_again = loop.time() - stopped_at
            print(f"\ntakeover after stop: lock {took_over:.3f}s, frames 7-9 merged {merged_again:.3f}s")

            standby_pid = await conn.fetchval(
                "SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", WORLD
            )
            assert standby_pid != leader_pid
            assert await leader_lock_pids(conn) == [standby_pid]
            audit = await assert_merged_once(conn, {**written, **more})
            assert [pid for frame, _, pid in audit if frame >= 7] == [standby_pid] * 3
        assert leader.get_stats()["frames_merged"] + standby.get_stats()["frames_merged"] == 9
        assert standby.get_stats()["frames_merged"] == 3


async def test_a_standby_takes_over_when_the_leaders_connection_dies(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        await install_merge_audit(conn)
        async with (
            two_mergers(dreamcatcher_dsn) as (mergers, stops, tasks),
            DeltaClient.connect(dreamcatcher_dsn, stream_id="w", world=WORLD) as dc,
        ):
            tasks.extend(asyncio.create_task(m.run(s)) for m, s in zip(mergers, stops, strict=True))
            written = await write_frames(dc, range(1, 4))
            await dc.wait_merged(3, timeout=TIMEOUT)

            async def counted() -> bool:  # the merger counts a frame just after its commit
                return sum(m.get_stats()["frames_merged"] for m in mergers) == 3

            await wait_until(counted, timeout=TIMEOUT, what="the leader to count its merges")
            [old_pid] = await leader_lock_pids(conn)

            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            await terminate_backend(conn, old_pid)  # the leader's session dies with its lock

            async def one_leader_again() -> bool:
                pids = await leader_lock_pids(conn)
                flags = [m.get_stats()["is_leader"] for m in mergers]
                return len(pids) == 1 and pids[0] != old_pid and flags.count(True) == 1

            await wait_until(one_leader_again, timeout=TIMEOUT, what="a new leader")
            took_over = loop.time() - killed_at
            more = await write_frames(dc, range(4, 7))
            await dc.wait_merged(6, timeout=TIMEOUT)
            print(f"\ntakeover after the leader's backend was killed: {took_over:.3f}s")

            [new_pid] = await leader_lock_pids(conn)
            assert (
                await conn.fetchval("SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", WORLD)
                == new_pid
            )
            audit = await assert_merged_once(conn, {**written, **more})
            assert {pid for frame, _, pid in audit if frame <= 3} == {old_pid}
            assert {pid for frame, _, pid in audit if frame >= 4} == {new_pid}
        merged = [m.get_stats()["frames_merged"] for m in mergers]
        assert sum(merged) == 6
