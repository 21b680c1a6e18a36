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

from ..rules.model import RuleSet
from . import params
from .api_frames import reader_of
from .blame import Item, KindRule, Policy, blame, by_frame, key_parts, rule_for, rule_set
from .changes import field_changes
from .db import Reader
from .errors import JSONResponse

#: Versions per page of history, by default and at most.
HISTORY_PAGE = 20
HISTORY_MAX = 200


#: (frame that set it, field or None for the whole value, value) of each field to blame
Wanted = list[tuple[int, str | None, Any]]


async def _rules_at(reader: Reader, world: str, frame: int) -> RuleSet | None:
    """The rule set in effect at ``frame`` of ``world`` (None: no rules in this database)."""
    row = await reader.fetchrow("web_rules_at", world, frame)
    return None if row is None else rule_set(row["id"], row["source"])


async def _rules_of_frames(reader: Reader, world: str, frames: set[int]) -> dict[int, RuleSet]:
    """The rule set that merged each of the frames."""
    rows = await reader.fetch("web_frame_rules", world, sorted(frames))
    return {int(r["frame"]): rule_set(r["id"], r["source"]) for r in rows}


async def _items(
    reader: Reader, world: str, kind: str, key: str, frames: set[int], rule: KindRule, parts: list[str]
) -> dict[int, list[Item]]:
    """The items of those frames' merges that the rules read as the entity, by frame."""
    rows = await reader.fetch("web_entity_items", world, kind, key, sorted(frames), list(rule.keys), parts)
    return by_frame(
        [
            Item(
                r["into_frame"],
                r["frame"],
                r["stream_id"],
                r["utc"],
                r["key"],
                r["pos"],
                orjson.loads(r["data"]),
            )
            for r in rows
        ]
    )


async def _items_of(
    reader: Reader, world: str, kind: str, key: str, frames: set[int], rule: KindRule, wanted: Wanted
) -> dict[int, list[Item]]:
    """The items of those frames (merged by one rule set) that may have set the wanted fields."""
    parts = key_parts(rule, key)
    items = await _items(reader, world, kind, key, frames, rule, parts)
    missed = {f for f, field, value in wanted if f in frames and _found(items, f, field, value, rule) is None}
    if parts and missed:
        # a version always has the items that set its fields: should the cheap filter ever miss one
        # (a reader that derives a key part the item's text does not hold as such), read in full
        items.update(await _items(reader, world, kind, key, missed, rule, []))
    return items


def _found(items: dict[int, list[Item]], frame: int, field: str | None, value: Any, rule: KindRule) -> Any:
    return blame(frame, field, value, items, rule.policy)["delta"]


async def _blame_all(reader: Reader, world: str, kind: str, key: str, wanted: Wanted) -> list[dict[str, Any]]:
    """The blame of each wanted field, in order, each by the rules that merged its frame."""
    if not wanted:
        return []
    frame_rules = await _rules_of_frames(reader, world, {frame for frame, _, _ in wanted})
    rule_of = {frame: rule_for(frame_rules.get(frame), kind) for frame, _, _ in wanted}
    by_rules: dict[KindRule, set[int]] = {}
    for frame, rule in rule_of.items():
        if rule.policy is not Policy.DERIVED:
            by_rules.setdefault(rule, set()).add(frame)
    items: dict[int, list[Item]] = {}
    for rule, frames in by_rules.items():
        items.update(await _items_of(reader, world, kind, key, frames, rule, wanted))
    return [blame(frame, field, value, items, rule_of[frame].policy) for frame, field, value in wanted]


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
    policy = rule_for(await _rules_at(reader, bounds.world, frame), kind).policy
    doc: dict[str, Any] = {
        "world": bounds.world,
        "kind": kind,
        "key": key,
        "frame": frame,
        "policy": policy.value,
        "exists": False,
        "version": None,
        "fields": [],
    }
    row = await reader.fetchrow("web_entity_at", bounds.world, kind, key, frame)
    if row is None:
        doc["versions"] = int(await reader.fetchval("web_entity_version_count", bounds.world, kind, key))
        return JSONResponse(doc)
    data = orjson.loads(row["data"])
    set_in: dict[str, int] = orjson.loads(row["set_in"])
    if not isinstance(data, dict):
        set_in = {}
    if isinstance(data, dict):
        wanted: Wanted = [(set_in[name], name, value) for name, value in data.items()]
    else:
        wanted = [(row["valid_from"], None, data)]
    blamed = await _blame_all(reader, bounds.world, kind, key, wanted)
    fields = [
        {"field": field, "value": value, **b} for (_, field, value), b in zip(wanted, blamed, strict=True)
    ]
    doc.update(
        exists=True,
        versions=row["versions"],
        version={
            "valid_from": row["valid_from"],
            "valid_to": row["valid_to"],
            "first_frame": row["first_frame"],
            "data": data,
        },
        fields=fields,
    )
    return JSONResponse(doc)


async def history(request: Request) -> JSONResponse:
    """The entity's versions, newest first, ``limit`` at a time (``before``: the ``next`` of the
    previous page); each with the fields its frame changed and the delta that set each."""
    reader = reader_of(request)
    bounds = await params.world_bounds(reader, request)
    kind, key = _entity_params(request)
    before = params.frame(request, "before", required=False)
    limit = params.limit(request, default=HISTORY_PAGE, high=HISTORY_MAX)
    last = bounds.last_merged if bounds.last_merged is not None else 0
    policy = rule_for(await _rules_at(reader, bounds.world, last if before is None else before), kind).policy
    rows = await reader.fetch("web_entity_versions", bounds.world, kind, key, before, limit + 1)
    total = int(await reader.fetchval("web_entity_version_count", bounds.world, kind, key))
    page = rows[:limit]
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
        versions.append(
            {
                "valid_from": r["valid_from"],
                "valid_to": r["valid_to"],
                "first_frame": r["first_frame"],
                "data": data,
                "created": previous is None,
                "changes": changes,
            }
        )
    set_values = [(v["valid_from"], c) for v in versions for c in v["changes"] if "after" in c]
    wanted: Wanted = [(frame, c["field"], c["after"]) for frame, c in set_values]
    blamed = await _blame_all(reader, bounds.world, kind, key, wanted)
    for (_, change), b in zip(set_values, blamed, strict=True):
        change.update(b)
    return JSONResponse(
        {
            "world": bounds.world,
            "kind": kind,
            "key": key,
            "policy": policy.value,
            "total": total,
            "versions": versions,
            "next": page[-1]["valid_from"] if len(rows) > limit else None,
        }
    )
