"""The data: a delta, what an insert returns, and a delta ready to send.

The checks they pass are :mod:`dreamcatcher_pg.validation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from .errors import InvalidDeltaError
from .validation import MAX_FRAME, check_json, first_error, is_plain_json, now_utc, to_utc


class Delta(BaseModel):
    """One delta as a worker hands it to :meth:`DeltaClient.insert_delta`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    frame: Annotated[StrictInt, Field(ge=0, le=MAX_FRAME)]
    payload: dict[str, Any]
    utc: datetime | None = None

    @field_validator("utc")
    @classmethod
    def _utc_aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else to_utc(value)


class PreparedDelta(NamedTuple):
    """A validated delta, ready to send: its frame, its utc (filled in) and its payload."""

    frame: int
    utc: datetime
    payload: dict[str, Any]


class InsertStatus(StrEnum):
    """What the log answers for one delta (``append_delta`` / ``append_deltas``)."""

    STORED = "stored"  # new
    DUPLICATE = "duplicate"  # an identical delta was already stored: a retry, nothing written
    DEFERRED = "deferred"  # late, accepted under the world's ``defer`` policy
    CONFLICT = "conflict"  # same key, other payload: refused (DeltaConflictError)
    LATE = "late"  # the frame is closed, policy ``reject``: refused (FrameClosedError)


#: The statuses of an accepted insert (a :class:`Receipt`); the others raise.
ACCEPTED = frozenset({InsertStatus.STORED, InsertStatus.DUPLICATE, InsertStatus.DEFERRED})


class CopyMode(StrEnum):
    """How ``copy_begin`` lets a batch in."""

    COPY = "copy"  # every frame is open: COPY the rows straight into the log
    EXACT = "exact"  # a frame is closed or late: ask append_deltas, the reference, per delta
    DENIED = "denied"  # this role may not COPY: always append_deltas


@dataclass(frozen=True, slots=True)
class Receipt:
    """What an accepted insert returns.

    ``status`` is ``"stored"`` (new), ``"duplicate"`` (an identical delta was
    already stored: a retry, nothing written) or ``"deferred"`` (late, accepted
    under the world's ``defer`` policy: merged into the next frame to merge).
    """

    world: str
    frame: int
    stream_id: str
    utc: datetime
    status: InsertStatus


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """A world's settings, as :func:`~dreamcatcher_pg.configure_world` leaves them."""

    world: str
    expected_streams: list[str]
    late_policy: str  # "reject" or "defer"
    close_after: float  # seconds
    max_frame_ahead: int
    idle_writer_timeout: float  # seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class MergeResult:
    """One merged frame."""

    world: str
    frame: int
    deltas: int
    state_hash: str
    seconds: float  #: the merge transaction, as the merger timed it
    close_to_merged: float  #: from the frame's close to its merge, in the database's clock
    stats: dict[str, Any]


@dataclass
class MergerStats:
    """What one merger did since it started (``Merger.stats``; ``get_stats()`` as a dict)."""

    frames_merged: int = 0
    deltas_merged: int = 0
    frames_closed: int = 0
    quarantined: int = 0
    reconnects: int = 0
    errors: int = 0
    writers_ended: int = 0  #: sessions ended for holding a fence while idle too long
    is_leader: bool = False
    last_frame: int | None = None


