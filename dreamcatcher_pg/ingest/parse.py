"""Reading delta files written by a fleet: one file name and its bytes become a delta (pure).

Real fleets write one file per delta, named ``frame-<N>-<stream>.json``, in
shapes that vary (docs/design.md §6). Three layers:

* :func:`parse_delta_file` — pure: a file name and its bytes become either a
  :class:`ParsedDelta` or an :class:`Unreadable` with its reason. No I/O.
* :func:`~.load.read_directory` and :func:`~.load.ingest_directory` — the I/O
  (:mod:`.load`): read the directory, append every readable delta with
  ``dreamcatcher.append_deltas`` (one batch per stream), quarantine what cannot
  be stored, close the ingested frames and merge them.
* the command, the only part that prints: :mod:`dreamcatcher_pg.cli.ingest`.

Rules of the envelope:

* ``frame`` and ``stream_id`` come from the document; the file name is only the
  fallback when they are missing (``null`` counts as missing). A document that
  disagrees with its file name wins, and the disagreement is logged and noted.
  ``frame`` may be a string of digits; a negative, non-integer or too large
  frame makes the file unreadable. A stream taken from the file name is
  NFC-normalised (macOS file systems hand out decomposed names).
* ``utc`` (the delta's identity clock) comes from the document's ``utc``, else
  ``_meta.timestamp``, else ``completed_at`` (ISO 8601, ``Z`` allowed, a naive
  time is UTC; a value that does not parse is skipped with a note). When none
  is usable it is :data:`FALLBACK_UTC`, the Unix epoch: fixed and
  deterministic, so a re-ingest finds the same key. Never the file's mtime.
* The stored payload is the whole document as it is; the merge ignores the
  envelope keys.

The walk is not recursive: the directory's entries are taken in sorted name
order, and anything that is not a regular ``*.json`` file (suffix in any case)
is ignored and counted. When two files hold the same (frame, stream, utc) with
different payloads, the first in name order is stored and the other is a
conflict, quarantined with its payload.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..settings import DEFAULT_MAX_PAYLOAD_BYTES
from ..validation import MAX_DEPTH, MAX_FRAME, json_problem, name_problem, parse_timestamp

log = logging.getLogger(__name__)

#: The ``utc`` of a delta whose document carries no usable timestamp.
FALLBACK_UTC = datetime(1970, 1, 1, tzinfo=UTC)
#: Where ``utc`` is looked for, in order.
UTC_SOURCES = ("utc", "_meta.timestamp", "completed_at")
#: How much of an unreadable file's text goes into its quarantine row.
PREVIEW_CHARS = 1000

_FILE_NAME = re.compile(r"frame-([0-9]+)-(.+)\.json", re.IGNORECASE | re.DOTALL)
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class ParsedDelta:
    """A readable delta file: world-independent, ready to append."""

    file: str
    frame: int
    stream_id: str
    utc: datetime
    utc_source: str  # one of UTC_SOURCES, or "fallback"
    payload: dict[str, Any]
    notes: tuple[str, ...] = ()
    #: the document as written (stored as it is: jsonb keeps numbers orjson would round)
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file that cannot become a delta. ``frame``/``stream_id`` come from its name, if it matches."""

    file: str
    #: empty | too_large | not_utf8 | nul | not_json | not_object | too_deep | frame | stream | io | rejected
    code: str
    reason: str
    frame: int | None = None
    stream_id: str | None = None
    text: str | None = None  # the first PREVIEW_CHARS characters, when the bytes decode
    size: int = 0


# -- parsing (pure) -------------------------------------------------------------


def parse_file_name(name: str) -> tuple[int | None, str | None]:
    """``frame-<N>-<stream>.json`` -> (N, stream); None for what the name does not give."""
    match = _FILE_NAME.fullmatch(name)
    if match is None:
        return None, None
    frame = int(match.group(1))
    stream = unicodedata.normalize("NFC", match.group(2))
    return (frame if frame <= MAX_FRAME else None), (stream if _stream_problem(stream) is None else None)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_frame(value: Any) -> int | str:
    """The frame, or why it is unreadable."""
    if isinstance(value, bool):
        return f"frame {value!r} is not an integer"
    if isinstance(value, float):
        if not value.is_integer():
            return f"frame {_short(value)} is not an integer"
        value = int(value)
    elif isinstance(value, str):
        if not _DIGITS.fullmatch(value.strip()):
            body = value.strip()
            if body.startswith("-") and _DIGITS.fullmatch(body[1:]):
                return f"frame {_short(value)} is negative"
            return f"frame {_short(value)} is not an integer"
        value = int(value.strip())
    if not isinstance(value, int):
        return f"frame {_short(value)} is not an integer"
    if value < 0:
        return f"frame {value} is negative"
    if value > MAX_FRAME:
        return f"frame {value} is too large (the largest is {MAX_FRAME})"
    return value


