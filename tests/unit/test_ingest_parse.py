"""Parsing delta files for ``dreamcatcher ingest`` (docs/design.md §6): pure, no database."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from dreamcatcher_pg.db.queries import query
from dreamcatcher_pg.ingest import (
    FALLBACK_UTC,
    PREVIEW_CHARS,
    ParsedDelta,
    Unreadable,
    parse_delta_file,
    parse_file_name,
    parse_timestamp,
    read_directory,
)
from dreamcatcher_pg.validation import MAX_FRAME

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"


def ok(name: str, doc: Any) -> ParsedDelta:
    result = parse_delta_file(name, orjson.dumps(doc))
    assert isinstance(result, ParsedDelta), result
    return result


def bad(name: str, data: bytes | Any) -> Unreadable:
    raw = data if isinstance(data, bytes) else orjson.dumps(data)
    result = parse_delta_file(name, raw)
    assert isinstance(result, Unreadable), result
    return result


# -- the file name -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("frame-10-solo.json", (10, "solo")),
        ("frame-138-solo-b.json", (138, "solo-b")),
        ("frame-500-stream-1.json", (500, "stream-1")),
        ("FRAME-7-x.JSON", (7, "x")),
        ("frame-0-a.b.json", (0, "a.b")),
        ("frame-x-solo.json", (None, None)),
        ("frame--1-solo.json", (None, None)),
        ("frame-1-.json", (None, None)),
        ("delta.json", (None, None)),
        (f"frame-{2**63}-solo.json", (None, "solo")),
    ],
)
def test_file_name(name: str, expected: tuple[int | None, str | None]) -> None:
    assert parse_file_name(name) == expected


# -- frame and stream: the document wins, the name is the fallback ------------------------


def test_document_frame_and_stream_win_over_the_name() -> None:
    d = ok("frame-1-name-stream.json", {"frame": 2, "stream_id": "doc-stream", "utc": "2026-01-01T00:00:00Z"})
    assert (d.frame, d.stream_id) == (2, "doc-stream")
    assert any("frame 2" in n and "file name says 1" in n for n in d.notes)
    assert any("doc-stream" in n for n in d.notes)


def test_name_is_the_fallback_when_the_document_has_no_frame_or_stream() -> None:
    d = ok("frame-42-solo.json", {"posts_created": [1]})
    assert (d.frame, d.stream_id) == (42, "solo")
    d = ok("frame-42-solo.json", {"frame": None, "stream_id": None})
    assert (d.frame, d.stream_id) == (42, "solo")


def test_matching_document_and_name_leave_no_note() -> None:
    d = ok("frame-10-solo.json", {"frame": 10, "stream_id": "solo", "utc": "2026-01-01T00:00:00Z"})
    assert d.notes == ()


def test_no_frame_anywhere_is_unreadable() -> None:
    u = bad("delta.json", {"stream_id": "s"})
    assert u.code == "frame" and "no frame" in u.reason
    u = bad("delta.json", {"frame": 3})
    assert u.code == "stream" and "no stream_id" in u.reason


@pytest.mark.parametrize("frame", ["138", " 138 ", 138, 138.0])
def test_frame_as_number_or_numeric_string(frame: Any) -> None:
    assert ok("x.json", {"frame": frame, "stream_id": "s"}).frame == 138


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (-1, "negative"),
        ("-7", "negative"),
        (1.5, "not an integer"),
        ("12a", "not an integer"),
        ("", "not an integer"),
        (True, "not an integer"),
        ([1], "not an integer"),
        ({"n": 1}, "not an integer"),
        (2**63, "too large"),
        (str(2**64), "too large"),
    ],
)
def test_bad_frame_is_unreadable_even_with_a_good_name(frame: Any, words: str) -> None:
    u = bad("frame-5-solo.json", {"frame": frame, "stream_id": "solo"})
    assert u.code == "frame"
    assert words in u.reason
    # what the name says is kept for the quarantine row
    assert (u.frame, u.stream_id) == (5, "solo")


def test_largest_frame_is_readable() -> None:
    assert ok("x.json", {"frame": MAX_FRAME, "stream_id": "s"}).frame == MAX_FRAME


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("s" * 201, "201 characters"),
        (["a"], "not a string"),
        (True, "not a string"),
    ],
)
def test_bad_stream_is_unreadable(stream: Any, words: str) -> None:
    u = bad("frame-5-solo.json", {"frame": 5, "stream_id": stream})
    assert u.code == "stream" and words in u.reason


def test_numeric_stream_id_is_taken_as_text() -> None:
    assert ok("x.json", {"frame": 1, "stream_id": 7}).stream_id == "7"


# -- odd unicode in stream names ------------------------------------------------------


@pytest.mark.parametrize(
    "stream", ["ström-β", "流-1", "🛰️-probe", "\u05e9\u05dc\u05d5\u05dd", "zero\u200bwidth"]
)
def test_unicode_stream_names_from_the_document_and_the_name(stream: str) -> None:
    assert ok("x.json", {"frame": 1, "stream_id": stream}).stream_id == stream
    assert ok(f"frame-1-{stream}.json", {"posts_created": []}).stream_id == stream


def test_stream_from_a_decomposed_file_name_is_nfc() -> None:
    nfd = unicodedata.normalize("NFD", "ström")
    d = ok(f"frame-3-{nfd}.json", {})
    assert d.stream_id == unicodedata.normalize("NFC", "ström")
    # the same stream written composed in the document is no disagreement
    assert not any("stream" in n for n in ok(f"frame-3-{nfd}.json", {"stream_id": "ström"}).notes)


def test_file_name_with_undecodable_bytes_falls_back_cleanly() -> None:
    name = b"frame-4-caf\xe9.json".decode("utf-8", "surrogateescape")
    assert parse_file_name(name) == (4, None)
    assert ok(name, {"stream_id": "cafe"}).stream_id == "cafe"
    assert bad(name, {}).code == "stream"


# -- utc ----------------------------------------------------------------------------


def test_utc_sources_in_order() -> None:
    doc = {
        "utc": "2026-01-01T00:00:00Z",
        "_meta": {"timestamp": "2026-02-01T00:00:00Z"},
        "completed_at": "2026-03-01T00:00:00Z",
    }
    d = ok("frame-1-s.json", doc)
    assert (d.utc, d.utc_source) == (datetime(2026, 1, 1, tzinfo=UTC), "utc")
    del doc["utc"]
    d = ok("frame-1-s.json", doc)
    assert (d.utc, d.utc_source) == (datetime(2026, 2, 1, tzinfo=UTC), "_meta.timestamp")
    del doc["_meta"]
    d = ok("frame-1-s.json", doc)
    assert (d.utc, d.utc_source) == (datetime(2026, 3, 1, tzinfo=UTC), "completed_at")
    del doc["completed_at"]
    d = ok("frame-1-s.json", doc)
    assert (d.utc, d.utc_source) == (FALLBACK_UTC, "fallback")
    assert datetime(1970, 1, 1, tzinfo=UTC) == FALLBACK_UTC
    assert any("no usable utc" in n for n in d.notes)


def test_unparseable_utc_is_skipped_for_the_next_source() -> None:
    d = ok(
        "frame-1-s.json",
        {"utc": "yesterday", "_meta": "not an object", "completed_at": "2026-03-19T03:18:41Z"},
    )
    assert (d.utc, d.utc_source) == (datetime(2026, 3, 19, 3, 18, 41, tzinfo=UTC), "completed_at")
    assert any("'yesterday'" in n for n in d.notes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-19T03:18:41Z", datetime(2026, 3, 19, 3, 18, 41, tzinfo=UTC)),
        ("2026-03-19T03:18:41", datetime(2026, 3, 19, 3, 18, 41, tzinfo=UTC)),  # naive: UTC
        ("2026-03-19T05:18:41+02:00", datetime(2026, 3, 19, 3, 18, 41, tzinfo=UTC)),
        ("2026-03-19T03:18:41.123456789Z", datetime(2026, 3, 19, 3, 18, 41, 123456, tzinfo=UTC)),
        ("2026-03-19", datetime(2026, 3, 19, tzinfo=UTC)),
        ("nope", None),
        (1700000000, None),
        ("", None),
    ],
)
def test_parse_timestamp(text: Any, expected: datetime | None) -> None:
    got = parse_timestamp(text)
    assert got == expected
    if got is not None:
        assert got.utcoffset() == timedelta(0)


def test_utc_keeps_microseconds_and_is_aware() -> None:
    d = ok("frame-1-s.json", {"utc": "2026-01-01T00:00:00.000001-01:00"})
    assert d.utc == datetime(2026, 1, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert d.utc.tzinfo is not None


# -- the payload ------------------------------------------------------------------------


def test_payload_is_the_whole_document_as_is() -> None:
    doc = {
        "frame": "9",
        "stream_id": "s",
        "_meta": {"timestamp": "2026-01-01T00:00:00Z"},
        "posts_created": [1],
    }
    assert ok("frame-9-s.json", doc).payload == doc


def test_utf8_bom_is_accepted() -> None:
    d = parse_delta_file("frame-1-s.json", b"\xef\xbb\xbf" + orjson.dumps({"posts_created": [1]}))
    assert isinstance(d, ParsedDelta) and d.payload == {"posts_created": [1]}


# -- unreadable files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "empty", "empty"),
        (b"  \n\t", "empty", "whitespace"),
        (b"not json at all", "not_json", "not valid JSON"),
        (b'{"frame": 1,', "not_json", "not valid JSON"),
        (b'{"a": NaN}', "not_json", "not valid JSON"),
        (b'{"a": "\\ud800"}', "not_json", "not valid JSON"),
        (b"[1, 2, 3]", "not_object", "an array"),
        (b'"frame-1"', "not_object", "a string"),
        (b"42", "not_object", "a number"),
        (b"null", "not_object", "null"),
        (b'{"a": "x\x00y"}', "nul", "NUL"),
        (b'{"a": "x\\u0000y"}', "nul", "NUL"),
        (b'{"a\\u0000": 1}', "nul", "NUL"),
        (b'{"a": "caf\xe9"}', "not_utf8", "UTF-8"),
        (b"\xff\xfe{\x00}\x00", "not_utf8", "UTF-8"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "too_deep", "deeper"),
    ],
)
def test_unreadable_files_say_why(data: bytes, code: str, words: str) -> None:
    u = bad("frame-3-solo.json", data)
    assert (u.code, u.frame, u.stream_id, u.size) == (code, 3, "solo", len(data))
    assert words in u.reason


def test_unreadable_text_preview() -> None:
    text = "x" * (PREVIEW_CHARS + 50)
    u = bad("frame-1-s.json", text.encode())
    assert u.text == "x" * PREVIEW_CHARS
    assert bad("frame-1-s.json", b"a\x00b").text == "a\ufffdb"  # jsonb cannot hold U+0000
    assert bad("frame-1-s.json", b"\xff\xfe").text is None  # not decodable: no text
    assert bad("frame-1-s.json", b"").text is None


def test_too_large_file_is_unreadable() -> None:
    u = parse_delta_file("frame-1-s.json", b'{"a": "' + b"x" * 100 + b'"}', max_bytes=50)
    assert isinstance(u, Unreadable) and u.code == "too_large"


# -- the corpus and the directory -----------------------------------------------------------


def test_every_corpus_file_parses() -> None:
    results, seen, ignored = read_directory(CORPUS)
    assert (seen, ignored) == (7, 1)  # README.md is ignored
    assert all(isinstance(r, ParsedDelta) for r in results)
    parsed = [r for r in results if isinstance(r, ParsedDelta)]
    assert [(p.frame, p.stream_id) for p in parsed] == [
        (10, "solo"),
        (108, "solo"),
        (138, "solo-b"),
        (138, "solo"),
        (500, "stream-1"),
        (520, "solo"),
    ]
    assert {p.utc_source for p in parsed} == {"completed_at"}
    assert parsed[2].utc == parsed[3].utc  # the two frame-138 deltas share a timestamp


def test_read_directory_is_sorted_flat_and_counts_ignored(tmp_path: Path) -> None:
    (tmp_path / "frame-2-b.json").write_text("{}")
    (tmp_path / "frame-1-a.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub.json").mkdir()  # a directory, even one named *.json, is not a file
    (tmp_path / "sub.json" / "frame-3-c.json").write_text("{}")
    progress: list[tuple[int, int]] = []
    results, seen, ignored = read_directory(tmp_path, on_progress=lambda d, t: progress.append((d, t)))
    assert [r.file for r in results] == ["frame-1-a.json", "frame-2-b.json"]
    assert (seen, ignored) == (4, 2)
    assert progress == [(1, 2), (2, 2)]


def test_read_directory_refuses_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        read_directory(tmp_path / "missing")


def test_ingest_queries_load() -> None:
    for name in (
        "ingest_quarantine",
        "ingest_frames",
        "ingest_blocking_frame",
        "append_deltas",
        "close_frame",
    ):
        assert query(name)
