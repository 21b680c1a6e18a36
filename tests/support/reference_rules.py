"""A reference implementation of the rules declaration, in plain Python, item by item.

It is what docs/rules.md says, written the slow and obvious way, so the property tests can
check the compiled, set-based SQL against it. It covers what the generated rule sets use:
keys (int / text, aliases, composite, optional), lww / first / sum / set / append / content,
deletions, derived kinds. The quirks of the default set (bare items, patterns, tallies,
content fallback) are held to the hand-written merge by the golden test instead.

JSON values are restricted to what the generators produce (objects, lists, ints, short ASCII
strings, null): enough to spell PostgreSQL's jsonb text exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dreamcatcher_pg.rules.model import ENVELOPE_KEYS, Kind, RuleSet

_DIGITS = re.compile(r"^-?[0-9]{1,18}$")


def pg_text(value: Any) -> str:
    """jsonb's text form: object keys by (length, bytes), ', ' and ': ' separators."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{json.dumps(k)}: {pg_text(value[k])}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(pg_text(v) for v in value) + "]"
    return json.dumps(value)


def jtext(v: Any) -> str | None:
    if isinstance(v, str):
        return v.strip() or None
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return None


def jint(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v if abs(v) < 10**18 else None
    if isinstance(v, str) and _DIGITS.match(v.strip()):
        return int(v.strip())
    return None


def jlist(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [] if v is None else [v]


def jrename(obj: dict[str, Any], canon: str, aliases: tuple[str, ...]) -> dict[str, Any]:
    if not any(a in obj for a in aliases) or obj.get(canon) is not None:
        return obj
    for a in aliases:
        if obj.get(a) is not None:
            out = {k: v for k, v in obj.items() if k != a}
            out[canon] = obj[a]
            return out
    return obj


@dataclass
class Item:
    order: tuple[Any, ...]  # (frame, utc, stream bytes, rank, pos)
    kind: str
    ekey: str | None
    data: Any
    bad: bool
    delete: bool


def read(
    rules: RuleSet, kind: Kind, item: Any, where: tuple[int, str, datetime, int]
) -> tuple[str | None, Any, bool]:
    """(ekey, data, unreadable) of one item."""
    frame, stream, utc, pos = where
    if kind.merge == "append":
        micros = (utc - datetime(1970, 1, 1, tzinfo=utc.tzinfo)) // __import__("datetime").timedelta(
            microseconds=1
        )
        return pg_text([frame, stream, micros, pos]), item, False
    renamed = item
    if isinstance(item, dict):
        for f, names in kind.aliases.items():
            renamed = jrename(renamed, f, names)
    if kind.content_key:
        if item is None:
            return None, None, True
        return "content:" + hashlib.md5(pg_text(renamed).encode()).hexdigest(), renamed, False
    if not isinstance(item, dict):
        return None, None, True
    values: list[Any] = []
    for f in kind.key:
        read_one = jint if kind.key_type(f) == "int" else jtext
        found = [read_one(item.get(n)) for n in (f, *kind.aliases.get(f, ()))]
        values.append(next((v for v in found if v is not None), None))
    if any(v is None for f, v in zip(kind.key, values, strict=True) if f not in kind.optional):
        return None, None, True
    data = {**renamed, **dict(zip(kind.key, values, strict=True))} if kind.key_in_data else renamed
    if kind.merge == "sum" and any(
        f in data and data[f] is not None and not isinstance(data[f], int) for f in kind.fields
    ):
        return None, None, True
    for other in rules.kinds:
        d = other.derived
        if d is not None and d.source == kind.name and d.target is not None and d.target in item:
            t = jint(item[d.target])
            if t is None or t < 1:
                return None, None, True
    ekey = str(values[0]) if len(values) == 1 else pg_text(values)
    return ekey, data, False


def explode(
    rules: RuleSet, deltas: list[tuple[int, str, datetime, dict[str, Any]]]
) -> tuple[list[Item], int]:
    """Every item of the frame's deltas, read; and how many items were unreadable."""
    ranks = {key: (i + 1, kind, is_del) for i, (key, kind, is_del) in enumerate(rules.ranks())}
    items: list[Item] = []
    bad = 0
    for frame, stream, utc, payload in deltas:
        for key, value in payload.items():
            if key in ENVELOPE_KEYS or key not in ranks:
                continue
            rank, kind, is_del = ranks[key]
            for pos, raw in enumerate(jlist(value), start=1):
                ekey, data, unreadable = read(rules, kind, raw, (frame, stream, utc, pos))
                bad += unreadable
                order = (frame, utc, stream.encode(), rank, pos)
                items.append(Item(order, kind.name, ekey, data, unreadable, is_del))
    return items, bad


State = dict[tuple[str, str], tuple[Any, int]]  # (kind, ekey) -> (data, first_frame)


def _set_union(base: Any, values: list[Any]) -> list[Any]:
    texts = {pg_text(e): e for v in [base, *values] for e in jlist(v)}
    return [texts[t] for t in sorted(texts, key=lambda t: t.encode())]


def _merge_keyed(
    kind: Kind, mine: list[Item], old: tuple[Any, int] | None, frame: int
) -> tuple[Any, int] | None:
    """The entity after the frame (None: it does not exist)."""
    mine.sort(key=lambda i: i.order)
    last_del = max((n for n, i in enumerate(mine) if i.delete), default=None)
    if last_del == len(mine) - 1:
        return None
    live = [i for n, i in enumerate(mine) if not i.delete and (last_del is None or n > last_del)]
    base: dict[str, Any] = {} if last_del is not None or old is None else dict(old[0])
    first_frame = frame if last_del is not None or old is None else old[1]
    if kind.merge == "first":
        patch: dict[str, Any] = {}
        for i in live:
            for k, v in i.data.items():
                patch.setdefault(k, v)
        new = {**patch, **base}
    else:
        new = dict(base)
        for i in live:
            new.update({k: v for k, v in i.data.items() if k not in kind.fields})
        for f in kind.fields:
            given = [i.data[f] for i in live if f in i.data]
            if not given and f not in base:
                continue
            if kind.merge == "sum":
                new[f] = (base.get(f) or 0) + sum(v for v in given if v is not None)
            else:
                new[f] = _set_union(base.get(f), given)
    return new, first_frame


def merge_frame(
    rules: RuleSet, state: State, frame: int, deltas: list[tuple[int, str, datetime, dict[str, Any]]]
) -> int:
    """Merge one frame into ``state`` (in place); returns the number of unreadable items."""
    items, bad = explode(rules, deltas)
    readable = [i for i in items if not i.bad]
    created: dict[str, list[tuple[Any, int]]] = {}
    for kind in rules.kinds:
        if kind.derived is not None:
            continue
        mine = [i for i in readable if i.kind == kind.name]
        if kind.merge == "append":
            for i in mine:
                state[(kind.name, str(i.ekey))] = (i.data, frame)
            continue
        by_key: dict[str, list[Item]] = {}
        for i in mine:
            by_key.setdefault(str(i.ekey), []).append(i)
        for ekey, group in by_key.items():
            old = state.get((kind.name, ekey))
            if kind.content_key:
                if old is None:
                    state[(kind.name, ekey)] = (group[0].data, frame)
                continue
            new = _merge_keyed(kind, group, old, frame)
            if new is None:
                state.pop((kind.name, ekey), None)
            elif old is None or pg_text(new[0]) != pg_text(old[0]):
                state[(kind.name, ekey)] = new
                if old is None:
                    created.setdefault(kind.name, []).append(new)
    for kind in rules.kinds:
        d = kind.derived
        if d is None:
            continue
        counts: dict[str, int] = {}
        for data, _ in created.get(d.source, []):
            grp = str(data[d.group])
            counts[grp] = counts.get(grp, 0) + 1
        targets: dict[str, int] = {}
        for i in sorted((i for i in readable if i.kind == d.source and not i.delete), key=lambda i: i.order):
            grp = str(i.data[d.group])
            counts.setdefault(grp, 0)
            t = jint(i.data.get(d.target)) if d.target else None
            if t is not None:
                targets[grp] = t
        tname = d.target or "target"
        for grp, n in counts.items():
            old = state.get((kind.name, grp))
            od: dict[str, Any] = old[0] if old else {}
            target = targets.get(grp, od.get(tname, d.target_default))
            total = od.get(d.count, 0) + n
            compiled = od.get("compiled_frame")
            if compiled is None and total >= target:
                compiled = frame
            data = {d.group: grp, tname: target, d.count: total, "compiled_frame": compiled}
            if old is None or pg_text(old[0]) != pg_text(data):
                state[(kind.name, grp)] = (data, old[1] if old else frame)
    return bad
