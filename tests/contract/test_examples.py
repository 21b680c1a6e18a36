"""examples/workers: each worker runs as a user would run it, against a real server with a merger."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import Merger

WORKERS = Path(__file__).resolve().parents[2] / "examples" / "workers"


@contextlib.asynccontextmanager
async def merging(dsn: str, world: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    merger = Merger(dsn, world, poll_interval=0.2)
    task = asyncio.create_task(merger.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def run_example(name: str, *args: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKERS / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def merged_frames(dsn: str, world: str) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT frame FROM dreamcatcher.frame_log WHERE world = $1 AND status = 'merged' ORDER BY 1",
            world,
        )
        return [r["frame"] for r in rows]
    finally:
        await conn.close()


@pytest.mark.parametrize("name", ["async_worker.py", "sync_worker.py"])
async def test_a_worker_writes_its_frames_and_they_merge(dreamcatcher_dsn: str, name: str) -> None:
    async with merging(dreamcatcher_dsn, "default"):
        first = await run_example(name, "--dsn", dreamcatcher_dsn, "--frames", "3", "--wait", "30")
    assert first["frames"] == [1, 2, 3] and first["stored"] == 30
    assert await merged_frames(dreamcatcher_dsn, "default") == [1, 2, 3]
    # run again (a retry of the whole worker): nothing new is stored, even in merged frames
    again = await run_example(name, "--dsn", dreamcatcher_dsn, "--frames", "3")
    assert again.get("stored", 0) == 0 and again["duplicate"] == 30
    # new deltas for a merged frame are refused as late
    other = await run_example(name, "--dsn", dreamcatcher_dsn, "--frames", "1", "--stream", "other")
    assert other.get("stored", 0) == 0 and other["late"] == 10


async def test_the_multiprocessing_fleet_writes_every_stream_of_every_frame(dreamcatcher_dsn: str) -> None:
    async with merging(dreamcatcher_dsn, "fleet"):
        result = await run_example(
            "fleet.py", "--dsn", dreamcatcher_dsn, "--processes", "3", "--frames", "2", "--wait", "60"
        )
    assert result == {"client": "sync-fleet", "processes": 3, "frames": [1, 2], "stored": 18}
    assert await merged_frames(dreamcatcher_dsn, "fleet") == [1, 2]
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        streams = await conn.fetch(
            "SELECT frame, array_agg(DISTINCT stream_id ORDER BY stream_id) AS s FROM dreamcatcher.delta_log "
            "WHERE world = 'fleet' GROUP BY frame ORDER BY frame"
        )
    finally:
        await conn.close()
    assert [(r["frame"], r["s"]) for r in streams] == [(f, ["fleet-0", "fleet-1", "fleet-2"]) for f in (1, 2)]
