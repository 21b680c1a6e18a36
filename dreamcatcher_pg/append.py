"""Appending to the log: a batch by COPY, and what the log's answers mean.

:func:`copy_batch` is the fast path of :meth:`DeltaClient.insert_deltas`: one
transaction where ``copy_begin`` takes the fence of every frame of the batch and
checks they are open, then COPY writes the rows (several times cheaper for the
server than an INSERT ... SELECT of the same rows). :func:`receipt` turns one
answer of the log into a :class:`Receipt` or the error it stands for. Both clients
(async and sync) share what is here, whatever their driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import asyncpg

from .db.queries import query
from .errors import DeltaConflictError, DreamcatcherError, FrameClosedError, InvalidDeltaError
from .models import ACCEPTED, CopyMode, InsertStatus, PreparedDelta, Receipt, prepare_delta
from .validation import check_batch_limits

#: The columns a batch COPYs into dreamcatcher.delta_log (the others take their defaults).
COPY_COLUMNS = ("world", "frame", "stream_id", "utc", "payload")


class SeenFrames:
    """The frames a client knows to have their row in ``frame_log`` (a row is never removed).

    A batch whose frame has no row yet would make it in its own transaction, and every other
    writer of that frame would wait for that transaction's COMMIT: the client first makes the
    rows in a short transaction of their own (``open_frames``), once per frame. Bounded: when it
    holds :attr:`LIMIT` frames it starts again (a forgotten frame costs one more round trip).
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self._frames: set[int] = set()

    def unseen(self, frames: list[int]) -> bool:
        """True when one of ``frames`` (distinct) may have no row yet."""
        return not self._frames.issuperset(frames)

    def add(self, frames: list[int]) -> None:
        if len(self._frames) + len(frames) > self.LIMIT:
            self._frames.clear()
        self._frames.update(frames)


#: SQLSTATEs of a failed ``append_open`` that leave the delta to ``append_delta``, the reference:
#: the key is stored already (it answers duplicate or conflict); and, from then on, this session
#: may not call it (a worker of ``init --roles``) or the function is not there.
OPEN_FALLBACK = frozenset({"23505", "42501", "42883"})
OPEN_NEVER_AGAIN = frozenset({"42501", "42883"})


async def copy_batch(
    conn: asyncpg.Connection,
    world: str,
    stream_id: str,
    prepared: list[tuple[PreparedDelta, str]],
    seen: SeenFrames,
) -> list[str] | CopyMode:
    """Append a batch by COPY: the statuses, or :data:`CopyMode.DENIED` when this role may not.

    A frame not in ``seen`` gets its row first, in a transaction of its own (``open_frames``).

    When a frame of the batch is closed or late, the fence is held already: the statuses
    are append_deltas' (the reference), so the COPY path only ever answers "stored" for every
    row. Driver errors (a key already stored or repeated in the batch, a merge passing a
    frame, no right to INSERT) are the caller's to handle.
    """
    frames = [d.frame for d, _ in prepared]
    distinct = list(set(frames))
    if seen.unseen(distinct):
        await conn.fetchval(query("open_frames"), world, distinct)
        seen.add(distinct)
    async with conn.transaction(isolation="read_committed"):
        mode = await conn.fetchval(query("copy_begin"), world, stream_id, distinct)
        if mode == CopyMode.COPY:
            await conn.copy_records_to_table(
                "delta_log",
                schema_name="dreamcatcher",
                columns=COPY_COLUMNS,
                records=[(world, d.frame, stream_id, d.utc, text) for d, text in prepared],
            )
            return [InsertStatus.STORED] * len(prepared)
        if mode == CopyMode.EXACT:  # a frame is closed or late: the fence is held, ask the reference
            utcs, texts = [d.utc for d, _ in prepared], [t for _, t in prepared]
            statuses = await conn.fetchval(query("append_deltas"), world, stream_id, frames, utcs, texts)
            return cast(list[str], statuses)
        return CopyMode.DENIED