@dataclass(frozen=True, slots=True)
class WorldStatus:
    """The facts of one world, as ``dreamcatcher status`` shows them (``--json``: :meth:`to_dict`).

    The fields are documented in docs/operations.md (section 3, ``status --json``).
    """

    world: str
    late_policy: str
    expected_streams: list[str]
    close_after: float  # seconds
    horizon: int | None
    last_merged: int | None
    frames_open: int
    frames_closed: int
    frames_merged: int
    open_frame: int | None  # the lowest open frame
    late_attempts: int
    late_deferred: int
    quarantined: int
    unmerged_keys: dict[str, int]  # delta key -> deltas carrying it, for keys no rule reads
    leader: str | None  # the holder name of the last merger that led
    leader_heartbeat: datetime | None
    heartbeat_age: float | None  # seconds
    merge_lag_frames: int  # closed frames waiting for the merger
    streams_in_open_frame: list[str]
    open_frame_deltas: int
    missing_streams: list[str]  # expected but not in the open frame yet
    last_merged_frame: dict[str, Any] | None  # frame, delta_count, state_hash, merged_at, ...
    merge_lag_seconds: float  # age of the oldest closed frame waiting
    recent_frames: list[dict[str, Any]]  # frame, status, delta_count, close_reason; newest first
    leader_lock_pid: int | None
    leader_alive: bool  # its session still holds the leader lock
    fence_holders: list[dict[str, Any]]  # sessions holding one of the world's fences

    def to_dict(self) -> dict[str, Any]:
        """The fields in order, as ``status --json`` prints them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# -- a delta, checked and ready to send ----------------------------------------------------


def _check_payload_fields(payload: dict[str, Any], frame: int, stream_id: str) -> None:
    doc_frame = payload.get("frame")
    if doc_frame is not None and doc_frame != frame:
        raise InvalidDeltaError(
            f"payload.frame is {doc_frame!r} but the delta is for frame {frame}",
            field="payload.frame",
        )
    doc_stream = payload.get("stream_id")
    if doc_stream is not None and doc_stream != stream_id:
        raise InvalidDeltaError(
            f"payload.stream_id is {doc_stream!r} but this client writes as {stream_id!r}",
            field="payload.stream_id",
        )


def _check_size(raw: bytes, max_payload_bytes: int) -> None:
    if len(raw) > max_payload_bytes:
        raise InvalidDeltaError(
            f"payload is {len(raw)} bytes of JSON, over the limit of {max_payload_bytes}",
            field="payload",
        )


def _prepare_plain(
    frame: Any, payload: Any, utc: Any, stream_id: str, max_payload_bytes: int
) -> tuple[PreparedDelta, str] | None:
    """The fast path of :func:`prepare_delta` for the common case (an int frame, a dict of plain
    JSON values, no utc or a datetime): one walk without paths, one serialisation. None when it
    is not sure the input is valid; the checked path then decides, so both accept exactly the
    same deltas, with the same result."""
    if type(frame) is not int or not 0 <= frame <= MAX_FRAME or type(payload) is not dict:
        return None
    if utc is None:
        utc = now_utc()
    elif type(utc) is not datetime:
        return None
    elif not (utc.tzinfo is UTC and 1 < utc.year < 9999):  # (else it is in UTC, not min nor max)
        try:
            utc = to_utc(utc)
        except ValueError:
            return None
    if not is_plain_json(payload, 1):
        return None
    try:
        raw = orjson.dumps(payload)
    except (orjson.JSONEncodeError, TypeError):
        return None
    if b"\\u0000" in raw:  # a NUL in a string or a key (orjson writes it as \u0000)
        return None
    _check_payload_fields(payload, frame, stream_id)
    _check_size(raw, max_payload_bytes)
    return PreparedDelta(frame, utc, dict(payload)), raw.decode()


def prepare_delta(
    frame: Any,
    payload: Any,
    utc: Any,
    *,
    stream_id: str,
    max_payload_bytes: int,
) -> tuple[PreparedDelta, str]:
    """Validate one delta; return it (utc filled in) with its payload as JSON text."""
    fast = _prepare_plain(frame, payload, utc, stream_id, max_payload_bytes)
    if fast is not None:
        return fast
    return _prepare_checked(frame, payload, utc, stream_id, max_payload_bytes)


def _prepare_checked(
    frame: Any, payload: Any, utc: Any, stream_id: str, max_payload_bytes: int
) -> tuple[PreparedDelta, str]:
    """The reference validation (pydantic, then a walk that names the field in error)."""
    try:
        delta = Delta(frame=frame, payload=payload, utc=utc)
    except ValidationError as exc:
        raise first_error(exc) from None
    check_json(delta.payload)
    _check_payload_fields(delta.payload, delta.frame, stream_id)
    try:
        raw = orjson.dumps(delta.payload)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidDeltaError(f"payload is not serializable as JSON: {exc}", field="payload") from None
    _check_size(raw, max_payload_bytes)
    return PreparedDelta(delta.frame, delta.utc or now_utc(), delta.payload), raw.decode()
