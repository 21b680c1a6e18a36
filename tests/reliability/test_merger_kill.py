"""Issue 3.1: the merger SIGKILLed again and again while a fleet writes.

A fleet (8 streams x 200 frames) writes while the merger -- a subprocess, as users run
it -- is killed at least 20 times: at random, while PostgreSQL shows a merge in progress,
right after a frame closes, and the moment it takes the lead. Every acknowledged delta
must be merged exactly once (each carries an observation id of its own; observations are
never deduplicated), no frame merged twice (a test-side trigger records every committed
merge), and every frame's state hash must equal a replay of the log by an in-process Merger.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from bench.reliability import (
    SIZES,
    T0,
    Ledger,
    connection,
    insert_acked,
    install_merge_audit,
    marker,
    merge_all,
    merger_kill,
    render_table,
    verify,
)
from dreamcatcher_pg import DeltaClient


@pytest.mark.slow
async def test_a_merger_killed_20_times_merges_every_acknowledged_delta_once(
    dreamcatcher_dsn: str, long_run: bool
) -> None:
    size = SIZES[long_run]["merger_kill"]
    report = await merger_kill(dreamcatcher_dsn, **size)
    print("\n" + render_table([report]), f"\nseed={report.seed} notes={report.notes}")
    v = report.verdict
    assert v.ok, f"seed={report.seed}: {v.problems}"
    assert report.faults["merger SIGKILL"] >= 20
    assert report.faults["merger SIGKILL/mid-merge"] >= 1, "no kill landed while a merge was in progress"
    assert (v.lost, v.doubled, v.phantom) == (0, 0, 0)
    assert v.acked == v.logged == v.merged > 0
    assert v.frames == size["frames"]
    assert (v.frames_unmerged, v.frames_merged_twice) == (0, 0)
    assert (v.hashes_compared, v.hash_mismatches) == (v.frames, 0)


async def test_the_verdict_sees_lost_doubled_phantom_and_wrong_hashes(dreamcatcher_dsn: str) -> None:
    """The checker itself: each kind of damage, made by hand, must be reported."""
    world = "damaged"
    ledger = Ledger()
    async with connection(dreamcatcher_dsn) as conn:
        await install_merge_audit(conn)
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=world) as dc:
        for frame in (1, 2, 3):
            utc = T0 + timedelta(seconds=frame)
            payload = {"observations": [{"id": marker(world, "s", frame, utc)}, {"n": 1}]}
            assert await insert_acked(dc, ledger, frame, payload, utc)
            await dc.close_frame(frame)
    await merge_all(dreamcatcher_dsn, world)
    clean = await verify(dreamcatcher_dsn, world, ledger)
    assert clean.ok, clean.problems
    assert (clean.acked, clean.merged, clean.frames, clean.hashes_compared) == (3, 3, 3, 3)

    # an acknowledgement the log does not have: lost
    ghost = Ledger(acked={**ledger.acked, (9, "s", T0): ("never-written", 1)})
    assert (await verify(dreamcatcher_dsn, world, ghost, replay=False)).lost == 1
    # a delta nobody acknowledged: phantom
    partial = Ledger(acked=dict(list(ledger.acked.items())[1:]))
    assert (await verify(dreamcatcher_dsn, world, partial, replay=False)).phantom == 1

    async with connection(dreamcatcher_dsn) as conn:
        # a delta merged twice: its marker a second time in the state (by another delta)
        first_marker = next(iter(ledger.acked.values()))[0]
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="t", world=world) as dc:
            await dc.insert_delta(4, {"observations": [{"id": first_marker}]}, utc=T0)
            await dc.close_frame(4)
        await merge_all(dreamcatcher_dsn, world)
        doubled = await verify(dreamcatcher_dsn, world, ledger, replay=False)
        assert doubled.doubled == 1 and not doubled.ok
        # a frame merged twice, and a frame whose hash no replay reproduces
        await conn.execute(
            "INSERT INTO public.reliability_merge_audit (world, frame, old_status, backend_pid)"
            " VALUES ($1, 2, 'closed', 0)",
            world,
        )
        await conn.execute(
            "UPDATE dreamcatcher.frame_log SET state_hash = 'tampered' WHERE world = $1 AND frame = 3", world
        )
        damaged = await verify(dreamcatcher_dsn, world, ledger)
    assert damaged.frames_merged_twice == 1
    assert damaged.hash_mismatches == 1
    assert len(damaged.problems) >= 4, damaged.problems
