"""Issue 12, as a reliability scenario: ``python -m bench.reliability``'s "hostile writer" row.

Every attack that used to stall a world is tried in turn against one world while a bystander
world is merged by the same process: no world stalls, nothing acknowledged is lost, nothing
that should be refused gets in (bench/hostile.py).
"""

from __future__ import annotations

from bench.hostile import ATTACKS, hostile
from bench.reliability import render_table


async def test_a_hostile_writer_stalls_no_world_and_loses_nothing(dreamcatcher_dsn: str) -> None:
    report = await hostile(dreamcatcher_dsn)
    print(render_table([report]))
    assert report.verdict.problems == []
    assert report.ok
    assert report.faults == {"hostile attack": len(ATTACKS)} and len(ATTACKS) >= 16
    assert report.stalled == 0
    assert report.verdict.lost == 0 and report.verdict.doubled == 0
    assert report.verdict.acked == report.verdict.merged > len(ATTACKS)
    # the idle writer and the lock taken by hand were ended by the merger, not waited out
    assert report.notes["writers_ended"] >= 2
    assert report.verdict.hashes_compared > 0 and report.verdict.hash_mismatches == 0
