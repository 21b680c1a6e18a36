"""docs/design.md §2 invariant 7: one merger per world writes state; a standby takes over.

A test-side trigger (``helpers.install_merge_audit``) records every write that
leaves a frame 'merged', with the backend that did it, so "merged exactly once,
by the leader" is observed in the database, not inferred from the mergers' own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg

from dreamcatcher_pg import DeltaClient, Merger
from dreamcatcher_pg.db.queries import query
from tests.support.helpers import (
    connection,
    install_merge_audit,
    merge_audit,
    observation_ids,
    terminate_backend,
    unique_utc,
    wait_until,
)

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


@contextlib.asynccontextmanager
async def merger_subprocess(dsn: str, *, leader_timeout: float) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m dreamcatcher_pg merger`` for WORLD, as users run it; ended (and resumed, if
    stopped) on exit, its log attached to a failure."""
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dreamcatcher_pg",
            "--dsn",
            dsn,
            "-v",
            "merger",
            "--world",
            WORLD,
            "--poll-interval",
            str(POLL),
            "--leader-timeout",
            str(leader_timeout),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        try:
            yield proc
        except BaseException as exc:
            log.seek(0)
            exc.add_note(f"merger {proc.pid} log:\n{log.read()[-3000:].decode(errors='replace')}")
            raise
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), TIMEOUT)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def test_a_standby_ends_the_session_of_a_hung_leader_and_takes_over(dreamcatcher_dsn: str) -> None:
    """A leader that hangs without dying (SIGSTOP) keeps its session, so its lock: the standby
    sees its heartbeat stop, ends that session (rolling back whatever it had begun) and leads.
    The hung process, resumed, finds its session gone and stands by: one writer throughout."""
    leader_timeout = 1.0
    async with connection(dreamcatcher_dsn) as conn:
        await install_merge_audit(conn)
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="w", world=WORLD) as dc:
            await dc.configure_world()
            async with merger_subprocess(dreamcatcher_dsn, leader_timeout=leader_timeout) as first:

                async def leads() -> bool:
                    return len(await leader_lock_pids(conn)) == 1

                await wait_until(leads, timeout=TIMEOUT, what="the first merger to lead")
                [old_pid] = await leader_lock_pids(conn)
                async with merger_subprocess(dreamcatcher_dsn, leader_timeout=leader_timeout) as second:
                    written = await write_frames(dc, range(1, 3))
                    await dc.wait_merged(2, timeout=TIMEOUT)
                    assert await leader_lock_pids(conn) == [old_pid]  # a live leader is left alone

                    loop = asyncio.get_running_loop()
                    os.kill(first.pid, signal.SIGSTOP)
                    stopped_at = loop.time()
                    more = await write_frames(dc, range(3, 5))
                    await dc.wait_merged(4, timeout=TIMEOUT)
                    took = loop.time() - stopped_at
                    print(f"\nhung leader replaced: frames 3-4 merged {took:.2f}s after SIGSTOP")
                    [new_pid] = await leader_lock_pids(conn)
                    assert new_pid != old_pid
                    assert not await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", old_pid
                    )  # its session was ended, not merely outrun
                    assert (
                        await conn.fetchval("SELECT holder FROM dreamcatcher.mergers WHERE world = $1", WORLD)
                        == f"{socket.gethostname()}:{second.pid}"
                    )

                    os.kill(first.pid, signal.SIGCONT)  # it wakes up without a session
                    latest = await write_frames(dc, range(5, 7))
                    await dc.wait_merged(6, timeout=TIMEOUT)
                    await asyncio.sleep(5 * POLL)  # time to try (and fail) to lead again
                    assert first.returncode is None and second.returncode is None  # both still run
                    assert await leader_lock_pids(conn) == [new_pid]

                    audit = await assert_merged_once(conn, {**written, **more, **latest})
                    assert {pid for frame, _, pid in audit if frame <= 2} == {old_pid}
                    assert {pid for frame, _, pid in audit if frame >= 3} == {new_pid}


