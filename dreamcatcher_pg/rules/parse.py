"""Read a rules file (TOML) into a :class:`~.model.RuleSet`, or say what is wrong and where.

Every problem is reported with the line of the TOML it comes from: tomllib gives the line of a
syntax error; for the rest, :class:`_Lines` maps each ``[kinds.NAME]`` table and each option in
it to its line by scanning the text. All the problems of a file are reported at once.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import DreamcatcherError
from .model import (
    ENVELOPE_KEYS,
    FIELD_MERGES,
    KEYED_MERGES,
    MERGES,
    RESERVED_KINDS,
    Derived,
    KeyType,
    Kind,
    Merge,
    Pattern,
    RuleSet,
)

_HEADER = re.compile(r"""^\s*\[\s*kinds\s*\.\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*\]""")
_ASSIGN = re.compile(r"""^\s*(?:"([^"]*)"|([A-Za-z0-9_-]+))\s*=""")
_TOML_LINE = re.compile(r"\(at line (\d+), column \d+\)")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

KEYED_OPTIONS = frozenset(
    {
        "key",
        "types",
        "optional",
        "aliases",
        "drop_aliases",
        "bare",
        "patterns",
        "tally",
        "fallback",
        "key_in_data",
        "delete",
    }
)
OPTIONS = frozenset({"from", "merge", "fields"}) | KEYED_OPTIONS
DERIVED_OPTIONS = frozenset({"derive", "group", "count", "target", "target_default"})


@dataclass(frozen=True)
class Problem:
    line: int | None
    message: str

    def format(self, name: str) -> str:
        return f"{name}:{self.line}: {self.message}" if self.line else f"{name}: {self.message}"


class RulesError(DreamcatcherError):
    """A rules file that cannot be used; ``problems`` lists every one, with its line."""

    def __init__(self, problems: list[Problem], name: str = "rules") -> None:
        self.problems = problems
        self.name = name
        super().__init__("; ".join(p.format(name) for p in problems))


class _Lines:
    """Where each kind's table and each of its options starts in the source text."""

    def __init__(self, text: str) -> None:
        self.kinds: dict[str, int] = {}
        self.options: dict[tuple[str, str], int] = {}
        current: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            header = _HEADER.match(line)
            if header:
                current = next(g for g in header.groups() if g is not None)
                self.kinds.setdefault(current, number)
                continue
            if line.lstrip().startswith("["):
                current = None
                continue
            assign = _ASSIGN.match(line)
            if assign and current is not None:
                self.options.setdefault((current, assign.group(1) or assign.group(2)), number)

    def of(self, kind: str, option: str | None = None) -> int | None:
        if option is not None and (kind, option) in self.options:
            return self.options[(kind, option)]
        return self.kinds.get(kind)


