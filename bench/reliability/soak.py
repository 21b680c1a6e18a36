"""Scenario: 64 concurrent writers racing frame closes for a bounded time."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from datetime import timedelta
from typing import IO

from bench.mergerproc import MergerProcess
from dreamcatcher_pg import (
    DeltaClient,
    configure_world,
)

from .common import PATIENCE, T0, Ledger, connection, insert_acked, marker
from .report import Report
from .verdict import Verdict, install_merge_audit, verify

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
    report.notes = {
        "writers": clients * per_client,
        "frames": report.verdict.frames,
        "acknowledged per second": round(len(ledger.acked) / seconds),
    }
    report.seconds = time.monotonic() - started
    return report