def receipt(world: str, stream_id: str, delta: PreparedDelta, status: str) -> Receipt:
    """The receipt of an accepted insert; the error of a refused one."""
    key = (world, delta.frame, stream_id, delta.utc)
    if status in ACCEPTED:
        return Receipt(world, delta.frame, stream_id, delta.utc, InsertStatus(status))
    if status == InsertStatus.CONFLICT:
        raise DeltaConflictError(
            f"a different delta is already stored under {key!r}; deltas are never overwritten",
            key=key,
        )
    if status == InsertStatus.LATE:
        raise FrameClosedError(
            f"frame {delta.frame} of world {world!r} is closed; the delta from "
            f"{stream_id!r} was refused (the attempt is recorded in dreamcatcher.late_attempts)",
            world=world,
            frame=delta.frame,
            stream_id=stream_id,
        )
    raise DreamcatcherError(f"unexpected insert status {status!r} for {key!r}")


#: The keys of an item of insert_deltas.
_ITEM_KEYS = frozenset({"frame", "payload", "utc"})


def prepare_batch(
    deltas: Iterable[Mapping[str, Any]], stream_id: str, limit: int
) -> list[tuple[PreparedDelta, str]]:
    """Validate every item of a batch (``{"frame", "payload", "utc"?}``) and its limits; the
    first invalid one raises :class:`InvalidDeltaError` before anything is sent."""
    prepared: list[tuple[PreparedDelta, str]] = []
    for index, item in enumerate(deltas):
        if type(item) is not dict and not isinstance(item, Mapping):
            raise InvalidDeltaError(f"deltas[{index}] is not a mapping", field=f"deltas[{index}]")
        if not _ITEM_KEYS.issuperset(item):
            extra = set(item) - _ITEM_KEYS
            raise InvalidDeltaError(
                f"deltas[{index}] has unknown keys {sorted(extra)}", field=f"deltas[{index}]"
            )
        prepared.append(
            prepare_delta(
                item.get("frame"),
                item.get("payload"),
                item.get("utc"),
                stream_id=stream_id,
                max_payload_bytes=limit,
            )
        )
    if prepared:
        check_batch_limits([d.frame for d, _ in prepared])
    return prepared


def batch_receipts(
    world: str, stream_id: str, prepared: list[tuple[PreparedDelta, str]], statuses: list[str]
) -> list[Receipt]:
    """The receipts of a batch; the first refused item raises its error, whose ``receipts``
    attribute lists the items accepted before and after it."""
    stored = InsertStatus.STORED
    if len(statuses) == len(prepared) and all(s == stored for s in statuses):  # the common case
        return [Receipt(world, d.frame, stream_id, d.utc, stored) for d, _ in prepared]
    receipts: list[Receipt] = []
    first_error: DreamcatcherError | None = None
    for (delta, _), status in zip(prepared, statuses, strict=True):
        try:
            receipts.append(receipt(world, stream_id, delta, status))
        except DreamcatcherError as exc:
            first_error = first_error or exc
    if first_error is not None:
        first_error.receipts = receipts  # type: ignore[attr-defined]
        raise first_error
    return receipts


def is_merged(world: str, frame: int, row: Mapping[str, Any] | None) -> bool:
    """From a ``frame_status`` row: True once ``frame`` is merged; :class:`FrameClosedError` when
    it never will be (no deltas, below the merged frames); False while it may still be."""
    if row is not None and row["status"] == "merged":
        return True
    below_horizon = row is not None and row["horizon"] is not None and frame <= row["horizon"]
    if below_horizon and row is not None and row["status"] is None:
        raise FrameClosedError(
            f"frame {frame} of world {world!r} has no deltas and lies below the "
            "merged frames; it will never be merged",
            world=world,
            frame=frame,
        )
    return False


def next_wait(
    world: str,
    frame: int,
    timeout: float | None,
    deadline: float | None,
    now: float,
    poll: float,
    lost: BaseException | None,
) -> float:
    """``wait_merged``'s next wait for a NOTIFY before it looks again: ``poll``, or what is left
    before ``deadline``; :class:`TimeoutError` once past it (caused by ``lost``, the connection
    error of the last look, if any)."""
    if deadline is None:
        return poll
    remaining = deadline - now
    if remaining <= 0:
        raise TimeoutError(f"frame {frame} of world {world!r} not merged within {timeout}s") from lost
    return min(poll, remaining)
