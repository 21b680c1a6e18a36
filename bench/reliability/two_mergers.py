"""Scenario: a leader and a standby; the leader is SIGKILLed and the standby takes over."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import IO

from bench.mergerproc import MergerProcess
from dreamcatcher_pg import (
    DeltaClient,
    configure_world,
)

from .common import PATIENCE, T0, Ledger, connection, fleet_payload, insert_acked, poll_until
from .report import Report
from .verdict import Verdict, install_merge_audit, last_merged, merge_audit, verify

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
