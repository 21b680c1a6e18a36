"""Scenario: the merger SIGKILLed again and again under a writing fleet, and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from datetime import timedelta
from typing import IO, Any

from bench.mergerproc import MergerProcess
from dreamcatcher_pg import (
    DeltaClient,
    configure_world,
)

from .common import PATIENCE, T0, Ledger, connection, fleet_payload, insert_acked, poll_until
from .report import Report
from .verdict import MERGE_ACTIVE, Verdict, install_merge_audit, last_merged, verify

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
