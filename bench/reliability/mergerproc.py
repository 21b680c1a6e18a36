"""The merger as a killable subprocess (restarted by the scenarios that kill it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import IO

import asyncpg

from .common import poll_until

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
