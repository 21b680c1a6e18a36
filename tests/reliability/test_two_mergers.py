"""Issue 3.2: two mergers on one world; the leader SIGKILLed, the standby takes over by itself.

Both mergers are subprocesses (``python -m dreamcatcher_pg merger``). A test-side trigger
records the backend of every committed merge: only one merger merges at a time, so each
backend's merges form ONE unbroken period, and a new period starts only after a kill.
Takeover time (SIGKILL -> the standby's heartbeat as leader) is measured and printed,
never asserted.
"""

from __future__ import annotations

import pytest

from bench.reliability import SIZES, render_table, two_mergers


@pytest.mark.slow
async def test_the_standby_takes_over_when_the_leader_is_killed(
    dreamcatcher_dsn: str, long_run: bool
) -> None:
    kills = SIZES[long_run]["two_mergers"]["kills"]
    report = await two_mergers(dreamcatcher_dsn, kills=kills)
    takeovers = ", ".join(f"{s * 1000:.0f} ms" for s in report.takeover_s)
    first_merges = ", ".join(f"{s * 1000:.0f} ms" for s in report.notes["first merge after kill s"])
    print(
        "\n" + render_table([report]),
        f"\ntakeover (SIGKILL -> standby leads): {takeovers}; -> its first merge: {first_merges}",
    )
    v = report.verdict
    assert v.ok, f"seed={report.seed}: {v.problems}"
    assert report.faults["leader SIGKILL"] == kills
    assert len(report.takeover_s) == kills  # the standby took over every time, by itself
    periods = report.notes["merge periods (backend pids)"]
    assert len(periods) == len(set(periods)) == kills + 1, periods  # one merger at a time
    assert (v.lost, v.doubled, v.phantom, v.frames_merged_twice, v.hash_mismatches) == (0, 0, 0, 0, 0)
    assert v.acked == v.merged > 0
