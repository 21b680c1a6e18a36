"""What ``dreamcatcher status`` shows: the facts of each world.

:func:`collect_status` returns one :class:`~dreamcatcher_pg.models.WorldStatus` per
world (its ``to_dict()`` is the ``--json`` output, keys documented in
docs/operations.md). Rendering them (a rich table, JSON,
``--watch``) is the command's job: :mod:`dreamcatcher_pg.cli.status`.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import orjson

from ..db.connect import connect
from ..db.queries import query
from ..models import WorldStatus

log = logging.getLogger(__name__)

#: How many of the latest frames ``collect_status`` lists under ``recent_frames``.
RECENT_FRAMES = 10
#: A leader whose heartbeat is older than this (seconds) is shown as stale. The
#: merger beats at least once per poll interval (1 s by default) and after every merge.
STALE_HEARTBEAT = 30.0


async def collect_status(
    dsn: str, world: str | None = None, *, recent_frames: int = RECENT_FRAMES
) -> list[WorldStatus]:
    """The facts of every world (or of ``world``), one :class:`WorldStatus` each, sorted by world.

    Keys: ``world``, ``late_policy``, ``expected_streams``, ``close_after`` (s),
    ``frames_open`` / ``frames_closed`` / ``frames_merged``, ``last_merged``
    (frame number), ``last_merged_frame`` (its ``frame``, ``delta_count``,
    ``state_hash``, ``merged_at``, ``close_to_merged_seconds``), ``merge_lag_frames``
    (closed, waiting for the merger), ``merge_lag_seconds`` (age of the oldest of
    those), ``open_frame`` (the lowest open frame), ``open_frame_deltas``,
    ``streams_in_open_frame``, ``missing_streams`` (expected but not in yet),
    ``recent_frames`` (frame, status, delta_count, close_reason; newest first),
    ``late_attempts``, ``late_deferred``, ``quarantined``, ``unmerged_keys``
    (delta key -> deltas carrying it, for keys no rule reads), ``leader`` (the
    holder name of the last merger that led), ``leader_heartbeat``, ``heartbeat_age``
    (s), ``leader_alive`` (its session still holds the leader lock), ``fence_holders``
    (sessions holding one of the world's fences: ``pid``, ``session`` (its
    application_name; a DeltaClient names its world and stream), ``stream``, ``user``,
    ``state``, ``idle_seconds``, ``transaction_seconds``, ``holds``, ``over_limit``: idle
    past the world's ``idle_writer_timeout``, so the merger ends it when it next waits).
    """
    conn = await connect(dsn, application_name="dreamcatcher status")
    try:
        worlds: list[WorldStatus] = []
        for row in await conn.fetch(query("world_status"), world):
            counts = dict(await world_counts(conn, row["world"]))
            lag_seconds = counts.pop("merge_lag_seconds")
            settings = ("world", "late_policy", "expected_streams", "close_after", "horizon")
            doc = {k: row[k] for k in settings} | counts | {k: v for k, v in row.items() if k not in settings}
            doc["unmerged_keys"] = orjson.loads(doc["unmerged_keys"])
            doc["merge_lag_frames"] = doc["frames_closed"]
            doc["streams_in_open_frame"] = []
            doc["open_frame_deltas"] = 0
            if doc["open_frame"] is not None:
                streams = await conn.fetchrow(query("open_frame_streams"), doc["world"], doc["open_frame"])
                assert streams is not None
                doc["streams_in_open_frame"] = list(streams["streams"] or [])
                doc["open_frame_deltas"] = streams["deltas"]
            expected = list(doc["expected_streams"] or [])
            doc["expected_streams"] = expected
            seen = set(doc["streams_in_open_frame"])
            in_open = doc["open_frame"] is not None
            doc["missing_streams"] = [s for s in expected if s not in seen] if in_open else []
            details = await conn.fetchrow(query("status_world_details"), doc["world"], recent_frames)
            assert details is not None
            last = details["last_merged_frame"]
            doc["last_merged_frame"] = orjson.loads(last) if last is not None else None
            doc["merge_lag_seconds"] = lag_seconds
            doc["recent_frames"] = orjson.loads(details["recent_frames"])
            holder_pid = details["leader_lock_pid"]
            doc["leader_lock_pid"] = holder_pid
            doc["leader_alive"] = holder_pid is not None
            holders = await conn.fetch(query("stuck_writers"), doc["world"])
            doc["fence_holders"] = [fence_holder(r) for r in holders]
            worlds.append(WorldStatus(**doc))
        return worlds
    finally:
        await conn.close()


async def world_counts(conn: asyncpg.Connection, world: str) -> asyncpg.Record:
    """What ``status`` and the metrics both count for ``world`` (the ``world_counts`` query):
    ``last_merged``, ``frames_open`` / ``frames_closed`` / ``frames_merged``, ``open_frame``,
    ``late_attempts``, ``late_deferred``, ``quarantined``, ``merge_lag_seconds``."""
    row = await conn.fetchrow(query("world_counts"), world)
    assert row is not None
    return row


def fence_holder(row: asyncpg.Record) -> dict[str, Any]:
    """A row of ``dreamcatcher.stuck_writers`` as ``status`` shows it."""
    session = row["application_name"] or ""
    _, _, stream = session.removeprefix("dreamcatcher ").partition("/")
    return {
        "pid": row["pid"],
        "session": session,
        "stream": stream if session.startswith("dreamcatcher ") and stream else None,
        "user": row["usename"],
        "state": row["state"],
        "idle_seconds": row["idle_for"],
        "transaction_seconds": row["xact_age"],
        "holds": list(row["holds"]),
        "over_limit": bool(row["over_limit"]),
    }
