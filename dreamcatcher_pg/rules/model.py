"""The typed model of a rule set: what a rules file declares, with every default filled in.

A :class:`RuleSet` is plain data. :mod:`.parse` builds it from TOML (and checks it),
:mod:`.compile` turns it into SQL, :mod:`.store` installs it. Its identity is the sha256 of
:meth:`RuleSet.normalized` (plus the compiler's version), so two files that declare the same
rules (other comments, spacing or key order within a table) are one rule set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

#: Bumped whenever the SQL a declaration compiles to changes meaning: part of every rule set's id.
COMPILER_VERSION = 1

Merge = Literal["lww", "first", "append", "sum", "set"]
KeyType = Literal["text", "int"]

#: Merges that take a key; the ones that take ``fields``.
KEYED_MERGES: frozenset[str] = frozenset({"lww", "first", "sum", "set"})
FIELD_MERGES: frozenset[str] = frozenset({"sum", "set"})
MERGES: tuple[str, ...] = ("lww", "first", "append", "sum", "set")

#: Keys of a delta that describe the delta itself (its envelope), never entities.
ENVELOPE_KEYS: frozenset[str] = frozenset({"frame", "stream_id", "utc", "_meta", "completed_at"})
#: Kind names the merge uses for its own markers.
RESERVED_KINDS: frozenset[str] = frozenset({"tally", "unmerged"})


@dataclass(frozen=True)
class Pattern:
    """A bare string item read with a regular expression: group i is ``fields[i]``."""

    match: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Derived:
    """A kind computed from another: per value of ``group``, the count of entities of ``source``
    created so far; it compiles (``compiled_frame``) in the frame the count reaches the target."""

    source: str
    group: str
    count: str
    target: str | None
    target_default: int


@dataclass(frozen=True)
class Kind:
    """One entity kind. ``key`` is empty for ``append`` and for ``content``-keyed kinds."""

    name: str
    merge: Merge | None = None
    sources: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    content_key: bool = False
    types: dict[str, KeyType] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    drop_aliases: bool = False
    bare: str | None = None
    patterns: tuple[Pattern, ...] = ()
    tally: str | None = None
    fallback: Literal["content"] | None = None
    key_in_data: bool = True
    delete: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    derived: Derived | None = None

    def key_type(self, name: str) -> KeyType:
        return self.types.get(name, "text")

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(f for f in self.key if f not in self.optional)

    @property
    def encoding(self) -> str:
        """How the entity key is written as text (what ``entities_at`` decodes into ``key``)."""
        if self.derived is not None:
            return "text"
        if self.merge == "append":
            return "position"
        if self.content_key:
            return "content"
        if self.fallback == "content":
            return "tagged"
        if len(self.key) > 1:
            return "array"
        return "int" if self.key_type(self.key[0]) == "int" else "text"

    def normalized(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "encoding": self.encoding}
        if self.derived is not None:
            d = self.derived
            doc["derive"] = {
                "source": d.source,
                "group": d.group,
                "count": d.count,
                "target": d.target,
                "target_default": d.target_default,
            }
            return doc
        doc.update(
            {
                "merge": self.merge,
                "from": list(self.sources),
                "key": "content" if self.content_key else list(self.key),
                "types": {k: self.key_type(k) for k in self.key},
                "optional": list(self.optional),
                "aliases": {k: list(v) for k, v in sorted(self.aliases.items())},
                "drop_aliases": self.drop_aliases,
                "bare": self.bare,
                "patterns": [{"match": p.match, "fields": list(p.fields)} for p in self.patterns],
                "tally": self.tally,
                "fallback": self.fallback,
                "key_in_data": self.key_in_data,
                "delete": list(self.delete),
                "fields": list(self.fields),
            }
        )
        return doc


@dataclass(frozen=True)
class RuleSet:
    """The kinds of a rules file, in the order they are declared (which orders the delta keys
    within a delta: the first kind's keys apply first)."""

    kinds: tuple[Kind, ...]
    source: str = ""

    def normalized(self) -> dict[str, Any]:
        return {"compiler": COMPILER_VERSION, "kinds": [k.normalized() for k in self.kinds]}

    def normalized_json(self) -> str:
        return orjson.dumps(self.normalized(), option=orjson.OPT_SORT_KEYS).decode()

    @property
    def id(self) -> str:
        """The rule set's identity: sha256 of its normalized declaration, hex."""
        return hashlib.sha256(self.normalized_json().encode()).hexdigest()

    @property
    def tag(self) -> str:
        """The 16 hex digits that name its SQL functions."""
        return self.id[:16]

    def kind(self, name: str) -> Kind:
        for k in self.kinds:
            if k.name == name:
                return k
        raise KeyError(name)

    def ranks(self) -> list[tuple[str, Kind, bool]]:
        """(delta key, kind, is a deletion) in apply order within a delta; rank = index + 1."""
        out: list[tuple[str, Kind, bool]] = []
        for k in self.kinds:
            out += [(s, k, False) for s in k.sources]
            out += [(s, k, True) for s in k.delete]
        return out
