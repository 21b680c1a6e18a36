"""``dreamcatcher ingest``: real delta files into a real PostgreSQL (docs/design.md §6)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from dreamcatcher_pg import DeltaClient, Merger
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.ingest import ingest_directory

#: The six real delta files (tests/data/corpus/README.md says where they come from).
CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
CORPUS_FRAMES = [10, 108, 138, 500, 520]


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def value(dsn: str, sql: str, *args: Any) -> Any:
    rows = await fetch(dsn, sql, *args)
    return rows[0][0]


def corpus_copy(tmp_path: Path) -> Path:
    target = tmp_path / "corpus"
    shutil.copytree(CORPUS, target)
    return target


def write(directory: Path, name: str, doc: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(doc if isinstance(doc, bytes) else orjson.dumps(doc))


async def frame_hashes(dsn: str, world: str) -> dict[int, str]:
    rows = await fetch(dsn, "SELECT frame, state_hash FROM dreamcatcher.frames WHERE world = $1", world)
    return {r["frame"]: r["state_hash"] for r in rows}


async def test_corpus_ingests_and_merges(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    report = await ingest_directory(dsn, CORPUS, "w", timeout=10)

    assert (report.files_seen, report.ignored) == (7, 1)
    assert (report.stored, report.duplicate, report.late, report.conflict) == (6, 0, 0, 0)
    assert report.unreadable == [] and report.conflicts == []
    assert report.frames == report.frames_closed == report.frames_merged == CORPUS_FRAMES
    assert report.frames_unmerged == [] and report.ok
    assert report.merge_quarantined == 0
    assert report.unmerged_keys["agents_activated"] == 6
    assert report.unmerged_keys["discussions_engaged"] == 6

    assert await value(dsn, "SELECT count(*) FROM dreamcatcher.deltas WHERE world = 'w'") == 6
    # same frame, same timestamp, different streams: both survive
    rows = await fetch(
        dsn, "SELECT stream_id, utc FROM dreamcatcher.deltas WHERE world = 'w' AND frame = 138 ORDER BY 1"
    )
    assert [r["stream_id"] for r in rows] == ["solo", "solo-b"]
    assert rows[0]["utc"] == rows[1]["utc"] == datetime(2026, 3, 20, 23, 10, tzinfo=UTC)
    frames = await fetch(dsn, "SELECT frame, status, stats::text FROM dreamcatcher.frames WHERE world = 'w'")
    assert sorted(r["frame"] for r in frames) == CORPUS_FRAMES
    assert {r["status"] for r in frames} == {"merged"}
    unmerged = sum(orjson.loads(r["stats"])["unmerged_keys"].get("agents_activated", 0) for r in frames)
    assert unmerged == 6

    # posts: bare ints and objects
    posts = {
        r["number"]: orjson.loads(r["data"])
        for r in await fetch(dsn, "SELECT number, data::text FROM dreamcatcher.posts WHERE world = 'w'")
    }
    assert {6486, 6714, 6716, 6200, 6205, 14831, 14838, 18597} == set(posts)
    assert posts[6486] == {"number": 6486}
    assert posts[14831]["author"] == "zion-coder-01"

    # comments: bare id strings, objects with comment_id / id, objects without id (content)
    comments = await fetch(dsn, "SELECT id, discussion, author FROM dreamcatcher.comments WHERE world = 'w'")
    assert len(comments) == 12 + 10 + 15 + 9 + 13 + 10
    ids = {r["id"] for r in comments}
    assert {"DC_kwDORPJAUs4A94E8", "DC_kwDORPJAUs4A97Sp", "DC_kwDORPJAUs4A97V7"} <= ids  # bare strings
    assert {"DC_kwDORPJAUs4A9zZR", "DC_kwDORPJAUs4BApId"} <= ids  # comment_id, id
    assert sum(r["id"] is None for r in comments) == 13  # frame 500's have no id

    # reactions: "NODE:TYPE" with author NULL; objects; tallies are never rows
    reactions = await fetch(dsn, "SELECT target, type, author FROM dreamcatcher.reactions WHERE world = 'w'")
    assert len(reactions) == 16 + 16 + 4
    assert ("DC_kwDORPJAUs4A94Ad", "THUMBS_UP", None) in {tuple(r) for r in reactions}
    assert ("D_kwDORPJAUs4AlvSN", "ROCKET", None) in {tuple(r) for r in reactions}
    assert all(r["target"] and r["type"] for r in reactions)
    assert all(r["author"] is None for r in reactions)
    tallies = await fetch(
        dsn,
        "SELECT frame, (stats->>'tallies')::int AS n FROM dreamcatcher.frames WHERE world = 'w' ORDER BY 1",
    )
    assert {r["frame"]: r["n"] for r in tallies}[10] == 13

    # observations: one object per delta that has them
    obs = await fetch(
        dsn, "SELECT frame, stream_id FROM dreamcatcher.observations WHERE world = 'w' ORDER BY 1, 2"
    )
    assert [tuple(r) for r in obs] == [
        (108, "solo"),
        (138, "solo"),
        (138, "solo-b"),
        (500, "stream-1"),
        (520, "solo"),
    ]


async def test_ingesting_twice_changes_nothing(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    dsn = dreamcatcher_dsn
    directory = corpus_copy(tmp_path)
    write(directory, "frame-900-broken.json", b"{not json")
    first = await ingest_directory(dsn, directory, "w", timeout=10)
    assert first.stored == 6 and first.quarantine_rows_added == 1
    hashes = await frame_hashes(dsn, "w")
    tables = ["delta_log", "late_log", "frame_log", "entity_versions", "quarantine_log"]
    counts = "SELECT " + ", ".join(f"(SELECT count(*) FROM dreamcatcher.{t})" for t in tables)
    before = tuple((await fetch(dsn, counts))[0])

    second = await ingest_directory(dsn, directory, "w", timeout=10)
    assert (second.stored, second.duplicate, second.conflict, second.late) == (0, 6, 0, 0)
    assert {d["status"] for d in second.deltas} == {"duplicate"}
    assert second.frames_closed == [] and second.frames_merged == CORPUS_FRAMES and second.ok
    assert second.quarantine_rows_added == 0 and len(second.unreadable) == 1
    assert second.frame_hashes == first.frame_hashes
    assert await frame_hashes(dsn, "w") == hashes
    assert tuple((await fetch(dsn, counts))[0]) == before


async def test_garbage_files_are_quarantined_and_good_files_merge(
    dreamcatcher_dsn: str, tmp_path: Path
) -> None:
    dsn = dreamcatcher_dsn
    directory = corpus_copy(tmp_path)
    write(directory, "frame-900-junk.json", b"this is not JSON")
    write(directory, "frame-901-nul.json", b'{"posts_created": [1]}\x00')
    write(directory, "frame-902-array.json", [{"frame": 902}])
    write(directory, "frame-903-neg.json", {"frame": -5, "stream_id": "neg"})
    write(directory, "frame-904-empty.json", b"")
    write(directory, "frame-905-esc.json", b'{"comments_added": ["a\\u0000b"]}')
    write(directory, "notes.txt", b"not a delta")

    report = await ingest_directory(dsn, directory, "w", timeout=10)

    assert report.ignored == 2  # README.md, notes.txt
    assert report.stored == 6 and report.frames_merged == CORPUS_FRAMES and report.ok
    reasons = {u["file"]: u["reason"] for u in report.unreadable}
    assert set(reasons) == {
        f"frame-90{i}-{s}.json" for i, s in enumerate(["junk", "nul", "array", "neg", "empty", "esc"])
    }
    rows = await fetch(
        dsn,
        "SELECT frame, stream_id, reason, item::text FROM dreamcatcher.quarantine WHERE world = 'w'",
    )
    quarantined = {orjson.loads(r["item"])["file"]: r for r in rows}
    assert set(quarantined) == set(reasons)
    expected = {
        "frame-900-junk.json": "not valid JSON",
        "frame-901-nul.json": "NUL",
        "frame-902-array.json": "an array, not a JSON object",
        "frame-903-neg.json": "frame -5 is negative",
        "frame-904-empty.json": "empty",
        "frame-905-esc.json": "NUL",
    }
    for file, words in expected.items():
        row = quarantined[file]
        assert words in row["reason"] and words in reasons[file]
        assert row["reason"].startswith("ingest: unreadable delta file: ")
        assert row["frame"] == int(file.split("-")[1])  # known from the name
    item = orjson.loads(quarantined["frame-900-junk.json"]["item"])
    assert item == {
        "file": "frame-900-junk.json",
        "error": "not_json",
        "size": 16,
        "text": "this is not JSON",
    }
    assert orjson.loads(quarantined["frame-901-nul.json"]["item"])["text"].endswith("\ufffd")
    # no frame was opened for an unreadable file
    assert await value(dsn, "SELECT count(*) FROM dreamcatcher.frames WHERE frame >= 900") == 0


async def test_same_comment_ids_under_two_stream_names_dedupe(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    dsn = dreamcatcher_dsn
    doc = {"comments_added": ["DC_one", "DC_two"], "reactions_added": ["DC_one:ROCKET", "HEART on DC_two"]}
    write(tmp_path, "frame-7-alpha.json", doc)  # no utc anywhere: both get the epoch
    write(tmp_path, "frame-7-beta.json", doc)

    report = await ingest_directory(dsn, tmp_path, "w", timeout=10)

    assert report.stored == 2 and report.frames_merged == [7]
    assert {n["note"].split(":")[0] for n in report.notes} == {
        "no usable utc, _meta.timestamp or completed_at"
    }
    rows = await fetch(dsn, "SELECT stream_id, utc FROM dreamcatcher.deltas WHERE world = 'w' ORDER BY 1")
    assert [(r["stream_id"], r["utc"]) for r in rows] == [
        ("alpha", datetime(1970, 1, 1, tzinfo=UTC)),
        ("beta", datetime(1970, 1, 1, tzinfo=UTC)),
    ]
    ids = await fetch(dsn, "SELECT id FROM dreamcatcher.comments WHERE world = 'w' ORDER BY 1")
    assert [r["id"] for r in ids] == ["DC_one", "DC_two"]
    reactions = await fetch(
        dsn, "SELECT target, type, author FROM dreamcatcher.reactions WHERE world = 'w' ORDER BY 1"
    )
    assert [tuple(r) for r in reactions] == [("DC_one", "ROCKET", None), ("DC_two", "HEART", None)]


async def test_same_key_other_payload_is_a_quarantined_conflict(
    dreamcatcher_dsn: str, tmp_path: Path
) -> None:
    dsn = dreamcatcher_dsn
    base = {"frame": 3, "stream_id": "s", "utc": "2026-01-01T00:00:00Z"}
    write(tmp_path, "a.json", {**base, "posts_created": [1]})
    write(tmp_path, "b.json", {**base, "posts_created": [2]})  # same key, other payload
    write(tmp_path, "c.json", {**base, "posts_created": [1]})  # same key, same payload

    report = await ingest_directory(dsn, tmp_path, "w", timeout=10)

    assert [d["status"] for d in report.deltas] == ["stored", "conflict", "duplicate"]
    assert (report.stored, report.conflict, report.duplicate) == (1, 1, 1)
    assert report.frames_merged == [3] and report.ok
    assert [r["number"] for r in await fetch(dsn, "SELECT number FROM dreamcatcher.posts")] == [1]
    rows = await fetch(dsn, "SELECT frame, stream_id, reason, item::text FROM dreamcatcher.quarantine")
    assert len(rows) == 1
    assert (rows[0]["frame"], rows[0]["stream_id"]) == (3, "s") and "conflict" in rows[0]["reason"]
    item = orjson.loads(rows[0]["item"])
    assert item["file"] == "b.json" and item["payload"]["posts_created"] == [2]  # nothing is lost


async def test_no_merge_only_inserts(dreamcatcher_dsn: str) -> None:
    report = await ingest_directory(dreamcatcher_dsn, CORPUS, "w", merge=False)
    assert report.stored == 6 and report.frames == CORPUS_FRAMES
    assert report.frames_closed == report.frames_merged == [] and report.ok
    statuses = await fetch(
        dreamcatcher_dsn, "SELECT DISTINCT status FROM dreamcatcher.frames WHERE world = 'w'"
    )
    assert [r["status"] for r in statuses] == ["open"]


async def test_an_open_lower_frame_holds_the_merge_back(dreamcatcher_dsn: str) -> None:
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="live", world="w") as dc:
        await dc.insert_delta(frame=5, payload={"posts_created": [5]})
    report = await ingest_directory(dreamcatcher_dsn, CORPUS, "w", timeout=0.3, poll_interval=0.05)
    assert report.frames_closed == CORPUS_FRAMES
    assert report.frames_merged == [] and report.frames_unmerged == CORPUS_FRAMES
    assert report.blocked_by == 5 and not report.ok


async def test_waits_for_another_merger_that_leads(dreamcatcher_dsn: str) -> None:
    other = Merger(dreamcatcher_dsn, "w", poll_interval=0.05)
    assert await other.run_until_idle() == [] and other.stats.is_leader
    stop = asyncio.Event()
    running = asyncio.create_task(other.run(stop))
    try:
        report = await ingest_directory(dreamcatcher_dsn, CORPUS, "w", timeout=10, poll_interval=0.05)
    finally:
        stop.set()
        await running
    assert other.stats.frames_merged == len(CORPUS_FRAMES)
    assert report.frames_merged == CORPUS_FRAMES and report.ok
    assert report.unmerged_keys["agents_activated"] == 6  # read back from frames, whoever merged


def test_cli_ingest_prints_json_and_a_table(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dsn", dreamcatcher_dsn, "ingest", str(CORPUS), "--world", "w", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["stored"] == 6 and doc["ok"] is True
    assert doc["frames_merged"] == CORPUS_FRAMES
    assert set(doc["frame_hashes"]) == {str(f) for f in CORPUS_FRAMES}

    assert main(argv[:-1]) == 0  # the table
    out = capsys.readouterr().out
    assert "6 duplicate" in out and "frames merged" in out


def test_cli_exit_status_when_frames_do_not_merge(
    dreamcatcher_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a", "frame-3-s.json", {"posts_created": [1]})
    write(tmp_path / "b", "frame-9-s.json", {"posts_created": [2]})
    assert main(["--dsn", dreamcatcher_dsn, "ingest", str(tmp_path / "a"), "--world", "w", "--no-merge"]) == 0
    argv = [
        "--dsn",
        dreamcatcher_dsn,
        "ingest",
        str(tmp_path / "b"),
        "--world",
        "w",
        "--timeout",
        "0.2",
        "--json",
    ]
    capsys.readouterr()
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["frames_unmerged"] == [9] and doc["blocked_by"] == 3


async def test_links_and_special_files_are_never_read(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    """A `frame-1-x.json` link to some other file (credentials, say) must not put that file's
    text in the log or the quarantine, which every reader of the world may read; nor is a FIFO
    opened (it would block the ingest)."""
    secret = tmp_path / "credentials.json"
    secret.write_bytes(orjson.dumps({"posts_created": [{"number": 9, "title": "password=hunter2"}]}))
    directory = tmp_path / "deltas"
    write(directory, "frame-1-good.json", {"posts_created": [{"number": 1, "title": "ok"}]})
    (directory / "frame-1-x.json").symlink_to(secret)
    (directory / "frame-1-notjson.json").symlink_to(tmp_path / "missing")
    os.mkfifo(directory / "frame-1-fifo.json")
    report = await asyncio.wait_for(ingest_directory(dreamcatcher_dsn, directory, "links"), 60)
    assert report.stored == 1 and report.ignored == 3 and not report.unreadable
    texts = await fetch(
        dreamcatcher_dsn,
        "SELECT payload::text AS t FROM dreamcatcher.delta_log UNION ALL"
        " SELECT coalesce(item::text, '') || reason FROM dreamcatcher.quarantine_log",
    )
    assert not any("hunter2" in r["t"] for r in texts)
    assert await value(dreamcatcher_dsn, "SELECT count(*) FROM dreamcatcher.posts") == 1
