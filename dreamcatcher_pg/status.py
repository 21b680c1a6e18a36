"""What ``dreamcatcher status`` shows: one row of facts per world."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from rich.table import Table

from .queries import query


async def collect_status(dsn: str, world: str | None = None) -> list[dict[str, Any]]:
    """Facts per world: frames by status, lag, streams in the open frame, late, quarantine, leader."""
    conn = await asyncpg.connect(dsn)
    try:
        worlds = []
        for row in await conn.fetch(query("world_status"), world):
            doc = dict(row)
            doc["unmerged_keys"] = orjson.loads(doc["unmerged_keys"])
            doc["merge_lag_frames"] = doc["frames_closed"]
            doc["streams_in_open_frame"] = []
            doc["open_frame_deltas"] = 0
            if doc["open_frame"] is not None:
                streams = await conn.fetchrow(query("open_frame_streams"), doc["world"], doc["open_frame"])
                assert streams is not None
                doc["streams_in_open_frame"] = list(streams["streams"] or [])
                doc["open_frame_deltas"] = streams["deltas"]
            worlds.append(doc)
        return worlds
    finally:
        await conn.close()


def render_status(worlds: list[dict[str, Any]]) -> Table:
    table = Table(title="dreamcatcher worlds")
    for column in (
        "world", "open", "closed", "merged", "last merged", "lag",
        "open frame: streams (expected)", "late", "quarantined", "unmerged keys", "leader",
    ):  # fmt: skip
        table.add_column(column)
    for w in worlds:
        expected = w["expected_streams"] or []
        streams = w["streams_in_open_frame"]
        open_desc = "-"
        if w["open_frame"] is not None:
            open_desc = f"#{w['open_frame']}: {len(streams)}" + (f"/{len(expected)}" if expected else "")
            open_desc += f" ({w['open_frame_deltas']} deltas)"
        leader = "-"
        if w["leader"]:
            leader = f"{w['leader']} ({w['heartbeat_age']:.0f}s ago)"
        keys = ", ".join(f"{k} x{n}" for k, n in sorted(w["unmerged_keys"].items())) or "-"
        table.add_row(
            w["world"], str(w["frames_open"]), str(w["frames_closed"]), str(w["frames_merged"]),
            "-" if w["last_merged"] is None else str(w["last_merged"]), str(w["merge_lag_frames"]),
            open_desc, f"{w['late_attempts']} ({w['late_deferred']} deferred)", str(w["quarantined"]),
            keys if len(keys) < 60 else keys[:57] + "...", leader,
        )  # fmt: skip
    return table
