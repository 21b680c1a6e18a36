"""Issue 3.4: late deltas under ``reject`` and ``defer``, and what ``dreamcatcher status`` shows.

Under ``reject`` a late delta raises FrameClosedError; under ``defer`` it is accepted,
merged into the next frame to merge, and keeps its original frame in the log. Every late
attempt is recorded (a retry of a deferred delta is a duplicate, not a new attempt), and
``dreamcatcher status --json`` reports ``late_attempts`` and ``late_deferred`` per world.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench.reliability import connection, late, render_table
from dreamcatcher_pg.cli import main

pytestmark = pytest.mark.usefixtures("restore_logging")


async def status_json(dsn: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    """``dreamcatcher --dsn DSN status --json``, in process (in a thread: it runs its own event loop)."""
    capsys.readouterr()
    # exit 3: the scenario's mergers have stopped, so no world has a live leader (see `healthcheck`)
    assert await asyncio.to_thread(main, ["--dsn", dsn, "status", "--json"]) == 5
    worlds = json.loads(capsys.readouterr().out)
    return {w["world"]: w for w in worlds}


async def test_status_counts_rejected_and_deferred_late_deltas(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = await late(dreamcatcher_dsn)
    with capsys.disabled():
        print("\n" + render_table([report]))
    assert report.verdict.ok, report.verdict.problems
    assert report.faults == {"late delta/rejected": 2, "late delta/deferred": 3}

    worlds = await status_json(dreamcatcher_dsn, capsys)
    assert (worlds["late-reject"]["late_attempts"], worlds["late-reject"]["late_deferred"]) == (2, 0)
    assert (worlds["late-defer"]["late_attempts"], worlds["late-defer"]["late_deferred"]) == (3, 3)
    assert worlds["late-reject"]["late_policy"] == "reject"
    assert worlds["late-defer"]["late_policy"] == "defer"

    async with connection(dreamcatcher_dsn) as conn:
        # the deferred deltas keep frame 1 in the log, flagged late, and merged into frame 2
        logged = await conn.fetch(
            "SELECT frame, late FROM dreamcatcher.deltas WHERE world = 'late-defer' AND stream_id = 'slow'"
            " ORDER BY frame, utc"
        )
        assert [(r["frame"], r["late"]) for r in logged] == [(1, True)] * 3 + [(2, False)]
        merged_in = await conn.fetch(
            "SELECT DISTINCT merged_in FROM dreamcatcher.deferred_log WHERE world = 'late-defer'"
        )
        assert [r["merged_in"] for r in merged_in] == [2]
        # the rejected ones are only attempts: recorded, never in the log
        refused = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.deltas WHERE world = 'late-reject' AND stream_id = 'slow'"
            " AND frame = 1"
        )
        assert refused == 0
        attempts = await conn.fetch(
            "SELECT world, policy, count(*) AS n FROM dreamcatcher.late_attempts GROUP BY 1, 2 ORDER BY 1"
        )
        assert [(r["world"], r["policy"], r["n"]) for r in attempts] == [
            ("late-defer", "defer", 3),
            ("late-reject", "reject", 2),
        ]
