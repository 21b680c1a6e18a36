"""Issue 3.7: a soak, bounded in time: 64 concurrent writers racing frame closes.

8 clients x 8 pooled connections, one writer task per connection, append to the current
frame while a coordinator closes it every 50 ms and writers close their own frame now and
then. A refused writer moves on with a new delta. The merger is a subprocess. CI runs
20 s; ``DREAMCATCHER_RELIABILITY_LONG=1`` runs five minutes (and replays every hash).
"""

from __future__ import annotations

import pytest

from bench.reliability import SIZES, render_table, soak


@pytest.mark.slow
async def test_64_writers_racing_closes_lose_and_double_nothing(
    dreamcatcher_dsn: str, long_run: bool
) -> None:
    report = await soak(dreamcatcher_dsn, **SIZES[long_run]["soak"])
    v = report.verdict
    print("\n" + render_table([report]), f"\nrefused (frame closed under them): {v.refused}; {report.notes}")
    assert report.notes["writers"] == 64
    assert v.ok, f"seed={report.seed}: {v.problems}"
    assert v.lost == 0
    assert v.doubled == 0
    assert v.phantom == 0
    assert v.acked == v.merged == v.logged > 0
    assert (v.frames_unmerged, v.frames_merged_twice) == (0, 0)
