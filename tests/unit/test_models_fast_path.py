"""The fast path of prepare_delta accepts exactly what the checked path accepts, with the same result.

``prepare_delta`` first tries a cheap walk (exact dict/list/str/int/float/bool/None values,
one serialisation); when it is not sure, the reference validation (pydantic and a walk that
names the field) decides. Whatever the input, both must agree: same acceptance, same JSON text,
same frame and utc, and the same error (message and field) when refused.
"""

from __future__ import annotations

import enum
import uuid
from collections import OrderedDict
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreamcatcher_pg import InvalidDeltaError
from dreamcatcher_pg.models import _prepare_checked, _prepare_plain, prepare_delta
from dreamcatcher_pg.validation import MAX_DEPTH, MAX_FRAME

STREAM = "stream-1"
LIMIT = 2_000


class Colour(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


def outcome(frame: Any, payload: Any, utc: Any, *, checked: bool) -> tuple[Any, ...]:
    fixed_now = datetime(2030, 1, 1, tzinfo=UTC)
    try:
        if checked:
            delta, text = _prepare_checked(frame, payload, utc, STREAM, LIMIT)
        else:
            delta, text = prepare_delta(frame, payload, utc, stream_id=STREAM, max_payload_bytes=LIMIT)
    except InvalidDeltaError as exc:
        return ("refused", str(exc), exc.field)
    # utc=None takes the clock: compare everything but the instant
    return ("ok", delta.frame, delta.utc if utc is not None else fixed_now, delta.payload, text)


def agree(frame: Any, payload: Any, utc: Any = None) -> tuple[Any, ...]:
    fast = outcome(frame, payload, utc, checked=False)
    assert fast == outcome(frame, payload, utc, checked=True), (frame, payload, utc)
    return fast


def deep(depth: int, leaf: Any = 0) -> dict[str, Any]:
    value: Any = leaf
    for _ in range(depth - 2):
        value = [value]
    return {"deep": value}


ODD_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    -float("inf"),
    1e308,
    -0.0,
    2**63,
    2**64,
    -(2**70),
    True,
    None,
    "a\x00b",
    "\\u0000",
    "\ud800",
    "é",
    "",
    (1, 2),
    [],
    {},
    {"k\x00": 1},
    {1: "x"},
    {b"b": 1},
    {None: 1},
    {(1,): 2},
    uuid.UUID(int=7),
    Colour.RED,
    Level.LOW,
    Name("x"),
    {"x": Name("y")},
    OrderedDict(a=1),
    date(2020, 1, 1),
    datetime(2020, 1, 1),
    b"bytes",
    bytearray(b"x"),
    {1, 2},
    object(),
    1.5,
    "x" * 3000,
    deep(MAX_DEPTH),
    deep(MAX_DEPTH + 1),
    deep(MAX_DEPTH, []),
    deep(MAX_DEPTH, [1]),
    deep(MAX_DEPTH - 1, {}),
    deep(MAX_DEPTH + 1, {}),
    deep(300),
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=[f"v{i}" for i in range(len(ODD_VALUES))])
def test_odd_values_get_the_same_answer(value: Any) -> None:
    agree(1, {"x": value})
    agree(1, {"x": [value]})
    if isinstance(value, dict):
        agree(1, value)


@pytest.mark.parametrize(
    "frame", [0, 1, MAX_FRAME, MAX_FRAME + 1, -1, True, 1.0, "1", None, Level.LOW, 2**70]
)
def test_odd_frames_get_the_same_answer(frame: Any) -> None:
    agree(frame, {"a": 1})


@pytest.mark.parametrize(
    "utc",
    [
        datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        datetime(2024, 5, 1, 12, 0),
        datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime.min,
        datetime.max,
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=2))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
        "2024-05-01T12:00:00Z",
        1714564800,
        date(2024, 5, 1),
    ],
)
def test_odd_utcs_get_the_same_answer(utc: Any) -> None:
    agree(1, {"a": 1}, utc)


@pytest.mark.parametrize(
    "payload",
    [
        {"frame": 2},
        {"frame": 1},
        {"frame": True},
        {"frame": "1"},
        {"stream_id": "other"},
        {"stream_id": STREAM},
        {"big": "x" * LIMIT},
        {"big": "é" * (LIMIT // 2)},
        [],
        "text",
        None,
        OrderedDict(a=1),
    ],
)
def test_document_fields_limits_and_shapes_get_the_same_answer(payload: Any) -> None:
    agree(1, payload)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=6), JSON, max_size=5))
def test_random_payloads_get_the_same_answer(payload: dict[str, Any]) -> None:
    agree(3, payload, datetime(2024, 1, 1, tzinfo=UTC))


def test_the_fast_path_takes_the_common_case() -> None:
    payload = {"posts_created": [{"number": 1, "title": "t", "score": 1.5, "draft": False, "tag": None}]}
    assert _prepare_plain(1, payload, datetime(2024, 1, 1, tzinfo=UTC), STREAM, LIMIT) is not None
    assert _prepare_plain(1, payload, None, STREAM, LIMIT) is not None
    # and leaves everything it is not sure of to the checked path
    for odd in ({"x": float("nan")}, {"x": "\x00"}, {"x": (1,)}, {1: 2}, deep(MAX_DEPTH + 1)):
        assert _prepare_plain(1, odd, None, STREAM, LIMIT) is None
