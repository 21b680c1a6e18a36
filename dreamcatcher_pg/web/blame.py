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

import orjson

from .changes import same_json


class Policy(StrEnum):
    """How a kind's fields are written by a merge."""

    #: each field last-write-wins: set by the LAST item in apply order carrying it with that value
    LAST = "last"
    #: append, dedupe (first write wins): set by the FIRST item carrying it
    FIRST = "first"
    #: computed by the merge from other entities (books from chapters): set by the frame, no item
    DERIVED = "derived"


@dataclass(frozen=True, slots=True)
class KindRule:
    """What blame needs to know of how a kind is merged."""

    policy: Policy
    #: the delta keys whose items the rules read as this kind (sql/merge.sql's readers)
    keys: tuple[str, ...] = ()
    #: does every item read as an entity hold its key's parts as text (see :func:`key_parts`)?
    key_in_item: bool = True


#: The kinds of the built-in rules (sql/merge.sql). A kind not listed is blamed to its frame
#: only. When merge rules become data, this table is read from the world's declared rules.
KIND_RULES: Final[Mapping[str, KindRule]] = MappingProxyType({
    "post": KindRule(Policy.LAST, ("posts_created", "posts_updated")),
    "agent": KindRule(Policy.LAST, ("agents_updated",)),
    "comment": KindRule(Policy.FIRST, ("comments_added",)),
    "reaction": KindRule(Policy.FIRST, ("reactions_added",)),
    "chapter": KindRule(Policy.FIRST, ("chapters",)),
    # keyed by where the item sits in the log, not by what it holds
    "observation": KindRule(Policy.FIRST, ("observations",), key_in_item=False),
    "book": KindRule(Policy.DERIVED, key_in_item=False),  # no item is a book: chapters make it
})  # fmt: skip
_UNKNOWN = KindRule(Policy.DERIVED, key_in_item=False)


def rule_for(kind: str) -> KindRule:
    return KIND_RULES.get(kind, _UNKNOWN)


def policy_for(kind: str) -> Policy:
    return rule_for(kind).policy


def key_parts(kind: str, ekey: str) -> list[str]:
    """Texts that the JSON text of every item read as entity ``ekey`` holds: the values its key is
    made of (a key ``id:X`` holds X; a JSON array key, its elements). Empty when nothing is known
    (a content key, a kind keyed by log position). Only a filter to skip items cheaply: an item
    without them is never this entity; one with them is still read by the rule's reader."""
    if not rule_for(kind).key_in_item or ekey.startswith("content:"):
        return []
    if ekey.startswith("id:"):
        parts: list[object] = [ekey[3:]]
    elif ekey.startswith("["):
        try:
            loaded = orjson.loads(ekey)
        except orjson.JSONDecodeError:
            return []
        parts = loaded if isinstance(loaded, list) else []
    else:
        parts = [ekey]
    texts = [p if isinstance(p, str) else orjson.dumps(p).decode() for p in parts if p is not None]
    # a text that JSON escapes would not appear as it is in the item's JSON text: not a filter then
    return [t for t in texts if t and not any(c in '"\\' or ord(c) < 0x20 for c in t)]


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
