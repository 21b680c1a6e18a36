"""``dreamcatcher replay --verify``: the log alone rebuilds every frame's hash, and tampering shows.

The log is append-only, so tampering is done to the *projection* (``entity_versions``,
``frame_log.state_hash``) as the superuser of the test database would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import DeltaClient
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.timetravel import FrameNotMergedError, UnknownWorldError, replay, replay_verify
from tests.support.helpers import connection
from tests.support.replay_world import TABLES, W, build_world


async def table_counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM dreamcatcher.{t}") for t in TABLES}


async def set_recorded_hash(conn: asyncpg.Connection, frame: int, value: str) -> None:
    sql = "UPDATE dreamcatcher.frame_log SET state_hash = $3 WHERE world = $1 AND frame = $2"
    assert await conn.execute(sql, W, frame, value) == "UPDATE 1"


async def test_replay_reproduces_every_recorded_hash_and_writes_nothing(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await build_world(dsn)
    async with connection(dsn) as conn:
        before = await table_counts(conn)
        recorded = {
            r["frame"]: r["state_hash"]
            for r in await conn.fetch("SELECT frame, state_hash FROM dreamcatcher.frames WHERE world = $1", W)
        }
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.deferred_log WHERE merged_in = 6") == 1
        seen: list[tuple[int, int]] = []
        report = await replay_verify(conn, W, on_progress=lambda done, total: seen.append((done, total)))
        assert await table_counts(conn) == before  # rolled back: not even a scratch world remains
        assert not conn.is_in_transaction()
    assert report.ok and report.divergence is None, report
    assert report.hashes == recorded
    assert (report.frames, report.first_frame, report.last_frame) == (5, 1, 6)
    assert report.final_hash == recorded[6]
    assert report.deltas == 15  # 13 of the scenario + the deferred one + frame 6's
    assert seen == [(i, 5) for i in range(1, 6)]


def test_replay_cli_exit_status_zero_when_untampered(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", W, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "5 frames (frames 1..6)" in out and "OK" in out


async def forge_post_2(dsn: str) -> None:
    """Rewrite post 2's version written by frame 2 (title "y") behind the merger's back."""
    async with connection(dsn) as conn:
        changed = await conn.execute(
            'UPDATE dreamcatcher.entity_versions SET data = data || \'{"title": "forged"}\''
            " WHERE world = $1 AND kind = 'post' AND ekey = '2' AND valid_from = 2",
            W,
        )
        assert changed == "UPDATE 1"


async def test_tampered_entity_is_reported_with_its_frame(dreamcatcher_dsn: str) -> None:
    await build_world(dreamcatcher_dsn)
    await forge_post_2(dreamcatcher_dsn)
    report = await replay_verify(dreamcatcher_dsn, W)
    d = report.divergence
    assert d is not None and not report.ok
    assert (d.frame, d.kind, d.key, d.fields) == (2, "post", "2", ("title",))
    assert d.recorded["title"] == "forged" and d.replayed["title"] == "y"
    assert report.hash_mismatches == []  # the recorded hashes were computed before the forgery


def test_tampered_entity_makes_the_cli_exit_one(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    asyncio.run(forge_post_2(dreamcatcher_dsn))
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", W, "--verify"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED at frame 2" in out and "entity: post 2" in out


async def test_tampered_recorded_hash_is_reported_at_its_frame(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await build_world(dsn)
    async with connection(dsn) as conn:
        await set_recorded_hash(conn, 3, "0123456789abcdef")
        report = await replay_verify(conn, W)
    d = report.divergence
    assert d is not None
    assert (d.frame, d.kind, d.key) == (3, None, None)
    assert d.recorded_hash == "0123456789abcdef" and d.replayed_hash == report.hashes[3]
    assert "recorded hash was altered" in d.reason
    assert report.hash_mismatches == [3]


async def test_a_version_closed_at_the_wrong_frame_is_found(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await build_world(dsn)
    async with connection(dsn) as conn:
        # agent Z's first version (frame 1) is superseded at frame 2; pretend it lived on until 4
        changed = await conn.execute(
            "UPDATE dreamcatcher.entity_versions SET valid_to = 4"
            " WHERE world = $1 AND kind = 'agent' AND ekey = 'Z' AND valid_from = 1",
            W,
        )
        assert changed == "UPDATE 1"
        report = await replay_verify(conn, W)
    d = report.divergence
    assert d is not None
    assert (d.frame, d.kind, d.key) == (2, "agent", "Z")


async def test_an_entity_missing_from_the_projection_is_found(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await build_world(dsn)
    async with connection(dsn) as conn:
        await conn.execute(
            "DELETE FROM dreamcatcher.entity_versions WHERE world = $1 AND kind = 'comment' AND ekey = $2",
            W,
            "id:c2",
        )
        report = await replay_verify(conn, W)
    d = report.divergence
    assert d is not None
    assert (d.frame, d.kind, d.key) == (3, "comment", "id:c2")
    assert d.recorded is None and d.replayed["id"] == "c2"


async def test_replay_to_a_frame_stops_there(dreamcatcher_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    dsn = dreamcatcher_dsn
    await build_world(dsn)
    monkeypatch.setattr(replay, "CHUNK_FRAMES", 2)  # several chunks, the deferred delta in the last
    async with connection(dsn) as conn:
        # tampering after frame 3 does not concern a replay up to 3
        await set_recorded_hash(conn, 6, "ffffffffffffffff")
        report = await replay_verify(conn, W, to_frame=3)
        assert report.ok and sorted(report.hashes) == [1, 2, 3]
        assert report.to_frame == 3
        # frame 5 was never a frame: the replay up to 5 is the one up to 4
        report = await replay_verify(conn, W, to_frame=5)
        assert report.ok and sorted(report.hashes) == [1, 2, 3, 4]
        report = await replay_verify(conn, W)
        assert report.divergence is not None and report.divergence.frame == 6
        with pytest.raises(FrameNotMergedError, match="frame 7 is not merged"):
            await replay_verify(conn, W, to_frame=7)
        with pytest.raises(UnknownWorldError):
            await replay_verify(conn, "nobody")


def test_replay_cli_errors_are_clear(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", W, "--to", "99", "--verify"]) == 1
    assert "frame 99 is not merged yet (the last merged frame is 6)" in capsys.readouterr().err
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", "nobody", "--verify"]) == 1
    assert "world 'nobody' does not exist" in capsys.readouterr().err


async def alter_hash_of_frame_1(dsn: str) -> None:
    async with connection(dsn) as conn:
        await conn.execute(
            "UPDATE dreamcatcher.frame_log SET state_hash = 'x' WHERE world = $1 AND frame = 1", W
        )


def test_replay_json_and_without_verify(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    asyncio.run(alter_hash_of_frame_1(dreamcatcher_dsn))
    # without --verify nothing is compared: exit 0
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", W, "--json"]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["verified"] is False and doc["ok"] is True and len(doc["hashes"]) == 5
    assert main(["--dsn", dreamcatcher_dsn, "replay", "--world", W, "--json", "--verify"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["divergence"]["frame"] == 1


async def test_replay_inside_a_callers_transaction_uses_a_savepoint(dreamcatcher_dsn: str) -> None:
    await build_world(dreamcatcher_dsn)
    async with connection(dreamcatcher_dsn) as conn, conn.transaction():
        before = await table_counts(conn)
        assert (await replay_verify(conn, W)).ok
        assert await table_counts(conn) == before
        assert conn.is_in_transaction()


async def test_replay_of_a_world_without_merged_frames(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=W) as dc:
        await dc.insert_delta(1, {"posts_created": [{"number": 1}]})
    report = await replay_verify(dreamcatcher_dsn, W)
    assert report.ok and report.frames == 0 and report.final_hash is None
