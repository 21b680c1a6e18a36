"""The world test_replay builds and test_snapshot and test_diff_cli reuse: frames 1-4 of the
scenario, a late delta refused under ``reject`` and one deferred into frame 6."""

from __future__ import annotations

import pytest

from dreamcatcher_pg import DeltaClient, FrameClosedError
from tests.support.helpers import at, close_frames, insert_each, merge_until_idle, scenario

W = "w"
TABLES = ("delta_log", "frame_log", "entity_versions", "deferred_log", "quarantine_log", "late_log", "worlds")


async def build_world(dsn: str, world: str = W) -> None:
    """The scenario (frames 1-4, every rule and tie-break, a quarantined item), a late attempt
    refused under ``reject``, then under ``defer`` a late delta for frame 2 that merges into 6."""
    await insert_each(dsn, world, scenario())
    await close_frames(dsn, world, [1, 2, 3, 4])
    await merge_until_idle(dsn, world)
    async with DeltaClient.connect(dsn, stream_id="late", world=world) as dc:
        with pytest.raises(FrameClosedError):
            await dc.insert_delta(1, {"posts_updated": [{"number": 1, "title": "refused"}]}, utc=at(100))
        await dc.configure_world(late_policy="defer")
        receipt = await dc.insert_delta(
            2,
            {"posts_updated": [{"number": 2, "title": "deferred"}], "observations": [{"id": "late"}]},
            utc=at(101),
        )
        assert receipt.status == "deferred"
        await dc.insert_delta(6, {"posts_updated": [{"number": 1, "title": "six"}]}, utc=at(102))
    await close_frames(dsn, world, [6])
    await merge_until_idle(dsn, world)
