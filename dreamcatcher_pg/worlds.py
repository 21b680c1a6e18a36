"""A world's settings: expected streams, late policy, close deadline and the writer limits.

:func:`configure_world` is public (``from dreamcatcher_pg import configure_world``);
:meth:`DeltaClient.configure_world` calls it for the client's own world.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import asyncpg

from .db.queries import query
from .errors import DRIVER_ERRORS, InvalidDeltaError, map_db_error
from .models import WorldConfig
from .validation import check_frame


async def configure_world(
    executor: asyncpg.Pool | asyncpg.Connection,
    world: str,
    *,
    expected_streams: list[str] | None = None,
    late_policy: str | None = None,
    close_after: float | timedelta | None = None,
    max_frame_ahead: int | None = None,
    idle_writer_timeout: float | timedelta | None = None,
) -> WorldConfig:
    """Create or update a world's configuration; None leaves a setting as it is.

    ``max_frame_ahead``: a new frame more than this many frames above the last merged one is
    refused (default 10,000,000). ``idle_writer_timeout``: the merger ends a session that holds
    one of the world's fences while idle this long (seconds, default 30).
    """
    args = configure_world_args(
        world,
        expected_streams=expected_streams,
        late_policy=late_policy,
        close_after=close_after,
        max_frame_ahead=max_frame_ahead,
        idle_writer_timeout=idle_writer_timeout,
    )
    try:
        row = await executor.fetchrow(query("configure_world"), *args)
    except DRIVER_ERRORS as exc:
        raise map_db_error(exc) from exc
    assert row is not None
    return world_config(row)


def world_config(row: Mapping[str, Any] | asyncpg.Record) -> WorldConfig:
    """The settings of a world, from a row of the ``configure_world`` query."""
    return WorldConfig(**{**dict(row), "expected_streams": list(row["expected_streams"] or [])})


def configure_world_args(
    world: str,
    *,
    expected_streams: list[str] | None,
    late_policy: str | None,
    close_after: float | timedelta | None,
    max_frame_ahead: int | None,
    idle_writer_timeout: float | timedelta | None,
) -> tuple[Any, ...]:
    """The checked arguments of the ``configure_world`` query (shared by both clients)."""
    if late_policy is not None and late_policy not in ("reject", "defer"):
        raise InvalidDeltaError("late_policy must be 'reject' or 'defer'", field="late_policy")
    if max_frame_ahead is not None:
        check_frame(max_frame_ahead, "max_frame_ahead")
        if max_frame_ahead < 1:
            raise InvalidDeltaError("max_frame_ahead must be at least 1", field="max_frame_ahead")
    interval = _interval(close_after, "close_after")
    idle = _interval(idle_writer_timeout, "idle_writer_timeout")
    return (world, expected_streams, late_policy, interval, max_frame_ahead, idle)


def _interval(value: float | timedelta | None, field: str) -> timedelta | None:
    """A positive number of seconds (or a timedelta) as a timedelta; None stays None."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not 0 < seconds < 10**9:
        raise InvalidDeltaError(f"{field} must be a positive number of seconds, not {value!r}", field=field)
    return timedelta(seconds=seconds)
