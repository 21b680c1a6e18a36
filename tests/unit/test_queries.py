"""Named queries (no database): every name the code asks for exists, unknown names fail clearly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import dreamcatcher_pg
from dreamcatcher_pg.db.queries import all_queries, query

PACKAGE = Path(dreamcatcher_pg.__file__).parent
USED = re.compile(r"""query\(\s*["'](\w+)["']\s*\)""")


def used_names() -> dict[str, list[str]]:
    """Every ``query("NAME")`` in dreamcatcher_pg/ (its subpackages too), with the files that use it."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in USED.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    return found


def test_queries_load() -> None:
    queries = all_queries()
    assert queries
    for name, text in queries.items():
        assert re.fullmatch(r"\w+", name)
        assert text.strip(), f"query {name!r} is empty"
        assert "-- name:" not in text
        assert query(name) == text


def test_the_code_uses_named_queries() -> None:
    names = used_names()
    # the hot paths go through named queries; the scan must find them
    assert {"append_delta", "append_deltas", "close_frame", "merge_frame"} <= set(names)


def test_every_query_used_by_the_code_exists() -> None:
    missing = {name: files for name, files in used_names().items() if name not in all_queries()}
    assert missing == {}


@pytest.mark.parametrize("name", sorted(used_names()))
def test_each_used_query_loads(name: str) -> None:
    assert query(name).strip()


def test_unknown_query_raises_key_error_naming_it() -> None:
    with pytest.raises(KeyError) as info:
        query("no_such_query_xyz")
    assert "no_such_query_xyz" in str(info.value)