async def test_no_standby_ends_a_leader_busy_in_a_long_merge(dreamcatcher_dsn: str) -> None:
    """The leader's heartbeat comes from its other connection, so a merge that takes many
    leader_timeouts (here: blocked on a lock the test holds) is not mistaken for a hang."""
    leader_timeout = 0.5
    async with connection(dreamcatcher_dsn) as conn, connection(dreamcatcher_dsn) as blocker:
        await install_merge_audit(conn)
        mergers = [
            Merger(dreamcatcher_dsn, WORLD, poll_interval=POLL, leader_timeout=leader_timeout, name=name)
            for name in ("m1", "m2")
        ]
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        try:
            async with DeltaClient.connect(dreamcatcher_dsn, stream_id="w", world=WORLD) as dc:
                await dc.configure_world()
                tasks.extend(asyncio.create_task(m.run(stop)) for m in mergers)

                async def one_leads() -> bool:
                    return [m.get_stats()["is_leader"] for m in mergers].count(True) == 1

                await wait_until(one_leads, timeout=TIMEOUT, what="a leader")
                [leader_pid] = await leader_lock_pids(conn)
                async with blocker.transaction():
                    # the merge's writes wait for this lock: the merge lasts as long as we hold it
                    await blocker.execute("LOCK TABLE dreamcatcher.entity_versions IN SHARE MODE")
                    written = await write_frames(dc, range(1, 2))

                    async def merging() -> bool:
                        return bool(
                            await conn.fetchval(
                                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1"
                                " AND wait_event_type = 'Lock')",
                                leader_pid,
                            )
                        )

                    await wait_until(merging, timeout=TIMEOUT, what="the merge to wait for the lock")
                    await asyncio.sleep(6 * leader_timeout)
                    assert await leader_lock_pids(conn) == [leader_pid]  # nobody ended the busy leader
                await dc.wait_merged(1, timeout=TIMEOUT)
                audit = await assert_merged_once(conn, written)
                assert {pid for _, _, pid in audit} == {leader_pid}
                assert [m.get_stats()["is_leader"] for m in mergers].count(True) == 1
        finally:
            stop.set()
            for task in tasks:
                await asyncio.wait_for(task, TIMEOUT)
            for m in mergers:
                await m.aclose()


async def test_a_heartbeat_is_written_only_for_the_session_that_holds_the_lock(dreamcatcher_dsn: str) -> None:
    """The heartbeat may come from the leader's other connection, so it names the session it
    speaks for; once that session has lost the lock (ended, say, while its process was
    stopped), a late heartbeat from the woken process must not pass for the new leader's."""
    started = datetime.now(UTC)
    async with connection(dreamcatcher_dsn) as conn, connection(dreamcatcher_dsn) as session:
        assert await session.fetchval(query("try_leader_lock"), WORLD)
        pid = session.get_server_pid()
        await conn.execute(query("heartbeat"), WORLD, "old:1", started, pid, 30.0)  # from another connection
        assert (
            await conn.fetchval("SELECT backend_pid FROM dreamcatcher.mergers WHERE world = $1", WORLD) == pid
        )
        await terminate_backend(conn, pid)  # the session (and its lock) is gone
        async with connection(dreamcatcher_dsn) as new_session:
            assert await new_session.fetchval(query("try_leader_lock"), WORLD)
            new_pid = new_session.get_server_pid()
            await conn.execute(query("heartbeat"), WORLD, "new:2", started, new_pid, 30.0)
            before = await conn.fetchrow("SELECT * FROM dreamcatcher.mergers WHERE world = $1", WORLD)
            await conn.execute(query("heartbeat"), WORLD, "old:1", started, pid, 30.0)  # the late one
            after = await conn.fetchrow("SELECT * FROM dreamcatcher.mergers WHERE world = $1", WORLD)
            assert dict(after) == dict(before) and after["backend_pid"] == new_pid


async def test_the_silence_that_ends_a_leader_is_the_leaders_own_timeout(dreamcatcher_dsn: str) -> None:
    """end_silent_leader let its caller choose the silence: a standby (or any merger login) asking
    with a tiny timeout ended a healthy leader mid-merge. The leader declares its own timeout
    with its heartbeats; a caller can only wait longer."""
    dsn = dreamcatcher_dsn
    leader = Merger(dsn, WORLD, poll_interval=POLL, leader_timeout=30.0)
    stop = asyncio.Event()
    task = asyncio.create_task(leader.run(stop))
    try:
        async with connection(dsn) as conn:

            async def leads() -> bool:
                return len(await leader_lock_pids(conn)) == 1 and bool(
                    await conn.fetchval(
                        "SELECT leader_timeout FROM dreamcatcher.mergers WHERE world = $1", WORLD
                    )
                )

            await wait_until(leads, timeout=TIMEOUT, what="the leader to lead and beat")
            [pid] = await leader_lock_pids(conn)
            for _ in range(10):
                assert await conn.fetchval(query("end_silent_leader"), WORLD, 0.001) is None
                assert await conn.fetchrow(query("silent_leader"), WORLD, 0.001) is None
                await asyncio.sleep(POLL)
            assert await leader_lock_pids(conn) == [pid]
            # a leader that falls silent is still ended, after its own timeout: its task stops
            # (its session, and the lock, stay) and it declares 0.2 s
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await leader._stop_beats()
            await conn.execute("UPDATE dreamcatcher.mergers SET leader_timeout = 0.2 WHERE world = $1", WORLD)

            async def ended() -> bool:
                return await conn.fetchval(query("end_silent_leader"), WORLD, 0.001) == pid

            await wait_until(ended, timeout=TIMEOUT, what="the silent leader to be ended")
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, TIMEOUT)
        await leader.aclose()
