"""The state of a world at any frame, and the diff between two frames (read-only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

import orjson

from ..db.connect import ConnOrDsn, connected
from ..db.queries import query
from ..errors import UnknownWorldError

Change = Literal["added", "changed", "removed"]
ABSENT: Any = object()


@dataclass(frozen=True, slots=True)
class EntityState:
    """One entity as it was right after a frame. ``key`` is its dedupe key as text."""

    kind: str
    key: str
    data: Any
    first_frame: int
    last_frame: int


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One entity that differs between two frames."""

    kind: str
    key: str
    change: Change
    before: Any  # None when added
    after: Any  # None when removed
    fields: tuple[str, ...]  # the fields that differ (changed entities that are objects)

    def field_changes(self) -> list[tuple[str, Any, Any]]:
        """(field, old, new) for each changed field; a side without the field gives ``None``."""
        before = self.before if isinstance(self.before, dict) else {}
        after = self.after if isinstance(self.after, dict) else {}
        return [(f, before.get(f), after.get(f)) for f in self.fields]

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"key": self.key}
        if self.change == "changed" and self.fields:
            before = self.before if isinstance(self.before, dict) else {}
            after = self.after if isinstance(self.after, dict) else {}
            doc["fields"] = {
                f: {
                    k: v
                    for k, v in (("before", before.get(f, ABSENT)), ("after", after.get(f, ABSENT)))
                    if v is not ABSENT
                }
                for f in self.fields
            }
        if self.change != "added":
            doc["before"] = self.before
        if self.change != "removed":
            doc["after"] = self.after
        return doc


@dataclass
class Diff:
    """What changed in a world between the state after ``frame_a`` and the state after ``frame_b``."""

    world: str
    frame_a: int
    frame_b: int
    last_merged_frame: int | None
    changes: list[EntityChange] = field(default_factory=list)

    def by_kind(self) -> dict[str, dict[Change, list[EntityChange]]]:
        grouped: dict[str, dict[Change, list[EntityChange]]] = {}
        for c in self.changes:
            grouped.setdefault(c.kind, {"added": [], "changed": [], "removed": []})[c.change].append(c)
        return grouped

    def summary(self) -> dict[str, dict[str, int]]:
        return {k: {ch: len(v) for ch, v in g.items()} for k, g in self.by_kind().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "from": self.frame_a,
            "to": self.frame_b,
            "last_merged_frame": self.last_merged_frame,
            "summary": self.summary(),
            "changes": {
                k: {ch: [c.to_dict() for c in v] for ch, v in g.items()} for k, g in self.by_kind().items()
            },
        }


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


async def state_at(
    conn_or_dsn: ConnOrDsn, world: str, frame: int, kind: str | None = None
) -> list[EntityState]:
    """Every entity of ``world`` (of ``kind`` only, when given: ``post``, ``comment``...) as it was
    right after ``frame`` merged, sorted by kind and key. Index-driven: the cost follows the size
    of the state, not the length of the history (``dreamcatcher.state_at``)."""
    async with connected(conn_or_dsn) as conn:
        rows = await conn.fetch(query("state_at"), world, frame, kind)
    return [
        EntityState(r["kind"], r["ekey"], _json(r["data"]), r["first_frame"], r["last_frame"]) for r in rows
    ]


async def diff(conn_or_dsn: ConnOrDsn, world: str, frame_a: int, frame_b: int) -> Diff:
    """What was added, changed (field by field) and removed between the state after ``frame_a``
    and the state after ``frame_b`` (``frame_b`` < ``frame_a`` gives the reverse). Reads only
    the entities that changed in between (``dreamcatcher.entity_changes``, the same rows as
    ``dreamcatcher.diff``). Raises :class:`UnknownWorldError` for a world without frames. Needs
    only read access (the reader role)."""
    async with connected(conn_or_dsn) as conn:
        summary = await conn.fetchrow(query("world_diff_summary"), world)
        assert summary is not None
        if not summary["known"]:
            raise UnknownWorldError(f"world {world!r} has no frames in this database")
        rows = await conn.fetch(query("entity_changes"), world, frame_a, frame_b)
    result = Diff(world, frame_a, frame_b, summary["last_merged"])
    for r in rows:
        change = cast(Change, r["change"])
        result.changes.append(
            EntityChange(
                r["kind"], r["ekey"], change, _json(r["before"]), _json(r["after"]), tuple(r["fields"] or ())
            )
        )
    return result
