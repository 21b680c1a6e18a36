"""Appending to the log: a batch by COPY, and what the log's answers mean.

:func:`copy_batch` is the fast path of :meth:`DeltaClient.insert_deltas`: one
transaction where ``copy_begin`` takes the fence of every frame of the batch and
checks they are open, then COPY writes the rows (several times cheaper for the
server than an INSERT ... SELECT of the same rows). :func:`receipt` turns one
answer of the log into a :class:`Receipt` or the error it stands for.
"""

from __future__ import annotations

from typing import cast

import asyncpg

from .db.queries import query
from .errors import DeltaConflictError, DreamcatcherError, FrameClosedError
from .models import ACCEPTED, CopyMode, InsertStatus, PreparedDelta, Receipt

#: The columns a batch COPYs into dreamcatcher.delta_log (the others take their defaults).
COPY_COLUMNS = ("world", "frame", "stream_id", "utc", "payload")


async def copy_batch(
    conn: asyncpg.Connection, world: str, stream_id: str, prepared: list[tuple[PreparedDelta, str]]
) -> list[str] | CopyMode:
    """Append a batch by COPY: the statuses, or :data:`CopyMode.DENIED` when this role may not.

    When a frame of the batch is closed or late, the fence is held already: the statuses
    are append_deltas' (the reference), so the COPY path only ever answers "stored" for every
    row. Driver errors (a key already stored or repeated in the batch, a merge passing a
    frame, no right to INSERT) are the caller's to handle.
    """
    frames = [d.frame for d, _ in prepared]
    async with conn.transaction(isolation="read_committed"):
        mode = await conn.fetchval(query("copy_begin"), world, stream_id, list(set(frames)))
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
