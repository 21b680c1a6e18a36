"""Frames held open by their writers: closing the due frames, and ending idle fence holders.

A writer that holds a frame's fence (an insert, or a close, in a transaction it leaves
open) holds up that frame's close. A close waits at most :attr:`Fences.close_wait` for the
inserts in flight, then is tried again at the next tick; when a close or the claim of the
next frame waited, the merger looks at who holds the world's fences and ends the sessions
idle for longer than the world's ``idle_writer_timeout`` (:meth:`Fences.end_stuck_writers`).

:class:`Fences` is the part of :class:`~dreamcatcher_pg.merger.Merger` that does this.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from .db.queries import query
from .models import MergerStats

log = logging.getLogger("dreamcatcher_pg.merger")  # (its log lines have always been the merger's)


class Fences:
    """Closing due frames and ending idle fence holders, on the merger's session connection."""

    world: str
    poll_interval: float
    stats: MergerStats
    stuck: list[dict[str, Any]]
    _conn: asyncpg.Connection | None
    _stuck_checked: float

    @property
    def close_wait(self) -> float:
        """Seconds a close waits for the frame's in-flight inserts before it tries again later."""
        return max(0.05, min(self.poll_interval, 1.0))

    async def close_due_frames(self) -> list[int]:
        """Close the open frames whose streams are all in or whose deadline passed.

        A close waits for the inserts in flight in its frame (the fence); one that waits
        longer than :attr:`close_wait` — a worker holding its insert's transaction open — is
        given up and tried again at the next tick, so the merger (and the frame's other
        writers, queued behind a waiting close) are never held up by one idle transaction.
        """
        assert self._conn is not None
        closed = []
        for row in await self._conn.fetch(query("due_frames"), self.world):
            try:
                async with self._conn.transaction():
                    await self._conn.execute(f"SET LOCAL lock_timeout = {int(self.close_wait * 1000)}")
                    status = await self._conn.fetchval(
                        query("close_frame"), self.world, row["frame"], row["reason"]
                    )
            except asyncpg.LockNotAvailableError:
                holders = await self._conn.fetchval(query("frame_fence_holders"), self.world, row["frame"])
                log.warning(
                    "world %r frame %s is due (%s) but inserts still hold it open after %.1fs "
                    "(backends %s; a worker idle in its transaction?): trying again later",
                    self.world,
                    row["frame"],
                    row["reason"],
                    self.close_wait,
                    holders or "?",
                    extra={"world": self.world, "frame": row["frame"], "reason": row["reason"]},
                )
                await self.end_stuck_writers(waited=True)
                continue
            if status == "closed":
                log.info(
                    "world %r frame %s closed (%s)",
                    self.world,
                    row["frame"],
                    row["reason"],
                    extra={"world": self.world, "frame": row["frame"], "reason": row["reason"]},
                )
                closed.append(int(row["frame"]))
        self.stats.frames_closed += len(closed)
        return closed

    async def end_stuck_writers(self, *, waited: bool = False) -> list[int]:
        """End the sessions idle for longer than the world's ``idle_writer_timeout`` while they hold
        one of its fences, and log each; returns the pids ended. ``waited``: a close or a claim
        of ours just waited for a fence, so also log who holds the world's fences now.

        Their open transactions roll back: what they appended was never acknowledged. Needs the
        right to end their sessions: the same login, ``pg_signal_backend``, or the merger role of
        ``dreamcatcher init --roles``. Called after a wait, and at every tick (at most once per
        :attr:`stuck_check_interval`): a frame held by an idle writer is closed by a deadline
        or by a worker, not always by this merger.
        """
        assert self._conn is not None
        self._stuck_checked = time.monotonic()
        if waited:
            self.stuck = [dict(r) for r in await self._conn.fetch(query("stuck_writers"), self.world)]
            for w in self.stuck:
                self._log_session("world %r: session %s (%s, %s) holds %s and has been %s for %.1fs", w)
        try:
            ended = [dict(r) for r in await self._conn.fetch(query("end_stuck_writers"), self.world)]
        except asyncpg.InsufficientPrivilegeError as exc:
            log.error(
                "world %r: cannot end the idle sessions that hold its fences (%s): run the merger as "
                "the workers' login, or as a member of the merger role of `dreamcatcher init --roles`, "
                "or grant it pg_signal_backend",
                self.world,
                exc,
                extra={"world": self.world},
            )
            return []
        for w in ended:
            self._log_session(
                "world %r: ended session %s (%s, %s): it held %s while %s for %.1fs, past the world's "
                "idle_writer_timeout; its open transaction rolled back",
                w,
            )
        self.stats.writers_ended += len(ended)
        return [int(w["pid"]) for w in ended]

    @property
    def stuck_check_interval(self) -> float:
        """Seconds between two looks for idle fence holders when nothing waited."""
        return max(self.poll_interval, 1.0)

    def _log_session(self, message: str, w: dict[str, Any]) -> None:
        """A warning about one fence holder: world, pid, name, user, what it holds, state, idle time."""
        log.warning(
            message,
            self.world,
            w["pid"],
            w["application_name"] or "no name",
            w["usename"],
            ", ".join(w["holds"]),
            w["state"],
            w["idle_for"] or 0.0,
            extra={"world": self.world, "pid": w["pid"], "session": w["application_name"]},
        )
