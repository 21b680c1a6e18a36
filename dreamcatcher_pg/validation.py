"""The one checker of what enters the log: identity, frames, times and JSON.

Used by the client (before anything reaches PostgreSQL, so a bad delta gets an
:class:`~dreamcatcher_pg.errors.InvalidDeltaError` naming the field and nothing
is written), by ingest (a file that fails is quarantined with the reason) and by
snapshot import. The database enforces the same limits (``sql/schema.sql``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from .errors import InvalidDeltaError

#: The largest frame number: 2^53 - 1, exact in every JSON reader (the database refuses more).
MAX_FRAME = 2**53 - 1
#: The most deltas, and distinct frames, one batch may hold (each frame holds a lock until COMMIT;
#: the database refuses more: dreamcatcher.max_batch_deltas / max_batch_frames).
MAX_BATCH_DELTAS = 10_000
MAX_BATCH_FRAMES = 32
#: Deeper payloads are refused (PostgreSQL and orjson have limits near 250).
MAX_DEPTH = 64

#: The longest world name or stream id, in characters (the database's CHECK says the same).
MAX_NAME_CHARS = 200

Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\x00]+$")]


# -- identity -------------------------------------------------------------------------


class Identity(BaseModel):
    """Who writes: the world and the stream."""

    world: Name
    stream_id: Name


def first_error(exc: ValidationError) -> InvalidDeltaError:
    err = exc.errors()[0]
    field = ".".join(str(part) for part in err["loc"]) or None
    return InvalidDeltaError(f"invalid delta: {field}: {err['msg']}", field=field)


def validate_identity(world: Any, stream_id: Any) -> Identity:
    try:
        return Identity(world=world, stream_id=stream_id)
    except ValidationError as exc:
        raise first_error(exc) from None


def name_problem(name: str, what: str = "stream_id") -> str | None:
    """Why ``name`` cannot be a world name or a stream id, or None."""
    if not name:
        return f"{what} is empty"
    if len(name) > MAX_NAME_CHARS:
        return f"{what} is {len(name)} characters long (the limit is {MAX_NAME_CHARS})"
    if "\x00" in name:
        return f"{what} contains a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode"
    return None


# -- frames and batches -----------------------------------------------------------------


def check_frame(frame: Any, field: str = "frame") -> int:
    """A frame number as the database takes it: an int (not a bool) in 0..2^63-1."""
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame <= MAX_FRAME:
        raise InvalidDeltaError(f"{field} must be an integer in 0..{MAX_FRAME}, not {frame!r}", field=field)
    return frame


def check_batch_limits(frames: list[int]) -> None:
    """Refuse a batch the database would refuse: too many deltas, or too many distinct frames."""
    if len(frames) > MAX_BATCH_DELTAS:
        raise InvalidDeltaError(
            f"a batch holds {len(frames)} deltas, over the limit of {MAX_BATCH_DELTAS}: split it",
            field="deltas",
        )
    spanned = len(set(frames))
    if spanned > MAX_BATCH_FRAMES:
        raise InvalidDeltaError(
            f"a batch spans {spanned} frames, over the limit of {MAX_BATCH_FRAMES}: split it by frame",
            field="deltas",
        )


def batch_bounds(frames: list[int], size: int = MAX_BATCH_DELTAS) -> list[tuple[int, int]]:
    """Split a batch, in its order, into ``(start, end)`` slices that each hold at most ``size``
    deltas and span at most :data:`MAX_BATCH_FRAMES` frames (one call of ``insert_deltas`` each)."""
    size = max(1, min(size, MAX_BATCH_DELTAS))
    bounds: list[tuple[int, int]] = []
    start, spanned = 0, set[int]()
    for index, frame in enumerate(frames):
        if index - start >= size or (frame not in spanned and len(spanned) >= MAX_BATCH_FRAMES):
            bounds.append((start, index))
            start, spanned = index, set()
        spanned.add(frame)
    if start < len(frames):
        bounds.append((start, len(frames)))
    return bounds


# -- times ---------------------------------------------------------------------------


def now_utc() -> datetime:
    """The writer's clock, in UTC, to the microsecond."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC (a naive time is taken as UTC); ValueError for a time no delta has."""
    if value.tzinfo is None:  # a naive time is taken as UTC
        value = value.replace(tzinfo=UTC)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside the calendar once converted to UTC") from None
    if value.replace(tzinfo=None) in (datetime.min, datetime.max):
        # asyncpg sends these as -infinity / infinity: not a time a delta was written at
        raise ValueError("datetime.min and datetime.max are not times a delta can be written at")
    return value


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 string as an aware UTC datetime (naive means UTC); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return to_utc(datetime.fromisoformat(value.strip()))
    except ValueError:
        return None


