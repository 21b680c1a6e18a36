"""The state right after frame N: ``/api/state``.

One kind at a time, paged by key (``after`` = the last key of the previous
page), searchable by key and by field value. Kinds are whatever the world's
``entity_versions`` hold (a loose index scan), so nothing here knows the rules.

A search looks at no more than :data:`SEARCH_SCAN` entities per request, in
key order: a page that could not be filled says how far it looked
(``search.scanned_to``) and gives that key as ``next``, so the next request
goes on from there. Every request then costs about the same, however rare the
match.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from . import params
from .api_frames import reader_of
from .errors import JSONResponse, not_found

#: Entities a search request looks at, at most.
SEARCH_SCAN = 10_000
#: The count of a kind's entities stops here ("at least").
COUNT_CAP = 10_000


async def state(request: Request) -> JSONResponse:
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    frame = params.frame(request, required=False)
    if frame is None:
        frame = bounds.last_merged if bounds.last_merged is not None else 0
    bounds.require_merged(frame)
    kinds = [r["kind"] for r in await reader.fetch("web_kinds", bounds.world)]
    kind = params.text(request, "kind", max_length=200) or (kinds[0] if kinds else None)
    after = params.text(request, "after")
    limit = params.limit(request)
    key_q = params.text(request, "key", max_length=1000)
    field = params.text(request, "field", max_length=1000)
    value_q = params.text(request, "value", max_length=1000)
    doc: dict[str, Any] = {
        "world": bounds.world,
        "frame": frame,
        "kind": kind,
        "kinds": kinds,
        "last_merged": bounds.last_merged,
        "items": [],
        "next": None,
        "search": None,
    }
    if kind is None:
        return JSONResponse(doc)
    if kind not in kinds:
        raise not_found("unknown_kind", f"world {bounds.world!r} has no entities of kind {kind!r}")

    if key_q is None and value_q is None:
        rows = await reader.fetch("web_state_page", bounds.world, kind, frame, after, limit + 1)
        items = [_item(r) for r in rows[:limit]]
        doc["next"] = items[-1]["key"] if len(rows) > limit else None
    else:
        rows = await reader.fetch(
            "web_state_search",
            bounds.world,
            kind,
            frame,
            after,
            limit + 1,
            SEARCH_SCAN,
            key_q.lower() if key_q else None,
            field,
            value_q.lower() if value_q else None,
        )
        hits = [r for r in rows if r["row"] == "hit"]
        scan = next(r for r in rows if r["row"] == "scan")
        scanned, scanned_to = int(scan["first_frame"]), scan["ekey"]
        items = [_item(r) for r in hits[:limit]]
        if len(hits) > limit:
            doc["next"] = items[-1]["key"]
        elif scanned >= SEARCH_SCAN:
            doc["next"] = scanned_to  # not done: go on from where this request stopped looking
        doc["search"] = {
            "key": key_q,
            "field": field,
            "value": value_q,
            "scanned": scanned,
            "scanned_to": scanned_to,
            "exhausted": doc["next"] is None,
        }
    doc["items"] = items
    if after is None and key_q is None and value_q is None:
        count = int(await reader.fetchval("web_state_count", bounds.world, kind, frame, COUNT_CAP))
        doc["total"] = {"count": count, "at_least": count >= COUNT_CAP}
    return JSONResponse(doc)


def _item(row: Any) -> dict[str, Any]:
    return {
        "key": row["ekey"],
        "data": orjson.loads(row["data"]),
        "first_frame": row["first_frame"],
        "last_frame": row["last_frame"],
    }
