"""What changed between the state after frame A and after frame B: ``/api/diff``.

Per kind: the entities added, changed (field: old → new) and removed, a page
at a time in key order. The per-kind counts are given when the frames between
A and B began at most :data:`SUMMARY_VERSIONS` versions (counting them reads
every one of those entities); a wider diff still pages, without counts.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from . import params
from .api_frames import reader_of
from .changes import field_changes
from .errors import JSONResponse, not_found

#: Above this many versions begun between A and B, the per-kind counts are not computed.
SUMMARY_VERSIONS = 5_000


def _entry(key: str, before_text: str | None, after_text: str | None) -> dict[str, Any] | None:
    before = None if before_text is None else orjson.loads(before_text)
    after = None if after_text is None else orjson.loads(after_text)
    if before_text is None and after_text is None:
        return None
    if before_text is None:
        return {"key": key, "change": "added", "after": after}
    if after_text is None:
        return {"key": key, "change": "removed", "before": before}
    fields = field_changes(before, after)
    if not fields:
        return None  # changed and changed back between A and B
    return {"key": key, "change": "changed", "fields": fields, "before": before, "after": after}


async def diff(request: Request) -> JSONResponse:
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    a = params.frame(request, "a")
    b = params.frame(request, "b")
    assert a is not None and b is not None
    bounds.require_merged(a, "a")
    bounds.require_merged(b, "b")
    kinds = [r["kind"] for r in await reader.fetch("web_kinds", bounds.world)]
    kind = params.text(request, "kind", max_length=200) or (kinds[0] if kinds else None)
    if kind is not None and kind not in kinds:
        raise not_found("unknown_kind", f"world {bounds.world!r} has no entities of kind {kind!r}")
    after = params.text(request, "after")
    limit = params.limit(request)

    low, high = min(a, b), max(a, b)
    versions = int(await reader.fetchval("web_diff_versions", bounds.world, low, high, SUMMARY_VERSIONS + 1))
    summary = None
    if versions <= SUMMARY_VERSIONS:
        summary = {k: {"added": 0, "changed": 0, "removed": 0} for k in kinds}
        for r in await reader.fetch("web_diff_summary", bounds.world, a, b):
            summary[r["kind"]] = {"added": r["added"], "changed": r["changed"], "removed": r["removed"]}
    items: list[dict[str, Any]] = []
    next_key = None
    if kind is not None:
        rows = await reader.fetch("web_diff_page", bounds.world, kind, a, b, after, limit + 1)
        for r in rows[:limit]:
            entry = _entry(r["ekey"], r["before"], r["after"])
            if entry is not None:
                items.append(entry)
        if len(rows) > limit:
            next_key = rows[limit - 1]["ekey"]
    return JSONResponse(
        {
            "world": bounds.world,
            "a": a,
            "b": b,
            "kind": kind,
            "kinds": kinds,
            "versions_between": {
                "count": min(versions, SUMMARY_VERSIONS),
                "at_least": versions > SUMMARY_VERSIONS,
            },
            "summary": summary,
            "items": items,
            "next": next_key,
        }
    )
