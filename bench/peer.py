"""peer: the same single-insert load through the ``eventsourcing`` library, when it is installed.

It is never installed for the benchmark; without it the row says so.
"""

from __future__ import annotations

import importlib.util

from bench.context import Context
from bench.report import Row, skipped


async def bench_peer(ctx: Context) -> list[Row]:
    if importlib.util.find_spec("eventsourcing") is None:
        return [skipped("peer", "eventsourcing not installed")]
    # A comparison needs the eventsourcing PostgreSQL recorder set up on the same
    # server; until someone writes it, say so instead of guessing a number.
    return [skipped("peer", "eventsourcing is installed but the peer benchmark is not written yet")]