# -- JSON ------------------------------------------------------------------------------

JsonProblemCode = Literal["too_deep", "nul_text", "nul_key", "key_type", "not_finite", "not_json"]


@dataclass(frozen=True, slots=True)
class JsonProblem:
    """The first thing in a document that JSON or jsonb cannot hold faithfully."""

    code: JsonProblemCode
    path: str
    value: Any

    def message(self) -> str:
        p, v = self.path, self.value
        if self.code == "too_deep":
            return f"{p}: nested deeper than {MAX_DEPTH} levels"
        if self.code == "nul_text":
            return f"{p}: text contains a NUL character"
        if self.code == "nul_key":
            return f"{p}: a key contains a NUL character"
        if self.code == "key_type":
            return f"{p}: key {v!r} is not a string"
        if self.code == "not_finite":
            return f"{p}: {v!r} is not a JSON number"
        return f"{p}: {type(v).__name__} is not JSON"


def json_problem(value: Any, path: str = "payload", depth: int = 1) -> JsonProblem | None:
    """The first problem (in document order) of ``value`` at ``depth``: NaN or an infinity, a NUL
    character, a key that is not a string, a value that is not JSON, nesting past MAX_DEPTH."""
    if depth > MAX_DEPTH:
        return JsonProblem("too_deep", path, value)
    if isinstance(value, str):
        return JsonProblem("nul_text", path, value) if "\x00" in value else None
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else JsonProblem("not_finite", path, value)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return JsonProblem("key_type", path, key)
            if "\x00" in key:
                return JsonProblem("nul_key", path, key)
            problem = json_problem(item, f"{path}.{key}", depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{path}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return JsonProblem("not_json", path, value)


def check_json(value: Any, path: str = "payload") -> None:
    """Raise :class:`InvalidDeltaError` naming the first problem :func:`json_problem` finds."""
    problem = json_problem(value, path)
    if problem is not None:
        raise InvalidDeltaError(problem.message(), field=problem.path)


#: Values the fast path takes as they are (exact types: a subclass takes the checked path).
_PLAIN_SCALARS = frozenset({str, int, bool, type(None)})


def is_plain_json(value: dict[Any, Any] | list[Any], depth: int) -> bool:
    """True when ``value`` (at ``depth``) holds only exact dicts with str keys, lists, str, int,
    bool, None and finite floats, nested at most MAX_DEPTH deep. False means "not sure": the
    caller then runs the detailed check (:func:`json_problem`), which decides and names the field.
    NUL characters are not looked for here: the caller finds them in the JSON text."""
    if depth >= MAX_DEPTH and (depth > MAX_DEPTH or value):
        return False  # (the children of a non-empty container at MAX_DEPTH would be too deep)
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            kind = type(item)
            if kind in _PLAIN_SCALARS:
                continue
            if kind is float:
                if item - item != 0.0:  # NaN or an infinity
                    return False
            elif kind is dict or kind is list:
                if not is_plain_json(item, depth + 1):
                    return False
            else:
                return False
        return True
    # The same loop for a list, spelt out: this is the hot path of every insert (one loop over
    # dict.values() after an all() over the keys measured 20 % slower per delta).
    for item in value:
        kind = type(item)
        if kind in _PLAIN_SCALARS:
            continue
        if kind is float:
            if item - item != 0.0:
                return False
        elif kind is dict or kind is list:
            if not is_plain_json(item, depth + 1):
                return False
        else:
            return False
    return True
