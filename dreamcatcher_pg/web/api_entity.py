"""One entity: ``/api/entity`` (at frame N, with blame) and ``/api/history``.

Blame is computed from the log with the merge's rules (see :mod:`.blame`):
the frames that set the fields are found in ``entity_versions``, then the
items of those frames' deltas that the rules read as this entity, in apply
order, in one query (``web_entity_items``).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from . import params
from .api_frames import reader_of
from .blame import Item, Policy, blame, by_frame, policy_for
from .changes import field_changes
from .db import Reader
from .errors import JSONResponse

#: Versions per page of history, by default and at most.
HISTORY_PAGE = 20
HISTORY_MAX = 200


async def _items(reader: Reader, world: str, kind: str, key: str, frames: set[int]) -> dict[int, list[Item]]:
    if not frames or policy_for(kind) is Policy.DERIVED:
        return {}
    rows = await reader.fetch("web_entity_items", world, kind, key, sorted(frames))
    return by_frame([
        Item(r["into_frame"], r["frame"], r["stream_id"], r["utc"], r["key"], r["pos"],
             orjson.loads(r["data"]))
        for r in rows
    ])  # fmt: skip


def _entity_params(request: Request) -> tuple[str, str]:
    kind = params.text(request, "kind", required=True, max_length=200)
    key = params.text(request, "key", required=True)
    assert kind is not None and key is not None
    return kind, key


async def entity(request: Request) -> JSONResponse:
    """The entity right after frame N (default: the last merged), and for each field the frame,
    stream and utc of the delta that set its value."""
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    kind, key = _entity_params(request)
    frame = params.frame(request, required=False)
    if frame is None:
        frame = bounds.last_merged if bounds.last_merged is not None else 0
    bounds.require_merged(frame)
    policy = policy_for(kind)
    doc: dict[str, Any] = {
        "world": bounds.world, "kind": kind, "key": key, "frame": frame,
        "policy": policy.value, "exists": False, "version": None, "fields": [],
    }  # fmt: skip
    row = await reader.fetchrow("web_entity_at", bounds.world, kind, key, frame)
    if row is None:
        doc["versions"] = int(await reader.fetchval("web_entity_version_count", bounds.world, kind, key))
        return JSONResponse(doc)
    data = orjson.loads(row["data"])
    set_in: dict[str, int] = orjson.loads(row["set_in"])
    if not isinstance(data, dict):
        set_in = {}
    frames = set(set_in.values()) | ({row["valid_from"]} if not isinstance(data, dict) else set())
    items = await _items(reader, bounds.world, kind, key, frames)
    if isinstance(data, dict):
        fields = [{"field": name, "value": value, **blame(set_in[name], name, value, items, policy)}
                  for name, value in data.items()]  # fmt: skip
    else:
        fields = [{"field": None, "value": data, **blame(row["valid_from"], None, data, items, policy)}]
    doc.update(
        exists=True,
        versions=row["versions"],
        version={"valid_from": row["valid_from"], "valid_to": row["valid_to"],
                 "first_frame": row["first_frame"], "data": data},
        fields=fields,
    )  # fmt: skip
    return JSONResponse(doc)


async def history(request: Request) -> JSONResponse:
    """The entity's versions, newest first, ``limit`` at a time (``before``: the ``next`` of the
    previous page); each with the fields its frame changed and the delta that set each."""
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    kind, key = _entity_params(request)
    before = params.frame(request, "before", required=False)
    limit = params.limit(request, default=HISTORY_PAGE, high=HISTORY_MAX)
    policy = policy_for(kind)
    rows = await reader.fetch("web_entity_versions", bounds.world, kind, key, before, limit + 1)
    total = int(await reader.fetchval("web_entity_version_count", bounds.world, kind, key))
    page = rows[:limit]
    items = await _items(reader, bounds.world, kind, key, {r["valid_from"] for r in page})
    versions = []
    for i, r in enumerate(page):
        data = orjson.loads(r["data"])
        previous = orjson.loads(rows[i + 1]["data"]) if i + 1 < len(rows) else None
        if previous is not None:
            changes = field_changes(previous, data)
        elif isinstance(data, dict) and data:
            changes = [{"field": name, "after": value} for name, value in data.items()]
        else:
            changes = [{"field": None, "after": data}]
        for change in changes:
            if "after" in change:
                change.update(blame(r["valid_from"], change["field"], change["after"], items, policy))
        versions.append({
            "valid_from": r["valid_from"], "valid_to": r["valid_to"], "first_frame": r["first_frame"],
            "data": data, "created": previous is None, "changes": changes,
        })  # fmt: skip
    return JSONResponse({
        "world": bounds.world, "kind": kind, "key": key, "policy": policy.value, "total": total,
        "versions": versions, "next": page[-1]["valid_from"] if len(rows) > limit else None,
    })  # fmt: skip
