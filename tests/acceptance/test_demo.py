"""``dreamcatcher demo`` run as a user would, checked against the database it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from dreamcatcher_pg.cli import main
from dreamcatcher_pg.demo import PlannedDelta, plan_frame

STREAMS, FRAMES, K = 3, 4, 4


pytestmark = pytest.mark.usefixtures("restore_logging")


def run_demo_cli(dsn: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert main(["--dsn", dsn, "demo", *extra, "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # stdout is exactly one JSON object
    assert isinstance(doc, dict)
    return doc


def planned(seed: int = 7, first_frame: int = 0) -> list[PlannedDelta]:
    return [
        d
        for s in range(STREAMS)
        for f in range(first_frame, first_frame + FRAMES)
        for d in plan_frame(seed, STREAMS, K, s, f, first_frame)
    ]


def expected_titles(deltas: list[PlannedDelta]) -> dict[int, str]:
    """Last-write-wins recomputed from the plan: (frame, utc, stream_id, rule, position)."""
    titles: dict[int, str] = {}
    for d in sorted(deltas, key=lambda d: (d.frame, d.utc, d.stream_id)):
        for key in ("posts_created", "posts_updated"):  # the merge's rule order
            for item in d.payload.get(key, []):
                if isinstance(item, dict) and isinstance(item.get("number"), int) and "title" in item:
                    titles[item["number"]] = item["title"]
    return titles


def test_demo_summary_and_database_agree(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_demo_cli(dreamcatcher_dsn, capsys, "--streams", str(STREAMS), "--frames", str(FRAMES))
    plan = planned(first_frame=doc["first_frame"])

    assert doc["world"].startswith("demo-") and len(doc["world"]) == len("demo-") + 8
    assert doc["frames_merged"] == FRAMES
    assert doc["deltas_written"] == STREAMS * FRAMES * K == len(plan)
    assert doc["duplicates_acknowledged"] == sum(d.retry for d in plan) > 0
    counts = doc["counts"]
    for name in ("posts", "comments", "reactions", "chapters", "books", "agents", "observations"):
        assert counts[name] > 0, name
    assert counts["quarantine"] > 0
    assert counts["books_compiled"] >= 1
    lat = doc["close_to_merged_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert doc["wall_seconds"] > 0 and doc["ingest_rate"] > 0
    assert isinstance(doc["state_hash"], str) and len(doc["state_hash"]) == 16

    world = doc["world"]
    with psycopg.connect(dreamcatcher_dsn) as conn:

        def one(sql: str) -> Any:
            row = conn.execute(sql, {"w": world}).fetchone()
            assert row is not None
            return row[0] if len(row) == 1 else row

        frames = conn.execute(
            "SELECT frame, status, state_hash FROM dreamcatcher.frames WHERE world = %(w)s ORDER BY frame",
            {"w": world},
        ).fetchall()
        assert [(f, s) for f, s, _ in frames] == [(f, "merged") for f in range(FRAMES)]
        assert frames[-1][2] == doc["state_hash"]
        # every retry was acknowledged, none stored twice
        assert one("SELECT count(*) FROM dreamcatcher.deltas WHERE world = %(w)s") == len(plan)

        # the summary's counts are the views' counts
        for view in ("posts", "comments", "reactions", "chapters", "books", "agents", "observations"):
            assert one(f"SELECT count(*) FROM dreamcatcher.{view} WHERE world = %(w)s") == counts[view], view
        assert one("SELECT count(*) FROM dreamcatcher.quarantine WHERE world = %(w)s") == counts["quarantine"]
        assert (
            one("SELECT count(*) FROM dreamcatcher.books WHERE world = %(w)s AND compiled_frame IS NOT NULL")
            == counts["books_compiled"]
        )

        # comments: one row per id, although the plan sends some ids from two streams
        assert (
            one(
                "SELECT count(*) FROM (SELECT id FROM dreamcatcher.comments"
                " WHERE world = %(w)s AND id IS NOT NULL GROUP BY id HAVING count(*) > 1) d"
            )
            == 0
        )
        senders: dict[str, set[str]] = {}
        for d in plan:
            for c in d.payload.get("comments_added", []):
                if "id" in c:
                    senders.setdefault(c["id"], set()).add(d.stream_id)
        shared = sorted(cid for cid, streams in senders.items() if len(streams) > 1)
        assert shared, "the plan sends no comment id from two streams"
        rows = conn.execute(
            "SELECT id, count(*) FROM dreamcatcher.comments"
            " WHERE world = %(w)s AND id = ANY(%(ids)s) GROUP BY id",
            {"w": world, "ids": shared},
        ).fetchall()
        assert dict(rows) == dict.fromkeys(shared, 1)
        assert one("SELECT count(*) FROM dreamcatcher.comments WHERE world = %(w)s AND id IS NULL") > 0

        # reactions in both forms: objects (with author) and "NODE:TYPE" strings (author null)
        with_author, without = one(
            "SELECT count(*) FILTER (WHERE author IS NOT NULL), count(*) FILTER (WHERE author IS NULL)"
            " FROM dreamcatcher.reactions WHERE world = %(w)s"
        )
        assert with_author > 0 and without > 0

        # posts: exactly one row per number, titled by the last writer
        titles: dict[int, str] = dict(
            conn.execute(
                "SELECT number, data ->> 'title' FROM dreamcatcher.posts WHERE world = %(w)s", {"w": world}
            ).fetchall()
        )
        assert one("SELECT count(DISTINCT number) = count(*) FROM dreamcatcher.posts WHERE world = %(w)s")
        expected = expected_titles(plan)
        assert titles == expected
        # ...and several streams really did write the same post
        writers: dict[int, set[str]] = {}
        for d in plan:
            for key in ("posts_created", "posts_updated"):
                for item in d.payload.get(key, []):
                    if "number" in item:
                        writers.setdefault(item["number"], set()).add(d.stream_id)
        assert any(len(w) > 1 for w in writers.values())

        # agents: last-write-wins bios; unreadable items are in quarantine with a reason
        assert one("SELECT count(*) FROM dreamcatcher.agents WHERE world = %(w)s AND data ? 'bio'") > 0
        assert one("SELECT bool_and(reason <> '') FROM dreamcatcher.quarantine WHERE world = %(w)s")


def test_same_seed_same_state_other_seed_other_state(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--streams", "2", "--frames", "3", "--deltas-per-frame", "3")
    a = run_demo_cli(dreamcatcher_dsn, capsys, *args)
    b = run_demo_cli(dreamcatcher_dsn, capsys, *args)
    c = run_demo_cli(dreamcatcher_dsn, capsys, *args, "--seed", "8")
    assert a["world"] != b["world"]  # fresh world per run: runs never collide
    assert a["state_hash"] == b["state_hash"] and a["counts"] == b["counts"]
    assert c["state_hash"] != a["state_hash"]


def test_demo_continues_a_given_world(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--world", "mine", "--streams", "1", "--frames", "2", "--deltas-per-frame", "1")
    first = run_demo_cli(dreamcatcher_dsn, capsys, *args)
    second = run_demo_cli(dreamcatcher_dsn, capsys, *args)
    assert (first["world"], first["first_frame"], first["last_frame"]) == ("mine", 0, 1)
    assert (second["world"], second["first_frame"], second["last_frame"]) == ("mine", 2, 3)
    assert second["frames_merged"] == 2


def test_demo_console_script_on_embedded_postgres() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DREAMCATCHER_DSN"}
    proc = subprocess.run(
        [sys.executable, "-m", "dreamcatcher_pg", "demo", "--streams", "2", "--frames", "3", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["frames_merged"] == 3
    assert doc["deltas_written"] == 2 * 3 * 4
    assert doc["counts"]["posts"] > 0
