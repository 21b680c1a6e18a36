"""The merger as users run it: ``python -m dreamcatcher_pg --dsn DSN merger --world W``, a subprocess.

A subprocess keeps the merger off the benchmark's event loop (and off its GIL),
lets the merger's own memory be measured, and can be killed (SIGKILL) and restarted
by the reliability scenarios. :class:`MergerProcess` is the one helper;
:func:`merger_process` is its common use: start one, wait until it leads, stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

import asyncpg

#: How long any single wait may take before the run is declared stuck (never a timing assertion);
#: bench.reliability's waits too.
PATIENCE = 180.0


class MergerFailed(RuntimeError):
    """The merger exited, or did not start or lead in time."""


class MergerProcess:
    """``python -m dreamcatcher_pg --dsn DSN merger --world W``, as users run it; killable.

    Its output is appended to ``log`` (shared by every restart of a scenario);
    ``verbose`` passes ``-v`` (debug log lines).
    """

    def __init__(
        self, dsn: str, world: str, log: IO[bytes], *, poll_interval: float = 0.1, verbose: bool = False
    ) -> None:
        self.dsn, self.world, self.log, self.poll_interval = dsn, world, log, poll_interval
        self.verbose = verbose
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
            sys.executable,
            "-m",
            "dreamcatcher_pg",
            "--dsn",
            self.dsn,
            *(["-v"] if self.verbose else []),
            "merger",
            "--world",
            self.world,
            "--poll-interval",
            str(self.poll_interval),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        return self

    async def kill(self) -> None:
        """SIGKILL: no cleanup at all; its backend finds out when it next talks to the socket."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
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

    async def wait_leading(self, conn: asyncpg.Connection, *, timeout: float = PATIENCE) -> float:
        """Until it leads its world; the seconds it took."""
        return await self._until(lambda: self.leads(conn), what="leading", timeout=timeout, interval=0.002)

    async def wait_started(self, *, timeout: float = PATIENCE) -> float:
        """Until its log says it runs (standing by, or leading); the seconds it took."""

        async def started() -> bool:
            return b"started; standing by" in self._read_log(self._log_start)

        return await self._until(started, what="started", timeout=timeout, interval=0.01)

    async def _until(
        self, predicate: Callable[[], Awaitable[bool]], *, what: str, timeout: float, interval: float
    ) -> float:
        """Await ``predicate`` until true; :class:`MergerFailed` if the merger exits or it takes too long."""
        start = time.monotonic()
        while True:
            if not self.alive():
                rc = self.proc and self.proc.returncode
                raise MergerFailed(f"merger {self.pid} of {self.world!r} exited (rc={rc}) before {what}")
            if await predicate():
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise MergerFailed(
                    f"stuck: merger {self.pid} of {self.world!r} not {what} after {timeout:.0f}s"
                )
            await asyncio.sleep(interval)

    def _read_log(self, start: int) -> bytes:
        self.log.flush()
        end = self.log.seek(0, os.SEEK_END)
        self.log.seek(start)
        data = self.log.read(end - start)
        self.log.seek(0, os.SEEK_END)
        return data

    def tail(self, size: int = 4000) -> str:
        """The last ``size`` bytes of the log (of every restart), as text."""
        self.log.flush()
        end = self.log.seek(0, os.SEEK_END)
        return self._read_log(max(0, end - size)).decode(errors="replace")


@contextlib.asynccontextmanager
async def merger_process(
    dsn: str, world: str, *, poll_interval: float = 1.0, timeout: float = 30.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start a verbose merger for ``world``; yield once it leads the world; SIGTERM it on exit.

    Any exception raised inside (or while it starts) carries the merger's last log lines as a note.
    """
    with tempfile.TemporaryFile() as log:
        merger = await MergerProcess(dsn, world, log, poll_interval=poll_interval, verbose=True).start()
        assert merger.proc is not None
        try:
            conn = await asyncpg.connect(dsn)
            try:
                await merger.wait_leading(conn, timeout=timeout)
            finally:
                await conn.close()
            yield merger.proc
        except BaseException as exc:
            exc.add_note(f"merger log (last lines):\n{merger.tail(3000)}")
            raise
        finally:
            await merger.stop(timeout=10.0)
