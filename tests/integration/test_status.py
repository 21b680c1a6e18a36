"""``dreamcatcher status``: every fact an operator needs, checked on a populated database."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, FrameClosedError, Merger, configure_world
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.cli.status import render_status, watch_status
from dreamcatcher_pg.ops.status import collect_status
from dreamcatcher_pg.testing import database_dsn
from tests.support.helpers import at, connection

pytestmark = pytest.mark.usefixtures("restore_logging")


async def populate(dsn: str) -> Merger:
    """World ``w`` (streams a, b, c expected): frame 1 merged (3 deltas, an unknown key, an
    unreadable post), a late attempt at frame 1, frame 2 open with a and b only, frame 5
    closed and waiting behind frame 2. World ``quiet`` configured, no deltas. Returns a
    merger that still holds w's leader lock (the caller closes it)."""
    async with connection(dsn) as conn:
        await configure_world(conn, "w", expected_streams=["a", "b", "c"])
        await configure_world(conn, "quiet", late_policy="defer")
    async with contextlib.AsyncExitStack() as stack:
        opened = {
            s: await stack.enter_async_context(DeltaClient.connect(dsn, stream_id=s, world="w"))
            for s in "abc"
        }
        await opened["a"].insert_delta(
            1, {"posts_created": [{"number": 1, "title": "one"}], "telemetry": {"cpu": 3}}, utc=at(1)
        )
        await opened["b"].insert_delta(1, {"posts_created": [{"title": "no number"}]}, utc=at(2))
        await opened["c"].insert_delta(1, {"telemetry": 1, "observations": [{"id": "o"}]}, utc=at(3))
        merger = Merger(dsn, "w", name="status-test")
        merged = await merger.run_until_idle()  # closes frame 1 (every expected stream in), merges it
        assert [r.frame for r in merged] == [1]
        with pytest.raises(FrameClosedError):
            await opened["a"].insert_delta(1, {"posts_updated": [{"number": 1, "title": "late"}]}, utc=at(4))
        await opened["a"].insert_delta(2, {"posts_updated": [{"number": 1, "title": "two"}]}, utc=at(10))
        await opened["b"].insert_delta(2, {"observations": [{"id": "p"}]}, utc=at(11))
        await opened["a"].insert_delta(5, {"observations": [{"id": "q"}]}, utc=at(20))
        assert await opened["a"].close_frame(5) == "closed"
        assert await merger.run_until_idle() == []  # frame 2 is open: frame 5 waits
        return merger


