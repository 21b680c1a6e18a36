"""The merger as users run it: ``python -m dreamcatcher_pg --dsn DSN merger --world W``, a subprocess.

A subprocess keeps the merger off the benchmark's event loop (and off its GIL),
and lets the merger's own memory be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from typing import IO

import asyncpg

LEADER_QUERY = "SELECT 1 FROM dreamcatcher.mergers WHERE world = $1 AND holder LIKE '%:' || $2::text"


class MergerFailed(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def merger_process(
    dsn: str, world: str, *, poll_interval: float = 1.0, timeout: float = 30.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a merger for ``world``; yield once it leads the world; SIGTERM it on exit."""
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dreamcatcher_pg", "--dsn", dsn, "-v",
            "merger", "--world", world, "--poll-interval", str(poll_interval),
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            await _wait_leading(proc, dsn, world, timeout, log)
            yield proc
        except BaseException as exc:
            exc.add_note(f"merger log (last lines):\n{_tail(log)}")
            raise
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10.0)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_leading(
    proc: asyncio.subprocess.Process, dsn: str, world: str, timeout: float, log: IO[bytes]
) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await conn.fetchval(LEADER_QUERY, world, str(proc.pid)):
            if proc.returncode is not None or loop.time() > deadline:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise MergerFailed(
                    f"merger for {world!r} did not start leading (rc={proc.returncode}): {tail}"
                )
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


def _tail(log: IO[bytes], size: int = 3000) -> str:
    log.flush()
    log.seek(0, 2)
    end = log.tell()
    log.seek(max(0, end - size))
    return log.read().decode(errors="replace")