class _Reader:
    def __init__(self, text: str) -> None:
        self.lines = _Lines(text)
        self.problems: list[Problem] = []

    def fail(self, kind: str, option: str | None, message: str) -> None:
        self.problems.append(Problem(self.lines.of(kind, option), f"kinds.{kind}: {message}"))

    def strings(self, kind: str, table: dict[str, Any], option: str) -> tuple[str, ...]:
        value = table.get(option, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(kind, option, f"{option} must be a list of non-empty strings")
            return ()
        if len(set(value)) != len(value):
            self.fail(kind, option, f"{option} names the same thing twice")
        return tuple(value)

    def text(self, kind: str, table: dict[str, Any], option: str) -> str | None:
        value = table.get(option)
        if value is not None and (not isinstance(value, str) or not value):
            self.fail(kind, option, f"{option} must be a non-empty string")
            return None
        return value if isinstance(value, str) else None

    def flag(self, kind: str, table: dict[str, Any], option: str, default: bool) -> bool:
        value = table.get(option, default)
        if not isinstance(value, bool):
            self.fail(kind, option, f"{option} must be true or false")
            return default
        return value

    # -- one kind ------------------------------------------------------------------

    def kind(self, name: str, table: Any) -> Kind | None:
        if not isinstance(table, dict):
            self.fail(name, None, "must be a table ([kinds.NAME])")
            return None
        if not _NAME.match(name) or name in RESERVED_KINDS:
            self.fail(
                name,
                None,
                "a kind's name is lowercase letters, digits and _, at most 63, "
                f"and not one of {sorted(RESERVED_KINDS)}",
            )
        if "derive" in table:
            return self.derived(name, table)
        for option in sorted(set(table) - OPTIONS):
            hint = " (a derived kind's option: add derive = KIND)" if option in DERIVED_OPTIONS else ""
            self.fail(name, option, f"unknown option {option!r}{hint}")
        merge = table.get("merge")
        if merge is None:
            self.fail(name, None, f"merge is missing (one of {', '.join(MERGES)})")
            return None
        if merge not in MERGES:
            self.fail(name, "merge", f"unknown merge {merge!r} (one of {', '.join(MERGES)})")
            return None
        sources = self.strings(name, table, "from")
        if not sources:
            self.fail(name, "from" if "from" in table else None, "from must list at least one delta key")
        fields = self.strings(name, table, "fields")
        if "fields" in table and merge not in FIELD_MERGES:
            self.fail(name, "fields", f"merge {merge!r} takes no fields (only sum and set do)")
        if merge in FIELD_MERGES and not fields:
            self.fail(
                name, "fields" if "fields" in table else "merge", f"merge {merge!r} needs fields = [...]"
            )
        if merge == "append":
            for option in sorted(set(table) & KEYED_OPTIONS):
                self.fail(name, option, f"merge 'append' keeps every item: it takes no {option}")
            return Kind(name=name, merge="append", sources=sources)
        return self.keyed(name, table, cast(Merge, merge), sources, fields)

    def keyed(
        self,
        name: str,
        table: dict[str, Any],
        merge: Merge,
        sources: tuple[str, ...],
        fields: tuple[str, ...],
    ) -> Kind | None:
        raw_key = table.get("key")
        content = raw_key == "content"
        if raw_key is None:
            self.fail(name, None, f'merge {merge!r} needs a key (key = ["field", ...] or key = "content")')
            return None
        if content:
            key: tuple[str, ...] = ()
            if merge != "first":
                self.fail(
                    name, "key", 'key = "content" dedupes identical items: it goes with merge = "first"'
                )
            for option in sorted(set(table) & (KEYED_OPTIONS - {"key", "aliases", "drop_aliases"})):
                self.fail(name, option, f"a content key takes no {option}")
        elif isinstance(raw_key, str):
            self.fail(name, "key", f'key must be a list of fields (key = [{raw_key!r}]) or "content"')
            return None
        else:
            key = self.strings(name, table, "key")
            if not key:
                self.fail(name, "key", "key must name at least one field")
        types: dict[str, KeyType] = {}
        raw_types = table.get("types", {})
        if not isinstance(raw_types, dict):
            self.fail(name, "types", 'types must be a table: types = { field = "int" }')
            raw_types = {}
        for f, t in raw_types.items():
            if f not in key:
                self.fail(name, "types", f"types names {f!r}, which is not a key field")
            elif t not in ("int", "text"):
                self.fail(name, "types", f'type of {f!r} must be "int" or "text", not {t!r}')
            else:
                types[f] = cast(KeyType, t)
        optional = self.strings(name, table, "optional")
        for f in optional:
            if f not in key:
                self.fail(name, "optional", f"optional names {f!r}, which is not a key field")
        if key and set(optional) >= set(key):
            self.fail(name, "optional", "at least one key field must be required")
        aliases = self.aliases(name, table)
        bare = self.text(name, table, "bare")
        if bare is not None and bare not in key:
            self.fail(name, "bare", f"bare must be a key field, not {bare!r}")
        patterns = self.patterns(name, table, key)
        tally = self.text(name, table, "tally")
        fallback = self.text(name, table, "fallback")
        if fallback is not None and fallback != "content":
            self.fail(name, "fallback", 'the only fallback is "content"')
        if fallback is not None and merge != "first":
            self.fail(
                name, "fallback", 'a content fallback dedupes identical items: it goes with merge = "first"'
            )
        for f in fields:
            if f in key:
                self.fail(name, "fields", f"{f!r} is a key field; fields lists the fields to {merge}")
        return Kind(
            name=name,
            merge=merge,
            sources=sources,
            key=key,
            content_key=content,
            types=types,
            optional=optional,
            aliases=aliases,
            drop_aliases=self.flag(name, table, "drop_aliases", False),
            bare=bare,
            patterns=patterns,
            tally=tally,
            fallback="content" if fallback == "content" else None,
            key_in_data=self.flag(name, table, "key_in_data", True),
            delete=self.strings(name, table, "delete"),
            fields=fields,
        )

    def aliases(self, name: str, table: dict[str, Any]) -> dict[str, tuple[str, ...]]:
        raw = table.get("aliases", {})
        if not isinstance(raw, dict):
            self.fail(name, "aliases", 'aliases must be a table: aliases = { field = ["other_name"] }')
            return {}
        out: dict[str, tuple[str, ...]] = {}
        seen: set[str] = set()
        for f, names in raw.items():
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                self.fail(name, "aliases", f"aliases of {f!r} must be a list of names")
                continue
            if seen & {f, *names} or f in names:
                self.fail(
                    name, "aliases", f"{f!r}: a name is an alias of one field only, and not a field too"
                )
            seen |= {f, *names}
            out[f] = tuple(names)
        return out

    def patterns(self, name: str, table: dict[str, Any], key: tuple[str, ...]) -> tuple[Pattern, ...]:
        raw = table.get("patterns", [])
        out: list[Pattern] = []
        if not isinstance(raw, list):
            self.fail(name, "patterns", "patterns must be a list of { match = REGEX, fields = [...] }")
            return ()
        for p in raw:
            if not isinstance(p, dict) or set(p) != {"match", "fields"} or not isinstance(p["match"], str):
                self.fail(name, "patterns", "each pattern is { match = REGEX, fields = [FIELD, ...] }")
                continue
            fields = p["fields"]
            if not isinstance(fields, list) or not fields or not all(f in key for f in fields):
                self.fail(name, "patterns", f"pattern {p['match']!r}: fields must be key fields")
                continue
            try:
                groups = re.compile(p["match"]).groups
            except re.error as exc:
                self.fail(name, "patterns", f"pattern {p['match']!r} is not a regular expression: {exc}")
                continue
            if groups != len(fields):
                self.fail(
                    name, "patterns", f"pattern {p['match']!r} has {groups} groups for {len(fields)} fields"
                )
                continue
            out.append(Pattern(p["match"], tuple(fields)))
        return tuple(out)

    def derived(self, name: str, table: dict[str, Any]) -> Kind | None:
        for option in sorted(set(table) - DERIVED_OPTIONS):
            self.fail(
                name,
                option,
                f"a derived kind takes no {option!r} (only {', '.join(sorted(DERIVED_OPTIONS))})",
            )
        source, group = self.text(name, table, "derive"), self.text(name, table, "group")
        count = self.text(name, table, "count") or "count"
        target = self.text(name, table, "target")
        default = table.get("target_default", 10)
        if not isinstance(default, int) or isinstance(default, bool) or default < 1:
            self.fail(name, "target_default", "target_default must be a positive integer")
            default = 10
        if source is None or group is None:
            self.fail(name, None, "a derived kind needs derive = KIND and group = FIELD")
            return None
        if count in (group, target, "compiled_frame") or target in (group, "compiled_frame"):
            self.fail(name, "count", "group, count, target and compiled_frame must be four different names")
        return Kind(name=name, derived=Derived(source, group, count, target, default))


def _check_set(reader: _Reader, kinds: list[Kind]) -> None:
    claimed: dict[str, str] = {}
    by_name = {k.name: k for k in kinds}
    for k in kinds:
        for option, keys in (("from", k.sources), ("delete", k.delete)):
            for key in keys:
                if key in ENVELOPE_KEYS:
                    reader.fail(k.name, option, f"{key!r} is part of a delta's envelope, not an entity key")
                elif key in claimed:
                    reader.fail(k.name, option, f"delta key {key!r} is already read by kind {claimed[key]!r}")
                else:
                    claimed[key] = k.name
        d = k.derived
        if d is None:
            continue
        src = by_name.get(d.source)
        if src is None or src.derived is not None or src.merge not in KEYED_MERGES or src.content_key:
            reader.fail(k.name, "derive", f"derive must name a keyed kind of this file, not {d.source!r}")
        elif d.group not in src.required:
            reader.fail(
                k.name, "group", f"group must be a required key field of {d.source!r}, not {d.group!r}"
            )
    if not kinds:
        reader.problems.append(Problem(None, "the file declares no kind ([kinds.NAME])"))


def parse_rules(text: str, name: str = "rules") -> RuleSet:
    """The rule set a TOML text declares; :class:`RulesError` lists every problem with its line."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_LINE.search(str(exc))
        raise RulesError(
            [Problem(int(found.group(1)) if found else None, f"invalid TOML: {exc}")], name
        ) from None
    reader = _Reader(text)
    for option in sorted(set(doc) - {"kinds", "description"}):
        reader.problems.append(
            Problem(None, f"unknown top-level key {option!r} (rules go in [kinds.NAME] tables)")
        )
    raw_kinds = doc.get("kinds", {})
    kinds: list[Kind] = []
    if isinstance(raw_kinds, dict):
        for kind_name, table in raw_kinds.items():
            kind = reader.kind(kind_name, table)
            if kind is not None:
                kinds.append(kind)
    _check_set(reader, kinds)
    if reader.problems:
        raise RulesError(sorted(reader.problems, key=lambda p: p.line or 0), name)
    return RuleSet(tuple(kinds), text)


def load_rules(path: str | Path) -> RuleSet:
    """The rule set of a rules file."""
    p = Path(path)
    return parse_rules(p.read_text(encoding="utf-8"), str(p))
