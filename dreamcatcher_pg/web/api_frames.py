"""Worlds, frames and the timeline: ``/api/worlds``, ``/api/world``, ``/api/timeline``, ``/api/frame``."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from starlette.requests import Request

from . import params
from .db import Reader
from .errors import JSONResponse, bad_request

#: The most worlds the overview lists.
MAX_WORLDS = 1000
#: The most points a timeline returns (more frames than that are grouped in buckets).
DEFAULT_POINTS = 300
MAX_POINTS = 2000


def reader_of(request: Request) -> Reader:
    reader: Reader = request.app.state.reader
    return reader


def _summary(row: asyncpg.Record) -> dict[str, Any]:
    leader = None
    if row["leader"] is not None:
        leader = {
            "holder": row["leader"],
            "holds_lock": bool(row["leader_holds_lock"]),
            "heartbeat_at": row["leader_heartbeat"],
            "heartbeat_age_seconds": round(row["leader_heartbeat_age"], 3),
        }
    return {
        "world": row["world"],
        "frames": {
            "open": row["frames_open"],
            "closed": row["frames_closed"],
            "merged": row["frames_merged"],
        },
        "first_frame": row["first_frame"],
        "last_frame": row["last_frame"],
        "last_merged": row["last_merged"],
        "last_merged_at": row["last_merged_at"],
        "merge_lag": {"frames": row["frames_closed"], "seconds": round(row["merge_lag_seconds"], 3)},
        "leader": leader,
        "quarantined": row["quarantined"],
        "late_attempts": row["late_attempts"],
    }


async def worlds(request: Request) -> JSONResponse:
    """Every world with frames, and what ``status`` would say of it."""
    reader = reader_of(request)
    names = [r["world"] for r in await reader.fetch("web_world_names", MAX_WORLDS)]
    rows = await reader.fetch("web_world_summaries", names) if names else []
    return JSONResponse({"worlds": [_summary(r) for r in rows], "default_world": request.app.state.world})


async def world(request: Request) -> JSONResponse:
    """One world's summary and the kinds of entities it has."""
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    rows = await reader.fetch("web_world_summaries", [bounds.world])
    doc = _summary(rows[0])
    doc["kinds"] = [r["kind"] for r in await reader.fetch("web_kinds", bounds.world)]
    return JSONResponse(doc)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def timeline(request: Request) -> JSONResponse:
    """Deltas per frame, close→merged latency and merge duration, for frames ``from..to``.

    At most ``points`` rows: with more frames than that, each row is a bucket of
    consecutive frames (``frame_from..frame_to``; deltas summed, latencies max and mean).
    """
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    first = bounds.first_frame if bounds.first_frame is not None else 0
    last = bounds.last_frame if bounds.last_frame is not None else 0
    low = params.integer(request, "from", default=first)
    high = params.integer(request, "to", default=last)
    points = params.integer(request, "points", low=1, high=MAX_POINTS, default=DEFAULT_POINTS)
    assert low is not None and high is not None and points is not None
    if low > high:
        raise bad_request(f"'from' ({low}) is after 'to' ({high})")
    rows = await reader.fetch("web_timeline", bounds.world, low, high, points)
    return JSONResponse(
        {
            "world": bounds.world,
            "from": low,
            "to": high,
            "first_frame": bounds.first_frame,
            "last_frame": bounds.last_frame,
            "last_merged": bounds.last_merged,
            "bucketed": any(r["frames"] > 1 for r in rows),
            "points": [
                {
                    "frame_from": r["frame_from"],
                    "frame_to": r["frame_to"],
                    "frames": r["frames"],
                    "deltas": r["deltas"],
                    "status": {"open": r["open"], "closed": r["closed"], "merged": r["merged"]},
                    "close_to_merged_ms": {"max": _ms(r["close_ms_max"]), "mean": _ms(r["close_ms_avg"])},
                    "merge_ms": {"max": _ms(r["merge_ms_max"]), "mean": _ms(r["merge_ms_avg"])},
                }
                for r in rows
            ],
        }
    )


async def frame(request: Request) -> JSONResponse:
    """One frame: status, deltas, hash, times, stats, and the merged frames before and after it."""
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    number = params.frame(request)
    assert number is not None
    row = await reader.fetchrow("web_frame", bounds.world, number)
    assert row is not None
    doc: dict[str, Any] = {
        "world": bounds.world,
        "frame": number,
        "exists": row["frame"] is not None,
        "prev_merged": row["prev_merged"],
        "next_merged": row["next_merged"],
        "first_frame": bounds.first_frame,
        "last_frame": bounds.last_frame,
        "last_merged": bounds.last_merged,
    }
    if row["frame"] is not None:
        merged_at, closed_at, started = row["merged_at"], row["closed_at"], row["merge_started_at"]
        doc.update(
            status=row["status"],
            delta_count=row["delta_count"],
            state_hash=row["state_hash"],
            opened_at=row["opened_at"],
            closed_at=closed_at,
            close_reason=row["close_reason"],
            merge_started_at=started,
            merged_at=merged_at,
            close_to_merged_ms=_ms((merged_at - closed_at).total_seconds() * 1000)
            if merged_at and closed_at
            else None,
            merge_ms=_ms((merged_at - started).total_seconds() * 1000) if merged_at and started else None,
            stats=orjson.loads(row["stats"]) if row["stats"] else None,
        )
    return JSONResponse(doc)
