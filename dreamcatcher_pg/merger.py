"""The merger: one asyncio loop per world that turns closed frames into state.

Connections (never pooled, see docs/design.md §8): one *session* connection holds the
world's leader lock (``pg_try_advisory_lock``) and runs every merge, so a
merger that loses its connection loses the lock and its open transaction
together; one autocommit *listener* connection LISTENs for wake-ups. The loop
also polls, because notifications are lost while a connection is down.

Each tick: close the frames that are due (every expected stream in, or the
deadline passed), then merge closed frames in ascending order, each in ONE
transaction (``dreamcatcher.merge_frame``), until the lowest unmerged frame is
open. Progress (the frame's status, hash and stats) is written in the same
transaction as the projection.

A leader sends a heartbeat from its listener connection every poll interval (and at
least five times per ``leader_timeout``), merging or not. A process that hangs without dying (stopped,
frozen) keeps its session and so the lock; a standby that sees the lock holder
silent for longer than ``leader_timeout`` ends that session with
``pg_terminate_backend`` (which rolls back whatever it had begun) and takes the
lock. The hung process finds its session gone when it wakes, and stands by. The silence
that counts is the leader's own ``leader_timeout``, which it declares with its heartbeats:
a standby configured with a shorter one cannot end a healthy leader.

A writer that holds a frame's fence (an insert, or a close, in a transaction it leaves
open) holds up that frame's close. When a close or the claim of the next frame waits
longer than :attr:`Merger.close_wait`, the merger looks at who holds the world's fences
and ends the sessions idle for longer than the world's ``idle_writer_timeout``
(:meth:`Merger.end_stuck_writers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from .db.connect import READ_COMMITTED, connect
from .db.queries import query
from .db.schema_version import check_schema_version
from .errors import DRIVER_ERRORS, ConnectionLostError, SchemaVersionError, map_db_error
from .fences import Fences
from .leader import Leadership
from .models import MergeResult, MergerStats

log = logging.getLogger(__name__)

WORK_CHANNEL = "dreamcatcher_work"
#: Seconds a leader may stay silent (no heartbeat) before a standby ends its session.
DEFAULT_LEADER_TIMEOUT = 30.0


class Merger(Leadership, Fences):
    """Merges the frames of one world. ``await merger.run(stop_event)``."""

    def __init__(
        self,
        dsn: str,
        world: str = "default",
        *,
        poll_interval: float = 1.0,
        leader_timeout: float | None = DEFAULT_LEADER_TIMEOUT,
        name: str | None = None,
        on_merged: Callable[[MergeResult], None] | None = None,
    ) -> None:
        if leader_timeout is not None and leader_timeout <= 0:
            leader_timeout = None
        self.dsn = dsn
        self.world = world
        self.poll_interval = poll_interval
        #: seconds without a heartbeat after which a standby ends the leader's session (None: never)
        self.leader_timeout = leader_timeout
        self.holder = f"{socket.gethostname()}:{os.getpid()}" + (f":{name}" if name else "")
        self.on_merged = on_merged
        self.stats = MergerStats()
        self._conn: asyncpg.Connection | None = None
        self._listener: asyncpg.Connection | None = None
        self._wakeup = asyncio.Event()
        self._started_at = datetime.now(UTC)
        self._beats: asyncio.Task[None] | None = None
        #: a lock holder seen silent once: (its pid, when); ended when still silent later
        self._suspect: tuple[int, float] | None = None
        #: the sessions found holding this world's fences the last time a close or claim waited
        self.stuck: list[dict[str, Any]] = []
        self._stuck_checked = 0.0
        #: when run()'s loop started or last completed an iteration (time.monotonic(); None: not
        #: running), the iterations completed, and the error of the last one if it failed (None
        #: after one that worked): /healthz and /readyz read them (loop_state())
        self.loop_at: float | None = None
        self.loop_iterations = 0
        self.loop_error: str | None = None

    # -- connections --

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        payload = str(payload)
        world, _, _rest = payload.partition(":")
        # world names may hold ':'; a spurious wake-up is harmless, a missed one is not
        if world == self.world or payload.startswith(self.world + ":"):
            self._wakeup.set()

    async def _connect(self) -> None:
        # raw driver errors: the run loop handles a broken connection itself
        name = f"dreamcatcher merger {self.world}"
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(
                self.dsn, application_name=name, settings=READ_COMMITTED, map_errors=False
            )
            self.stats.is_leader = False
            await check_schema_version(self._conn)  # SchemaVersionError ends run(): see there
        if self._listener is None or self._listener.is_closed():
            self._listener = await connect(
                self.dsn, application_name=name, settings=READ_COMMITTED, map_errors=False
            )
            await self._listener.add_listener(WORK_CHANNEL, self._on_notify)

    async def _disconnect(self) -> None:
        for conn in (self._conn, self._listener):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2.0)
        self._conn = self._listener = None
        self.stats.is_leader = False

    # -- work --

    async def merge_available(self) -> list[MergeResult]:
        """Merge every closed frame that is next in line. The caller must lead.

        ``on_merged`` is called at most once per frame, after its commit: a
        merger that loses its connection between the commit and the callback
        does not call it (the frame is merged; its NOTIFY went out).
        """
        assert self._conn is not None and self.stats.is_leader
        results = []
        while True:
            try:
                frame = await self._conn.fetchval(
                    query("claim_next_frame"), self.world, int(self.close_wait * 1000)
                )
            except asyncpg.LockNotAvailableError:
                # a session holds the world lock (by hand: the append functions hold it only while
                # they commit a new frame): end it if it is idle past the limit, else try later
                log.warning(
                    "world %r: the claim of the next frame waited %.1fs for the world lock; trying later",
                    self.world,
                    self.close_wait,
                    extra={"world": self.world},
                )
                await self.end_stuck_writers(waited=True)
                break
            if frame is None:
                break
            started = time.perf_counter()
            async with self._conn.transaction():
                raw = await self._conn.fetchval(query("merge_frame"), self.world, frame)
            seconds = time.perf_counter() - started
            if raw is None:  # merged already (by an earlier run of ours that lost its ack)
                continue
            stats = orjson.loads(raw)
            state_hash = stats.pop("state_hash")
            close_to_merged = float(stats.pop("close_to_merged") or 0.0)
            result = MergeResult(
                self.world, int(frame), int(stats["deltas"]), state_hash, seconds, close_to_merged, stats
            )
            self.stats.frames_merged += 1
            self.stats.deltas_merged += result.deltas
            self.stats.quarantined += int(stats["quarantined"])
            self.stats.last_frame = result.frame
            log.info(
                "merged world=%s frame=%s deltas=%s changes=%s quarantined=%s duration_ms=%.1f hash=%s",
                self.world,
                frame,
                result.deltas,
                stats["changes"],
                stats["quarantined"],
                seconds * 1000,
                result.state_hash,
                extra={
                    "world": self.world,
                    "frame": result.frame,
                    "deltas": result.deltas,
                    "changes": stats["changes"],
                    "quarantined": stats["quarantined"],
                    "duration_ms": round(seconds * 1000, 3),
                    "hash": result.state_hash,
                },
            )
            if self.on_merged is not None:
                self.on_merged(result)
            results.append(result)
        return results

    async def tick(self) -> list[MergeResult]:
        """One round of work: end idle fence holders (now and then), close what is due, merge."""
        if time.monotonic() - self._stuck_checked >= self.stuck_check_interval:
            await self.end_stuck_writers()
        await self.close_due_frames()
        results = await self.merge_available()
        await self._heartbeat()
        return results

    async def _next_wait(self) -> float:
        assert self._conn is not None
        until_deadline = await self._conn.fetchval(query("next_deadline"), self.world)
        wait = self.poll_interval
        if until_deadline is not None:
            wait = min(wait, max(0.0, float(until_deadline)) + 0.005)
        return wait

    async def run_until_idle(self) -> list[MergeResult]:
        """Lead (if free), merge everything ready, and return. For tools and tests."""
        try:
            if not await self.try_lead():
                return []
            return await self.tick()
        except DRIVER_ERRORS as exc:
            raise map_db_error(exc) from exc

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set: stand by until leader, then merge as frames close.

        Survives lost connections (reconnects with backoff) and errors in a
        merge (logged, retried after a pause): it never exits on its own. Even an
        error it does not expect is logged with its traceback and retried like a
        failed merge: a merger that exits leaves its world unmerged.
        """
        stop = stop or asyncio.Event()
        backoff = 0.1
        self.loop_error, self.loop_iterations = None, 0
        self.loop_at = time.monotonic()
        log.info(
            "merger %s for world %r started; standing by until it holds the leader lock",
            self.holder,
            self.world,
            extra={"world": self.world, "holder": self.holder},
        )
        while not stop.is_set():
            try:
                if not await self.try_lead():
                    await self._stop_beats()
                    if await self.end_silent_leader() is not None:
                        continue  # its lock is free: take it now
                    self._loop_done(None)
                    await self._sleep(stop, self.poll_interval)  # standby
                    continue
                self._start_beats()
                self._wakeup.clear()
                await self.tick()
                backoff = 0.1
                wait = await self._next_wait()
                self._loop_done(None)
                await self._sleep(stop, wait)
            except asyncio.CancelledError:
                raise
            except SchemaVersionError:  # the database is not the one this merger can merge
                self.loop_at = None  # ended: /healthz and /readyz say so
                await self.aclose()
                raise
            except Exception as exc:
                if self._connection_lost(exc):
                    self.stats.reconnects += 1
                    log.warning(
                        "merger of world %r lost its connection (%s); reconnecting in %.1fs",
                        self.world,
                        exc,
                        backoff,
                        extra={"world": self.world},
                    )
                elif isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                    self.stats.errors += 1
                    err = map_db_error(exc)
                    log.error(
                        "merge of world %r failed: %s; retrying in %.1fs",
                        self.world,
                        err,
                        backoff,
                        extra={"world": self.world},
                    )
                else:  # not the database's: log the traceback, and carry on all the same
                    self.stats.errors += 1
                    log.exception(
                        "merger of world %r failed; retrying in %.1fs",
                        self.world,
                        backoff,
                        extra={"world": self.world},
                    )
                self._loop_done(f"{type(exc).__name__}: {exc}")
                await self._stop_beats()
                await self._disconnect()
                await self._sleep(stop, backoff)
                backoff = min(backoff * 2, 5.0)
        await self.aclose()
        self.loop_at = None  # stopped: /healthz says so

    def _loop_done(self, error: str | None) -> None:
        # loop_at last: a reader (another thread) that sees the new time sees the rest too
        self.loop_error = error
        self.loop_iterations += 1
        self.loop_at = time.monotonic()

    @property
    def stale_after(self) -> float:
        """Seconds without a completed loop iteration after which /healthz calls this merger stalled:
        its leader timeout (30 s when it has none), and at least three poll intervals."""
        timeout = self.leader_timeout if self.leader_timeout is not None else DEFAULT_LEADER_TIMEOUT
        return max(timeout, 3 * self.poll_interval)

    def loop_state(self) -> dict[str, Any]:
        """For /healthz and /readyz (from any thread): role (starting: no iteration completed yet,
        leader, standby, failing: the last iteration failed, stopped), seconds since the loop last
        completed an iteration (or started), whether that is within :attr:`stale_after`."""
        at = self.loop_at
        error, iterations = self.loop_error, self.loop_iterations
        age = None if at is None else max(0.0, time.monotonic() - at)
        if at is None:
            role = "stopped"
        elif iterations == 0:
            role = "starting"
        elif error is not None:
            role = "failing"
        else:
            role = "leader" if self.stats.is_leader else "standby"
        return {
            "holder": self.holder,
            "role": role,
            "alive": age is not None and age <= self.stale_after,
            "loop_age_seconds": age,
            "stale_after_seconds": self.stale_after,
            "error": error,
        }

    def _connection_lost(self, exc: BaseException) -> bool:
        """Did ``exc`` come from a connection that broke (rather than from a failed merge)?"""
        if isinstance(map_db_error(exc), ConnectionLostError):
            return True
        conns = (self._conn, self._listener)
        return any(conn is None or conn.is_closed() for conn in conns)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wakeup.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            self._wakeup.clear()

    async def aclose(self) -> None:
        """Release the leader lock (by closing the session) and the listener."""
        await self._stop_beats()
        await self._disconnect()

    def get_stats(self) -> dict[str, Any]:
        """Counters as a plain dict (for logs, status and metrics)."""
        s = self.stats
        return {
            "world": self.world,
            "holder": self.holder,
            "is_leader": s.is_leader,
            "frames_merged": s.frames_merged,
            "deltas_merged": s.deltas_merged,
            "frames_closed": s.frames_closed,
            "quarantined": s.quarantined,
            "reconnects": s.reconnects,
            "errors": s.errors,
            "writers_ended": s.writers_ended,
            "last_frame": s.last_frame,
        }
