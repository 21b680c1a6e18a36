"""Named queries, loaded once from ``sql/queries*.sql``."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def all_queries() -> dict[str, str]:
    """Every named query, by name."""
    found: dict[str, str] = {}
    package = resources.files("dreamcatcher_pg.sql")
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if not (entry.name.startswith("queries") and entry.name.endswith(".sql")):
            continue
        parts = _NAME.split(entry.read_text(encoding="utf-8"))
        # parts = [preamble, name1, body1, name2, body2, ...]
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice (second time in {entry.name})")
            found[name] = body.strip()
    return found


def query(name: str) -> str:
    """The SQL text of one named query; ``KeyError`` names the missing one."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries*.sql") from None