async def cli(*argv: str) -> int:
    """``cli.main`` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


async def status_json(
    dsn: str, capsys: pytest.CaptureFixture[str], *extra: str, code: int = 0
) -> list[dict[str, Any]]:
    """``status --json``; ``code``: its exit code (3 when a world shown has no live leader)."""
    capsys.readouterr()
    assert await cli("--dsn", dsn, "status", "--json", *extra) == code
    doc = json.loads(capsys.readouterr().out)  # stdout is exactly one JSON document
    assert isinstance(doc, list)
    return doc


async def test_status_json_shows_every_fact(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    merger = await populate(dreamcatcher_dsn)
    try:
        worlds = await status_json(dreamcatcher_dsn, capsys, code=5)  # quiet: no merger
        assert [w["world"] for w in worlds] == ["quiet", "w"]
        quiet, w = worlds
        # frames open / closed / merged, and the merge lag
        assert (w["frames_open"], w["frames_closed"], w["frames_merged"]) == (1, 1, 1)
        assert w["last_merged"] == 1
        assert w["merge_lag_frames"] == 1
        assert w["merge_lag_seconds"] >= 0
        # deltas per frame: the last merged frame's and the open frame's
        assert w["last_merged_frame"]["frame"] == 1
        assert w["last_merged_frame"]["delta_count"] == 3
        assert w["last_merged_frame"]["state_hash"]
        assert w["last_merged_frame"]["close_to_merged_seconds"] >= 0
        assert [(f["frame"], f["status"], f["delta_count"]) for f in w["recent_frames"]] == [
            (5, "closed", 1),
            (2, "open", 2),
            (1, "merged", 3),
        ]
        assert w["recent_frames"][2]["close_reason"] == "streams"
        # streams seen in the open frame vs expected
        assert w["open_frame"] == 2
        assert w["open_frame_deltas"] == 2
        assert w["expected_streams"] == ["a", "b", "c"]
        assert w["streams_in_open_frame"] == ["a", "b"]
        assert w["missing_streams"] == ["c"]
        # late attempts, quarantine, unmerged keys
        assert (w["late_attempts"], w["late_deferred"]) == (1, 0)
        assert w["quarantined"] == 1
        assert w["unmerged_keys"] == {"telemetry": 2}
        # the leader and its heartbeat
        assert w["leader"] == merger.holder
        assert w["leader_alive"] is True
        assert w["leader_lock_pid"] is not None
        assert 0 <= w["heartbeat_age"] < 60
        # a world with nothing yet
        assert (quiet["frames_open"], quiet["frames_merged"], quiet["open_frame"]) == (0, 0, None)
        assert quiet["leader"] is None and quiet["leader_alive"] is False
        assert quiet["last_merged_frame"] is None and quiet["recent_frames"] == []

        assert [x["world"] for x in await status_json(dreamcatcher_dsn, capsys, "--world", "w")] == ["w"]
        assert await status_json(dreamcatcher_dsn, capsys, "--world", "nope", code=5) == []
    finally:
        await merger.aclose()

    # the leader gone: its name and heartbeat stay, but nobody holds the lock
    (w,) = await status_json(dreamcatcher_dsn, capsys, "--world", "w", code=5)
    assert w["leader"] == merger.holder
    assert w["leader_alive"] is False and w["leader_lock_pid"] is None


async def test_status_table(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    await (await populate(dreamcatcher_dsn)).aclose()
    capsys.readouterr()
    assert await cli("--dsn", dreamcatcher_dsn, "status", "--world", "w") == 5  # its merger stopped
    out = re.sub(r"[\s│]+", " ", capsys.readouterr().out)  # wrapped cells joined again
    for fact in (
        "1/1/1",
        "#1: 3 deltas",
        "1 frames",
        "#2: 2/3 expected streams",
        "waiting for c",
        "telemetry x2",
        "none (last: ",
    ):
        assert fact in out, (fact, out)


async def test_render_status_wide_and_narrow(dreamcatcher_dsn: str) -> None:
    from rich.console import Console

    merger = await populate(dreamcatcher_dsn)
    try:
        worlds = await collect_status(dreamcatcher_dsn)
    finally:
        await merger.aclose()
    for width in (80, 200):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(render_status(worlds, width))
        text = re.sub(r"[\s│]+", " ", console.export_text())
        assert "quiet" in text and "status-test" in text and "waiting for c" in text
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render_status([], 80))
    assert "no worlds yet" in console.export_text()


async def test_watch_json_lines(dreamcatcher_dsn: str) -> None:
    """``status --watch --json``: one JSON array per refresh, one per line."""
    lines: list[str] = []
    await asyncio.to_thread(
        watch_status, dreamcatcher_dsn, None, interval=0.01, json_lines=True, write=lines.append, iterations=3
    )
    assert len(lines) == 3
    assert all(json.loads(line) == [] for line in lines)


async def test_watch_table_refreshes(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    await (await populate(dreamcatcher_dsn)).aclose()
    capsys.readouterr()
    await asyncio.to_thread(
        watch_status, dreamcatcher_dsn, "w", interval=0.01, json_lines=False, write=print, iterations=2
    )
    assert "waiting for c" in re.sub(r"[\s│]+", " ", capsys.readouterr().out)


async def test_watch_keeps_going_when_the_database_is_gone(dreamcatcher_dsn: str) -> None:
    gone = database_dsn(dreamcatcher_dsn, "dc_no_such_database")
    lines: list[str] = []
    await asyncio.to_thread(
        watch_status, gone, None, interval=0.01, json_lines=True, write=lines.append, iterations=2
    )
    assert lines == []  # each failed refresh was logged, none ended the watch