def _stream_problem(stream: str) -> str | None:
    if not stream.strip():
        return "stream_id is empty"
    return name_problem(stream, "stream_id")


#: How a document's JSON problem reads in the quarantine (a parsed document has only these two).
_JSON_REASONS = {
    "too_deep": ("too_deep", f"the document is nested deeper than {MAX_DEPTH} levels"),
    "nul_text": ("nul", "the document contains a NUL character (\\u0000), which jsonb cannot store"),
    "nul_key": ("nul", "a key contains a NUL character (\\u0000), which jsonb cannot store"),
}


def _json_problem(doc: dict[str, Any]) -> tuple[str, str] | None:
    """What PostgreSQL jsonb cannot hold: U+0000 (``\\u0000`` escapes) and very deep nesting."""
    problem = json_problem(doc, "document")
    if problem is None:
        return None
    return _JSON_REASONS.get(problem.code, ("not_json", problem.message()))


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def parse_delta_file(
    name: str, data: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> ParsedDelta | Unreadable:
    """Turn one delta file into a :class:`ParsedDelta`, or say why it is :class:`Unreadable`."""
    name_frame, name_stream = parse_file_name(name)
    preview: str | None = None

    def unreadable(code: str, reason: str) -> Unreadable:
        return Unreadable(name, code, reason, name_frame, name_stream, preview, len(data))

    if len(data) > max_bytes:
        return unreadable("too_large", f"the file is {len(data)} bytes, over the limit of {max_bytes}")
    if not data.strip():
        return unreadable("empty", "the file is empty" if not data else "the file holds only whitespace")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        return unreadable("not_utf8", f"not valid UTF-8: {exc.reason} at byte {exc.start}")
    preview = text[:PREVIEW_CHARS].replace("\x00", "\ufffd")
    if "\x00" in text:
        return unreadable("nul", "the file contains a NUL byte, which jsonb cannot store")
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return unreadable("not_json", f"not valid JSON: {exc}")
    if not isinstance(doc, dict):
        return unreadable("not_object", f"the document is {_json_kind(doc)}, not a JSON object")
    problem = _json_problem(doc)
    if problem is not None:
        return unreadable(*problem)

    notes: list[str] = []
    if doc.get("frame") is None:
        if name_frame is None:
            return unreadable(
                "frame", "the document has no frame and the file name is not frame-<N>-<stream>.json"
            )
        frame = name_frame
    else:
        read = _read_frame(doc["frame"])
        if isinstance(read, str):
            return unreadable("frame", read)
        frame = read
        if name_frame is not None and name_frame != frame:
            notes.append(
                f"the document says frame {frame}, the file name says {name_frame}: the document wins"
            )

    raw_stream = doc.get("stream_id")
    if raw_stream is None:
        if name_stream is None:
            return unreadable("stream", "the document has no stream_id and the file name gives none")
        stream = name_stream
    else:
        if isinstance(raw_stream, int) and not isinstance(raw_stream, bool):
            raw_stream = str(raw_stream)
        if not isinstance(raw_stream, str):
            return unreadable("stream", f"stream_id {_short(raw_stream)} is not a string")
        stream_problem = _stream_problem(raw_stream)
        if stream_problem is not None:
            return unreadable("stream", stream_problem)
        stream = raw_stream
        if name_stream is not None and unicodedata.normalize("NFC", stream) != name_stream:
            notes.append(
                f"the document says stream {stream!r}, the file name says {name_stream!r}: the document wins"
            )

    meta = doc.get("_meta")
    candidates = (
        ("utc", doc.get("utc")),
        ("_meta.timestamp", meta.get("timestamp") if isinstance(meta, dict) else None),
        ("completed_at", doc.get("completed_at")),
    )
    utc, utc_source = FALLBACK_UTC, "fallback"
    for source, value in candidates:
        if value is None:
            continue
        parsed = parse_timestamp(value)
        if parsed is None:
            notes.append(f"{source} {_short(value)} is not an ISO 8601 timestamp; ignored")
            continue
        utc, utc_source = parsed, source
        break
    if utc_source == "fallback":
        notes.append(f"no usable utc, _meta.timestamp or completed_at: utc is {FALLBACK_UTC.isoformat()}")
    return ParsedDelta(name, frame, stream, utc, utc_source, doc, tuple(notes), text)
