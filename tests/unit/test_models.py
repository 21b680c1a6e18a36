"""Validation at the edge (no database): a bad delta is an InvalidDeltaError naming the field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, DreamcatcherError, InvalidDeltaError
from dreamcatcher_pg.models import Delta, prepare_delta
from dreamcatcher_pg.validation import MAX_DEPTH, MAX_FRAME, validate_identity

LIMIT = 10_000


def prepare(frame: Any, payload: Any, utc: Any = None, *, limit: int = LIMIT) -> Delta:
    delta, _text = prepare_delta(frame, payload, utc, stream_id="stream-1", max_payload_bytes=limit)
    return delta


def refused(frame: Any, payload: Any, utc: Any = None, *, limit: int = LIMIT) -> InvalidDeltaError:
    with pytest.raises(InvalidDeltaError) as info:
        prepare(frame, payload, utc, limit=limit)
    assert isinstance(info.value, DreamcatcherError)
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    return info.value


def nested(depth: int) -> dict[str, Any]:
    """A payload whose deepest value sits at ``depth`` (the payload itself is depth 1)."""
    value: Any = 0
    for _ in range(depth - 2):  # payload (1) > "deep" (2) > ... lists ... > 0 (depth)
        value = [value]
    return {"deep": value}


# -- frame -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [-1, MAX_FRAME + 1, 2**64, True, False, 1.0, 1.5, float("nan"), "1", None],
    ids=["negative", "over-bigint", "2^64", "true", "false", "float-1.0", "float-1.5", "nan", "str", "none"],
)
def test_bad_frame_is_refused_naming_frame(frame: Any) -> None:
    assert refused(frame, {}).field == "frame"


def test_frame_bounds_are_accepted() -> None:
    assert prepare(0, {}).frame == 0
    assert prepare(MAX_FRAME, {}).frame == MAX_FRAME == 2**53 - 1


# -- payload ---------------------------------------------------------------------


@pytest.mark.parametrize("payload", [[], "text", 1, None, [("a", 1)]])
def test_non_dict_payload_is_refused(payload: Any) -> None:
    assert refused(1, payload).field == "payload"


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"x": float("nan")}, "payload.x"),
        ({"x": float("inf")}, "payload.x"),
        ({"x": [1, float("-inf")]}, "payload.x[1]"),
        ({"x": {"y": float("nan")}}, "payload.x.y"),
    ],
)
def test_nan_and_infinity_are_refused(payload: dict[str, Any], field: str) -> None:
    assert refused(1, payload).field == field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"x": "a\x00b"}, "payload.x"),
        ({"x": ["ok", "\x00"]}, "payload.x[1]"),
        ({"a\x00": 1}, "payload"),
        ({"x": {"k\x00": 1}}, "payload.x"),
    ],
)
def test_nul_in_a_string_or_a_key_is_refused(payload: dict[str, Any], field: str) -> None:
    assert refused(1, payload).field == field


@pytest.mark.parametrize(
    "payload",
    [{1: "a"}, {("t",): "a"}, {"x": {2: "b"}}, {"x": [{None: 1}]}],
    ids=["top-int", "top-tuple", "nested-int", "in-list-none"],
)
def test_non_string_keys_are_refused(payload: dict[Any, Any]) -> None:
    err = refused(1, payload)
    assert err.field is not None and err.field.startswith("payload")


def test_nested_key_error_names_its_path() -> None:
    assert refused(1, {"x": {2: "b"}}).field == "payload.x"


def test_nesting_deeper_than_max_depth_is_refused() -> None:
    prepare(1, nested(MAX_DEPTH))  # exactly the limit is fine
    err = refused(1, nested(MAX_DEPTH + 1))
    assert err.field is not None and err.field.startswith("payload.deep")
    err = refused(1, nested(10 * MAX_DEPTH))
    assert err.field is not None and err.field.startswith("payload.deep")


def test_values_that_are_not_json_are_refused() -> None:
    err = refused(1, {"x": object()})
    assert err.field == "payload.x"
    err = refused(1, {"x": {1, 2}})
    assert err.field == "payload.x"


def test_payload_over_the_limit_is_refused() -> None:
    prepare(1, {"x": "a" * 100}, limit=200)
    assert refused(1, {"x": "a" * 300}, limit=200).field == "payload"


def test_payload_limit_counts_bytes_not_characters() -> None:
    # 150 two-byte characters: 158 characters of JSON, 308 bytes
    payload = {"x": "é" * 150}
    assert len(('{"x":"' + "é" * 150 + '"}').encode()) > 200
    assert refused(1, payload, limit=200).field == "payload"


def test_payload_frame_must_match_the_frame() -> None:
    assert refused(5, {"frame": 6}).field == "payload.frame"
    assert refused(5, {"frame": "5"}).field == "payload.frame"
    assert prepare(5, {"frame": 5}).frame == 5


def test_payload_stream_id_must_match_the_client() -> None:
    assert refused(5, {"stream_id": "stream-2"}).field == "payload.stream_id"
    assert prepare(5, {"stream_id": "stream-1"}).payload == {"stream_id": "stream-1"}


def test_prepared_text_is_the_payload_as_json() -> None:
    _delta, text = prepare_delta(1, {"a": [1, "é", None, True]}, None, stream_id="s", max_payload_bytes=LIMIT)
    assert text == '{"a":[1,"é",null,true]}'


# -- world and stream_id -----------------------------------------------------------


@pytest.mark.parametrize(
    ("world", "stream_id", "field"),
    [
        ("", "s", "world"),
        ("w" * 201, "s", "world"),
        ("a\x00b", "s", "world"),
        ("default", "", "stream_id"),
        ("default", "s" * 201, "stream_id"),
        ("default", "s\x00", "stream_id"),
        ("default", 7, "stream_id"),
    ],
)
def test_bad_world_or_stream_id_is_refused(world: Any, stream_id: Any, field: str) -> None:
    with pytest.raises(InvalidDeltaError) as info:
        validate_identity(world, stream_id)
    assert info.value.field == field


def test_names_at_the_length_limit_are_accepted() -> None:
    ident = validate_identity("w" * 200, "s" * 200)
    assert (len(ident.world), len(ident.stream_id)) == (200, 200)


async def test_client_refuses_a_bad_stream_id_before_connecting() -> None:
    # port 1: nothing listens there; validation must fail first, with the field named
    for world, stream_id, field in (("default", "", "stream_id"), ("", "s", "world")):
        with pytest.raises(InvalidDeltaError) as info:
            async with DeltaClient.connect(
                "postgresql://nobody@127.0.0.1:1/none", stream_id=stream_id, world=world
            ):
                pass  # pragma: no cover
        assert info.value.field == field


# -- utc -------------------------------------------------------------------------


def test_naive_utc_is_taken_as_utc() -> None:
    delta = prepare(1, {}, datetime(2024, 5, 1, 12, 30, 15, 123456))
    assert delta.utc == datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert delta.utc is not None and delta.utc.utcoffset() == timedelta(0)


def test_aware_utc_is_converted_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    delta = prepare(1, {}, datetime(2024, 5, 1, 14, 0, tzinfo=plus2))
    assert delta.utc == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert delta.utc is not None and delta.utc.tzinfo == UTC


def test_utc_defaults_to_now() -> None:
    before = datetime.now(UTC)
    delta = prepare(1, {})
    after = datetime.now(UTC)
    assert delta.utc is not None
    assert before <= delta.utc <= after
    assert delta.utc.tzinfo is not None and delta.utc.utcoffset() == timedelta(0)


def test_bad_utc_is_refused() -> None:
    assert refused(1, {}, "not a time").field == "utc"
