"""Blame: which delta set a field of an entity, found in the log with the merge's own rules.

A field's value was set in the frame whose merge made the version where the
field took that value. Among the items of that merge's deltas that the rules
read as this entity (the rule set's item reader, ``rules_<tag>_read_item``,
over the kind's delta keys, in the merge's apply order), the one that set it
depends on how the kind merges: :func:`kind_rule` reads that from the rule set
that merged the frame (the world's declared rules, or the default ones).

Pure: no I/O (the queries are in ``api_entity``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson

from ..rules.model import Kind, RuleSet
from ..rules.parse import parse_rules
from .changes import same_json


class Policy(StrEnum):
    """How a kind's fields are written by a merge."""

    #: each field last-write-wins: set by the LAST item in apply order carrying it with that value
    LAST = "last"
    #: first write wins (a later copy may only add missing fields): set by the FIRST item carrying it
    FIRST = "first"
    #: computed by the merge from other entities (a derived kind): set by the frame, no item
    DERIVED = "derived"


@dataclass(frozen=True, slots=True)
class KindRule:
    """What blame needs to know of how a kind is merged."""

    policy: Policy
    #: the delta keys whose items the rules read as this kind
    keys: tuple[str, ...] = ()
    #: how its entity keys are written (rules.model.Kind.encoding); "none" for a kind not declared
    encoding: str = "none"


_UNKNOWN = KindRule(Policy.DERIVED)


def kind_rule(kind: Kind | None) -> KindRule:
    """Blame's view of a declared kind. ``sum`` and ``set`` kinds are blamed as last-write-wins:
    their other fields are, and no single item carries a summed or unioned value (the merge made
    it), so those fields are blamed to their frame only."""
    if kind is None or kind.derived is not None:
        return _UNKNOWN
    policy = Policy.FIRST if kind.merge in ("first", "append") else Policy.LAST
    return KindRule(policy, kind.sources, kind.encoding)


def rule_for(rules: RuleSet | None, kind: str) -> KindRule:
    """How ``kind`` merges under ``rules`` (a kind they do not declare: blamed to its frame)."""
    if rules is None:
        return _UNKNOWN
    try:
        return kind_rule(rules.kind(kind))
    except KeyError:
        return _UNKNOWN


@lru_cache(maxsize=64)
def rule_set(rule_set_id: str, source: str) -> RuleSet:
    """The rule set stored under ``rule_set_id`` (its TOML ``source``), parsed once per process:
    a stored rule set never changes."""
    return parse_rules(source, f"rule set {rule_set_id[:16]}")


def key_parts(rule: KindRule, ekey: str) -> list[str]:
    """Texts that the JSON text of every item read as entity ``ekey`` holds: the values its key is
    made of (a key ``id:X`` holds X; a JSON array key, its elements). Empty when nothing is known
    (a content key, a kind keyed by log position). Only a filter to skip items cheaply: an item
    without them is never this entity; one with them is still read by the rule's reader."""
    encoding = rule.encoding
    if encoding == "tagged":
        if ekey.startswith("content:"):
            return []
        if ekey.startswith("key:"):
            encoding, ekey = "array", ekey[4:]
        else:
            encoding, ekey = "text", ekey.partition(":")[2]
    if encoding == "array":
        try:
            loaded = orjson.loads(ekey)
        except orjson.JSONDecodeError:
            return []
        parts: list[object] = loaded if isinstance(loaded, list) else []
    elif encoding in ("int", "text"):
        parts = [ekey]
    else:
        return []
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
        return {
            "into_frame": self.into_frame,
            "frame": self.frame,
            "stream_id": self.stream_id,
            "utc": self.utc,
            "delta_key": self.key,
            "position": self.position,
        }


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
