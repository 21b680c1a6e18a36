"""One writer of state per world: the leader lock, heartbeats, and ending a silent leader.

A merger writes state only while it holds its world's leader lock (a session
advisory lock, ``pg_try_advisory_lock``), so a merger that loses its session loses
the lock with it. The leader sends a heartbeat from its listener connection every
poll interval (and at least five times per ``leader_timeout``), merging or not. A
standby that sees the lock holder silent for longer than the holder's own
``leader_timeout`` ends that session with ``pg_terminate_backend`` and takes the lock.

:class:`Leadership` is the part of :class:`~dreamcatcher_pg.merger.Merger` that does this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime

import asyncpg

from .db.queries import query
from .errors import DRIVER_ERRORS
from .models import MergerStats

log = logging.getLogger("dreamcatcher_pg.merger")  # (its log lines have always been the merger's)


class Leadership:
    """The leader lock and heartbeats of a merger (which opens the connections)."""

    world: str
    holder: str
    poll_interval: float
    leader_timeout: float | None
    stats: MergerStats
    _conn: asyncpg.Connection | None
    _listener: asyncpg.Connection | None
    _started_at: datetime
    _beats: asyncio.Task[None] | None
    _suspect: tuple[int, float] | None

    async def _connect(self) -> None:
        raise NotImplementedError

    async def try_lead(self) -> bool:
        """Take this world's leader lock if it is free. True when this merger leads."""
        await self._connect()
        assert self._conn is not None
        if not self.stats.is_leader:
            self.stats.is_leader = bool(await self._conn.fetchval(query("try_leader_lock"), self.world))
            if self.stats.is_leader:
                log.info(
                    "merger %s leads world %r",
                    self.holder,
                    self.world,
                    extra={"world": self.world, "holder": self.holder},
                )
                await self._heartbeat()
        return self.stats.is_leader

    async def _heartbeat(self) -> None:
        assert self._conn is not None
        await self._conn.execute(
            query("heartbeat"),
            self.world,
            self.holder,
            self._started_at,
            self._conn.get_server_pid(),
            self.leader_timeout,
        )

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between the heartbeats a leader sends while it leads."""
        if self.leader_timeout is None:
            return self.poll_interval
        return max(0.05, min(self.poll_interval, self.leader_timeout / 5))

    async def _beat_while_leading(self) -> None:
        """Heartbeats from the listener connection, so a long merge on the session is no silence."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            conn, listener = self._conn, self._listener
            if not self.stats.is_leader or conn is None or conn.is_closed():
                continue
            if listener is None or listener.is_closed():
                continue
            try:
                await listener.execute(
                    query("heartbeat"),
                    self.world,
                    self.holder,
                    self._started_at,
                    conn.get_server_pid(),
                    self.leader_timeout,
                )
            except DRIVER_ERRORS as exc:  # the run loop sees a broken connection itself
                log.debug("heartbeat of world %r not sent: %s", self.world, exc, extra={"world": self.world})

    def _start_beats(self) -> None:
        if self._beats is None or self._beats.done():
            self._beats = asyncio.create_task(self._beat_while_leading())

    async def _stop_beats(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
            self._beats = None

    async def end_silent_leader(self) -> int | None:
        """As a standby: end the session of a leader silent for longer than ``leader_timeout``.

        Returns the pid of the session ended, or None: no leader, a live one, a silence seen
        only once so far, or no right to end it (see docs/tuning.md).
        """
        if self.leader_timeout is None:
            return None
        await self._connect()
        assert self._conn is not None
        row = await self._conn.fetchrow(query("silent_leader"), self.world, self.leader_timeout)
        if row is None:
            self._suspect = None
            return None
        pid = int(row["pid"])
        # Act only on a silence seen twice, a heartbeat interval apart: a leader that has just
        # taken the lock has no heartbeat of its own for the few milliseconds before its first.
        now = time.monotonic()
        if self._suspect is None or self._suspect[0] != pid:
            self._suspect = (pid, now)
            return None
        if now - self._suspect[1] < self.heartbeat_interval:
            return None
        self._suspect = None
        log.warning(
            "leader %s of world %r (backend %s) has sent no heartbeat for %.1fs (leader_timeout %.1fs): "
            "ending its session",
            row["holder"] or "?",
            self.world,
            pid,
            row["silent_for"],
            self.leader_timeout,
            extra={"world": self.world, "holder": row["holder"], "pid": pid, "silent_for": row["silent_for"]},
        )
        try:
            ended = await self._conn.fetchval(query("end_silent_leader"), self.world, self.leader_timeout)
        except asyncpg.InsufficientPrivilegeError as exc:
            log.error(
                "cannot end the session of the silent leader of world %r (%s): run the mergers under "
                "one login, or members of the merger role of `dreamcatcher init --roles` (run as a "
                "superuser), or grant pg_signal_backend",
                self.world,
                exc,
                extra={"world": self.world},
            )
            return None
        return int(ended) if ended is not None else None
