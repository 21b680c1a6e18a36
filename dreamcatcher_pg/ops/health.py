"""Health checks: ``dreamcatcher healthcheck``, the exit code of ``status``, ``/healthz`` and ``/readyz``.

Two kinds of checks, with one vocabulary:

* **The database's view** (:func:`check_health`): can we connect, is the schema
  there, does every world have a live leader, is its merge lag within a limit.
  One connection, a few cheap queries; ``dreamcatcher healthcheck`` exits with
  the :class:`HealthCode` of the worst problem found and prints one line.
* **One merger process's view** (:func:`liveness`, :func:`readiness`): served on
  the metrics port as ``/healthz`` (the process answers and every merger's loop
  has completed an iteration recently) and ``/readyz`` (every merger leads or
  stands by without errors, and the schema check of the metrics refresher
  passed). They read only in-memory state, so they never wait on the database.

Exit codes (docs/operations.md, "Health"): 0 healthy, 1 the database cannot be
reached or refuses us, 2 the schema is missing or not current, 3 a world has no
live leader, 4 a world's merge lag is over ``--max-lag``.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from ..db.connect import connect
from ..db.queries import query
from ..db.schema_version import schema_status
from ..errors import DRIVER_ERRORS, DreamcatcherError

#: The leader timeout assumed when a leader declared none (``--leader-timeout 0``: never
#: ended by a standby): a heartbeat older than this still means no live leader.
DEFAULT_STALE_HEARTBEAT = 30.0
#: Seconds allowed to connect (and to run each check) before the database counts as unreachable.
DEFAULT_TIMEOUT = 5.0

#: What the software needs of the schema dreamcatcher (checked by :func:`schema_ready`).
REQUIRED_RELATIONS = (
    "worlds",
    "delta_log",
    "frame_log",
    "deferred_log",
    "late_log",
    "quarantine_log",
    "mergers",
    "frames",
    "deltas",
)
REQUIRED_FUNCTIONS = (
    "append_delta",
    "append_deltas",
    "close_frame",
    "due_frames",
    "claim_next_frame",
    "merge_frame",
    "leader_lock_holder",
    "silent_leader",
    "stuck_writers",
)


class HealthCode(enum.IntEnum):
    """The exit codes of ``dreamcatcher healthcheck`` (and of ``status``); lower is worse-first.
    3 is what every ``dreamcatcher`` command exits with when PostgreSQL cannot be reached or
    refuses the login or database (1 and 2 keep their meaning: failed, usage)."""

    OK = 0
    DATABASE = 3  #: cannot connect, authenticate, or query
    SCHEMA = 4  #: the schema dreamcatcher is missing or not current
    NO_LEADER = 5  #: a world has no merger holding its leader lock with a recent heartbeat
    LAG = 6  #: a world's oldest closed frame has waited longer than the limit


async def schema_ready(conn: asyncpg.Connection) -> tuple[bool, str]:
    """Is the schema dreamcatcher current, with the objects this version uses? (ok, why).

    The schema version against the package's (:func:`~dreamcatcher_pg.schema_version.schema_status`,
    the check the client and the merger make at connect), then one catalog query for the
    objects themselves (a dropped view or function shows even at the right version).
    """
    status = await schema_status(conn)
    if not status.ok:
        return False, status.message
    row = await conn.fetchrow(query("schema_objects"), list(REQUIRED_RELATIONS), list(REQUIRED_FUNCTIONS))
    assert row is not None
    if not row["has_schema"]:
        return False, "the schema dreamcatcher does not exist: run `dreamcatcher init`"
    missing = [*row["missing_relations"], *(f"{f}()" for f in row["missing_functions"])]
    if missing:
        return False, (
            f"the schema dreamcatcher (version {status.database_version}) lacks {', '.join(missing)}: "
            "changed by hand? (docs/operations.md, Upgrading)"
        )
    return True, f"schema dreamcatcher is current (version {status.database_version})"


@dataclass(frozen=True, slots=True)
class WorldHealth:
    """One world as the health checks see it."""

    world: str
    leader_pid: int | None  #: the backend holding the leader lock now (None: nobody)
    holder: str | None  #: the last leader's name (host:pid[:name])
    heartbeat_age: float | None  #: seconds since the last heartbeat (None: never)
    leader_timeout: float | None  #: what the leader declared (None: never ended by a standby)
    lag_frames: int  #: frames closed and waiting for the merger
    lag_seconds: float  #: age of the oldest of them (0: none)
    heartbeat_pid: int | None = None  #: the backend that sent the last heartbeat

    @property
    def stale_after(self) -> float:
        """A heartbeat older than this means the leader is not alive."""
        return self.leader_timeout if self.leader_timeout else DEFAULT_STALE_HEARTBEAT

    def problem(self, max_lag: float | None) -> tuple[HealthCode, str] | None:
        """The first problem of this world (no live leader, then lag), or None."""
        if self.leader_pid is None:
            last = f" (last leader {self.holder}, {self.heartbeat_age:.0f}s ago)" if self.holder else ""
            return HealthCode.NO_LEADER, f"world {self.world!r} has no leader: no merger holds its lock{last}"
        if self.heartbeat_age is None or self.heartbeat_pid != self.leader_pid:
            return HealthCode.NO_LEADER, (
                f"world {self.world!r}: backend {self.leader_pid} holds the leader lock "
                "but has sent no heartbeat"
            )
        if self.heartbeat_age > self.stale_after:
            return HealthCode.NO_LEADER, (
                f"world {self.world!r}: leader {self.holder} has sent no heartbeat for "
                f"{self.heartbeat_age:.1f}s (its leader timeout: {self.stale_after:g}s)"
            )
        if max_lag is not None and self.lag_seconds > max_lag:
            return HealthCode.LAG, (
                f"world {self.world!r}: merge lag {self.lag_seconds:.1f}s over {max_lag:g}s "
                f"({self.lag_frames} closed frames waiting)"
            )
        return None


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The result of :func:`check_health`: the worst code, one line saying why, and the worlds."""

    code: HealthCode
    message: str
    worlds: tuple[WorldHealth, ...] = ()
    problems: tuple[tuple[HealthCode, str], ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return self.code is HealthCode.OK


def _report(problems: list[tuple[HealthCode, str]], worlds: Sequence[WorldHealth], ok: str) -> HealthReport:
    if not problems:
        return HealthReport(HealthCode.OK, ok, tuple(worlds))
    problems.sort(key=lambda p: p[0])
    code, first = problems[0]
    more = ""
    if len(problems) > 1:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return HealthReport(code, f"unhealthy: {first}{more}", tuple(worlds), tuple(problems))


async def check_health(
    dsn: str, world: str | None = None, *, max_lag: float | None = None, timeout: float = DEFAULT_TIMEOUT
) -> HealthReport:
    """Check the database, the schema, and each world's leader and lag (``world``: only that one).

    Never raises for a database problem: it is the report's :attr:`HealthCode.DATABASE`.
    """
    try:
        conn = await connect(
            dsn,
            application_name="dreamcatcher healthcheck",
            map_errors=False,
            timeout=timeout,
            command_timeout=timeout,
        )
    except (*DRIVER_ERRORS, TimeoutError) as exc:
        return HealthReport(HealthCode.DATABASE, f"unhealthy: cannot connect to the database: {_why(exc)}")
    try:
        ok, why = await schema_ready(conn)
        if not ok:
            return HealthReport(HealthCode.SCHEMA, f"unhealthy: {why}")
        rows = await conn.fetch(query("world_health"), world)
    except (*DRIVER_ERRORS, TimeoutError, DreamcatcherError) as exc:
        return HealthReport(HealthCode.DATABASE, f"unhealthy: cannot query the database: {_why(exc)}")
    finally:
        await _close(conn)
    worlds = [
        WorldHealth(
            world=r["world"],
            leader_pid=r["leader_pid"],
            holder=r["holder"],
            heartbeat_age=r["heartbeat_age"],
            leader_timeout=r["leader_timeout"],
            lag_frames=int(r["lag_frames"]),
            lag_seconds=float(r["lag_seconds"]),
            heartbeat_pid=r["heartbeat_pid"],
        )
        for r in rows
    ]
    if world is not None and not worlds:
        return HealthReport(HealthCode.NO_LEADER, f"unhealthy: world {world!r} does not exist")
    problems = [p for w in worlds if (p := w.problem(max_lag)) is not None]
    lag = f", merge lag within {max_lag:g}s" if max_lag is not None else ""
    if not worlds:
        ok_line = "healthy: database and schema ok, no worlds yet"
    else:
        names = ", ".join(w.world for w in worlds[:5]) + (" …" if len(worlds) > 5 else "")
        plural = "s" if len(worlds) > 1 else ""
        ok_line = f"healthy: {len(worlds)} world{plural} ({names}) with a live leader{lag}"
    return _report(problems, worlds, ok_line)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except (*DRIVER_ERRORS, TimeoutError):
        conn.terminate()


# -- one merger process: /healthz and /readyz --------------------------------------


class LoopLike(Protocol):
    """What the HTTP checks need of a :class:`~dreamcatcher_pg.merger.Merger`."""

    world: str

    def loop_state(self) -> dict[str, Any]: ...


class SchemaState:
    """The last schema check of the metrics refresher (written in the loop, read by the HTTP thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: tuple[bool, str, float] | None = None

    def set(self, ok: bool, why: str) -> None:
        with self._lock:
            self._value = (ok, why, time.time())

    def get(self) -> tuple[bool, str, float] | None:
        with self._lock:
            return self._value


def liveness(mergers: Sequence[LoopLike]) -> tuple[bool, dict[str, Any]]:
    """``/healthz``: every merger's loop completed an iteration within its ``stale_after``."""
    worlds = {m.world: m.loop_state() for m in mergers}
    stalled = [w for w, s in worlds.items() if not s["alive"]]

    def why(state: dict[str, Any]) -> str:
        if state["loop_age_seconds"] is None:
            return "its loop is not running"
        return (
            f"{state['loop_age_seconds']:.1f}s since its last iteration, "
            f"limit {state['stale_after_seconds']:g}s"
        )

    if stalled:
        reason = "merge loop stalled: " + ", ".join(f"world {w!r} ({why(worlds[w])})" for w in stalled)
    else:
        reason = "merge loops alive" if worlds else "no merger in this process"
    return not stalled, {"status": "ok" if not stalled else "stalled", "reason": reason, "worlds": worlds}


def readiness(mergers: Sequence[LoopLike], schema: SchemaState | None) -> tuple[bool, dict[str, Any]]:
    """``/readyz``: alive, each merger leads or is a standby without errors, and the schema is current."""
    alive, doc = liveness(mergers)
    problems = [] if alive else [doc["reason"]]
    for world, state in doc["worlds"].items():
        if state["role"] == "failing":
            problems.append(f"world {world!r}: {state['error']}")
        elif state["role"] in ("starting", "stopped"):
            problems.append(f"world {world!r}: merger {state['role']}")
    checked = schema.get() if schema is not None else None
    if checked is None:
        problems.append("schema not checked yet")
        schema_doc: dict[str, Any] = {"ok": False, "reason": "not checked yet"}
    else:
        ok, why, at = checked
        schema_doc = {"ok": ok, "reason": why, "checked_at": at}
        if not ok:
            problems.append(why)
    ready = not problems
    return ready, {
        "status": "ready" if ready else "not ready",
        "reason": "; ".join(problems) if problems else "leading or standing by; schema current",
        "worlds": doc["worlds"],
        "schema": schema_doc,
    }
