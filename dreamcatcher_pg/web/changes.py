"""Comparing two versions of an entity, field by field (pure, no I/O)."""

from __future__ import annotations

from typing import Any

import orjson


def same_json(x: Any, y: Any) -> bool:
    """Equal as JSON documents (``true`` is not ``1``; key order does not matter)."""
    return orjson.dumps(x, option=orjson.OPT_SORT_KEYS) == orjson.dumps(y, option=orjson.OPT_SORT_KEYS)


def field_changes(before: Any, after: Any) -> list[dict[str, Any]]:
    """The top-level fields that differ, each ``{field, before, after}`` (a side without the field
    has no key), by field name. Entities that are not both objects: one entry, field ``None``."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return [] if same_json(before, after) else [{"field": None, "before": before, "after": after}]
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name in before and name in after and same_json(before[name], after[name]):
            continue
        entry: dict[str, Any] = {"field": name}
        if name in before:
            entry["before"] = before[name]
        if name in after:
            entry["after"] = after[name]
        changes.append(entry)
    return changes
