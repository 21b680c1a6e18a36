"""Quarantined items and late attempts: ``/api/quarantine`` and ``/api/late``.

Newest first, ``limit`` at a time; ``before`` is the ``next`` of the previous
page (an id); ``frame`` keeps one frame's rows. Each row carries the original
item (or payload) as it arrived.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from . import params
from .api_frames import reader_of
from .errors import JSONResponse


async def _page(request: Request, name: str, json_column: str) -> JSONResponse:
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    before = params.integer(request, "before", low=1)
    frame = params.frame(request, required=False)
    limit = params.limit(request)
    rows = await reader.fetch(name, bounds.world, before, frame, limit + 1)
    items: list[dict[str, Any]] = []
    for r in rows[:limit]:
        doc = dict(r)
        raw = doc[json_column]
        doc[json_column] = None if raw is None else orjson.loads(raw)
        items.append(doc)
    return JSONResponse(
        {
            "world": bounds.world,
            "frame": frame,
            "items": items,
            "next": items[-1]["id"] if len(rows) > limit else None,
        }
    )


async def quarantine(request: Request) -> JSONResponse:
    """Items a rule could not read: frame, stream, utc, delta key, position, reason, the item."""
    return await _page(request, "web_quarantine", "item")


async def late(request: Request) -> JSONResponse:
    """Attempts to write into a frame that had closed: frame, stream, utc, policy, the payload."""
    return await _page(request, "web_late_attempts", "payload")
