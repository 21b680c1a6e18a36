"""The pure parts of the inspector (no database): blame's policy, field changes, the named queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

import dreamcatcher_pg.web
from dreamcatcher_pg.db.queries import all_queries
from dreamcatcher_pg.rules import parse_rules
from dreamcatcher_pg.rules.store import default_rules
from dreamcatcher_pg.web.blame import (
    Item,
    KindRule,
    Policy,
    by_frame,
    carries,
    key_parts,
    rule_for,
    setter,
)
from dreamcatcher_pg.web.changes import field_changes, same_json

WEB = Path(dreamcatcher_pg.web.__file__).parent
T = datetime(2030, 1, 1, tzinfo=UTC)


def item(stream: str, data: object, frame: int = 3, into: int = 3, pos: int = 1) -> Item:
    return Item(into, frame, stream, T, "posts_updated", pos, data)


ITEMS = [
    item("a", {"number": 1, "title": "x"}),
    item("b", {"number": 1, "title": "y"}),
    item("c", {"number": 1, "title": "x", "mood": "ok"}),
    item("d", {"number": 1}),
]


def test_last_write_wins_is_blamed_on_the_last_item_carrying_the_value() -> None:
    assert setter(ITEMS, "title", "x", Policy.LAST) is ITEMS[2]
    assert setter(ITEMS, "title", "y", Policy.LAST) is ITEMS[1]
    assert setter(ITEMS, "number", 1, Policy.LAST) is ITEMS[3]


def test_first_write_wins_is_blamed_on_the_first_item_carrying_the_value() -> None:
    assert setter(ITEMS, "title", "x", Policy.FIRST) is ITEMS[0]
    assert setter(ITEMS, "mood", "ok", Policy.FIRST) is ITEMS[2]
    assert setter(ITEMS, "number", 1, Policy.FIRST) is ITEMS[0]


def test_no_item_for_a_derived_kind_or_a_value_no_item_carries() -> None:
    assert setter(ITEMS, "title", "x", Policy.DERIVED) is None
    assert setter(ITEMS, "title", "z", Policy.LAST) is None
    assert setter([], "title", "x", Policy.FIRST) is None


def test_values_compare_as_json() -> None:
    assert not carries({"n": 1}, "n", True) and not carries({"n": True}, "n", 1)
    assert carries({"n": {"a": 1, "b": [2]}}, "n", {"b": [2], "a": 1})
    assert carries("applause", None, "applause") and not carries({"n": 1}, "m", None)
    assert same_json(1, 1) and not same_json(1, 1.5) and not same_json(None, False)


def test_items_are_grouped_by_the_merge_that_took_them_in_order() -> None:
    late = item("z", {"number": 1}, frame=1, into=3)
    other = item("a", {"number": 1}, frame=4, into=4)
    assert by_frame([ITEMS[0], late, other, ITEMS[1]]) == {3: [ITEMS[0], late, ITEMS[1]], 4: [other]}


def test_every_kind_of_the_built_in_rules_has_its_policy() -> None:
    rules = default_rules()
    expected = {
        "post": Policy.LAST,
        "agent": Policy.LAST,
        "comment": Policy.FIRST,
        "reaction": Policy.FIRST,
        "chapter": Policy.FIRST,
        "book": Policy.DERIVED,
        "observation": Policy.FIRST,
    }
    assert {k.name: rule_for(rules, k.name).policy for k in rules.kinds} == expected
    assert rule_for(rules, "post").keys == ("posts_created", "posts_updated")
    assert rule_for(rules, "a kind of tomorrow").policy is Policy.DERIVED
    assert rule_for(None, "post").policy is Policy.DERIVED  # no rules in the database: the frame only


def test_declared_kinds_are_blamed_by_how_they_merge() -> None:
    rules = parse_rules(
        """
        [kinds.unit]
        from = ["units"]
        key = ["id"]
        merge = "lww"
        [kinds.vote]
        from = ["votes"]
        key = ["target", "voter"]
        merge = "first"
        [kinds.finding]
        from = ["findings"]
        key = "content"
        merge = "first"
        [kinds.event]
        from = ["events"]
        merge = "append"
        [kinds.stock]
        from = ["stock"]
        key = ["item"]
        merge = "sum"
        fields = ["qty"]
        """
    )
    assert rule_for(rules, "unit") == KindRule(Policy.LAST, ("units",), "text")
    assert rule_for(rules, "vote") == KindRule(Policy.FIRST, ("votes",), "array")
    assert rule_for(rules, "finding").policy is Policy.FIRST
    assert rule_for(rules, "event") == KindRule(Policy.FIRST, ("events",), "position")
    assert rule_for(rules, "stock").policy is Policy.LAST  # its summed fields: no item carries the sum
    assert key_parts(rule_for(rules, "vote"), '["p1", "ann"]') == ["p1", "ann"]
    assert key_parts(rule_for(rules, "finding"), "content:0cc175b9c0f1b6a831c399e269772661") == []
    assert key_parts(rule_for(rules, "event"), '[1, "s1", 1700000000000000, 2]') == []


def test_key_parts_are_texts_every_item_of_the_entity_holds() -> None:
    rules = default_rules()

    def parts(kind: str, ekey: str) -> list[str]:
        return key_parts(rule_for(rules, kind), ekey)

    assert parts("post", "1042") == ["1042"]
    assert parts("agent", "agent-hot") == ["agent-hot"]
    assert parts("comment", "id:c-7") == ["c-7"]
    assert parts("comment", "content:0cc175b9c0f1b6a831c399e269772661") == []
    assert parts("reaction", '["5", "like", null]') == ["5", "like"]
    assert parts("chapter", '["bk", "ada", 3]') == ["bk", "ada", "3"]
    assert parts("observation", '[1, "s1", 1700000000000000, 2]') == []  # keyed by log position
    assert parts("book", "bk") == [] and parts("unknown", "k") == []
    assert parts("agent", 'say "hi"') == [] and parts("chapter", '["a\\b", "x", 1]') == ["x", "1"]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1, "b": 3}, [{"field": "b", "before": 2, "after": 3}]),
        ({"a": 1}, {"a": 1, "b": None}, [{"field": "b", "after": None}]),
        ({"a": 1, "b": 2}, {"a": 1}, [{"field": "b", "before": 2}]),
        ({"a": 1}, {"a": True}, [{"field": "a", "before": 1, "after": True}]),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": 2, "x": 1}}, []),
        ("s", "t", [{"field": None, "before": "s", "after": "t"}]),
        ([1], [1], []),
    ],
)
def test_field_changes(before: object, after: object, expected: list[dict[str, object]]) -> None:
    assert field_changes(before, after) == expected


def test_the_web_queries_used_exist_and_every_one_is_used() -> None:
    used: set[str] = set()
    for path in WEB.glob("*.py"):
        used |= set(re.findall(r"""["'](web_\w+)["']""", path.read_text(encoding="utf-8")))
    defined = {name for name in all_queries() if name.startswith("web_")}
    assert used and used == defined
