"""Blame: which delta set a field of an entity, found in the log with the merge's own rules.

A field's value was set in the frame whose merge made the version where the
field took that value. Among the items of that merge's deltas that the rules
read as this entity (``dreamcatcher.read_item`` over every rule key, in
``merge_frame``'s apply order), the one that set it depends on how the kind
merges. That is the one table below, :data:`BLAME_POLICY`: when merge rules
become data, it is read from the world's declared rules instead.

Pure: no I/O (the queries are in ``api_entity``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from .changes import same_json


class Policy(StrEnum):
    """How a kind's fields are written by a merge."""

    #: each field last-write-wins: set by the LAST item in apply order carrying it with that value
    LAST = "last"
    #: append, dedupe (first write wins): set by the FIRST item carrying it
    FIRST = "first"
    #: computed by the merge from other entities (books from chapters): set by the frame, no item
    DERIVED = "derived"


#: The merge policy of each kind of the built-in rules (sql/merge.sql). A kind not listed is
#: blamed to its frame only.
BLAME_POLICY: Final[Mapping[str, Policy]] = MappingProxyType({
    "post": Policy.LAST,
    "agent": Policy.LAST,
    "comment": Policy.FIRST,
    "reaction": Policy.FIRST,
    "chapter": Policy.FIRST,
    "observation": Policy.FIRST,
    "book": Policy.DERIVED,
})  # fmt: skip


def policy_for(kind: str) -> Policy:
    return BLAME_POLICY.get(kind, Policy.DERIVED)


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a delta that a merge read as the entity: where it sits in the log, and what
    the rule read (``data``, in the entity's own shape)."""

    into_frame: int  #: the frame whose merge took it
    frame: int  #: the frame it was written for (earlier for a deferred late delta)
    stream_id: str
    utc: datetime
    key: str  #: the delta's key that held it (posts_created, comments_added, ...)
    position: int  #: 1-based, in that key's list
    data: Any

    def to_dict(self) -> dict[str, Any]:
        return {"into_frame": self.into_frame, "frame": self.frame, "stream_id": self.stream_id,
                "utc": self.utc, "delta_key": self.key, "position": self.position}  # fmt: skip


def carries(data: Any, field: str | None, value: Any) -> bool:
    """Does an item's data hold ``value`` in ``field`` (``None``: the item as a whole)?"""
    if field is None:
        return same_json(data, value)
    return isinstance(data, dict) and field in data and same_json(data[field], value)


def setter(items: Sequence[Item], field: str | None, value: Any, policy: Policy) -> Item | None:
    """The item that set ``field`` to ``value``, among one merge's items of the entity (in apply
    order); ``None`` for a derived kind, or when no item carries the value (the merge made it)."""
    if policy is Policy.DERIVED:
        return None
    chosen = None
    for item in items:
        if carries(item.data, field, value):
            if policy is Policy.FIRST:
                return item
            chosen = item
    return chosen


def by_frame(items: Sequence[Item]) -> dict[int, list[Item]]:
    """Items grouped by the frame whose merge took them, apply order kept."""
    grouped: dict[int, list[Item]] = {}
    for item in items:
        grouped.setdefault(item.into_frame, []).append(item)
    return grouped


def blame(
    frame: int, field: str | None, value: Any, items: Mapping[int, Sequence[Item]], policy: Policy
) -> dict[str, Any]:
    """What the API says of one field: the frame that set it, and the delta's place when known."""
    item = setter(items.get(frame, ()), field, value, policy)
    return {"frame": frame, "delta": None if item is None else item.to_dict()}
