"""``dreamcatcher diff`` and the time-travel API: what changed between two frames, the state at a
frame, the index that keeps as-of queries flat, and the README's time-travel commands."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dreamcatcher_pg import DeltaClient
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.timetravel import UnknownWorldError, diff, replay_verify, state_at
from tests.support.helpers import KINDS, at, close_frames, connection, merge_until_idle
from tests.support.replay_world import W, build_world

ROOT = Path(__file__).resolve().parents[2]

FRAME_1 = {
    "posts_created": [{"number": 1, "title": "old", "channel": "general"}],
    "agents_updated": [{"id": "ag-1", "mood": "calm"}],
    "comments_added": [{"id": "c-1", "author": "ann", "discussion": 1, "body": "hi"}],
    "chapters": [{"book": "b-1", "agent": "ann", "chapter": 1, "target": 2}],
}
FRAME_3 = {
    "posts_updated": [{"number": 1, "title": "new", "pinned": True}],
    "posts_created": [{"number": 2, "title": "second"}],
    "agents_updated": [{"id": "ag-1", "mood": "busy"}],
    "chapters": [{"book": "b-1", "agent": "bob", "chapter": 2}],
}


# The definitions, written the slow, obvious way: every version alive right after a frame.
NAIVE_ENTITIES_AT = """
SELECT v.world, v.kind, v.ekey, v.data, v.first_frame, v.valid_from AS last_frame
FROM dreamcatcher.entity_versions v
WHERE v.world = $1 AND v.kind = $2 AND v.valid_from <= $3 AND (v.valid_to IS NULL OR v.valid_to > $3)
ORDER BY v.ekey
"""
NAIVE_DIFF = """
WITH a AS (SELECT kind, ekey, data FROM dreamcatcher.entity_versions
           WHERE world = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)),
     b AS (SELECT kind, ekey, data FROM dreamcatcher.entity_versions
           WHERE world = $1 AND valid_from <= $3 AND (valid_to IS NULL OR valid_to > $3))
SELECT coalesce(a.kind, b.kind) AS kind, coalesce(a.ekey, b.ekey) AS ekey,
       CASE WHEN a.data IS NULL THEN 'added' WHEN b.data IS NULL THEN 'removed' ELSE 'changed' END AS change,
       a.data AS before, b.data AS after,
       CASE WHEN a.data IS NOT NULL AND b.data IS NOT NULL THEN
           ARRAY(SELECT k FROM (SELECT jsonb_object_keys(a.data) UNION SELECT jsonb_object_keys(b.data)) s(k)
                 WHERE (a.data -> k) IS DISTINCT FROM (b.data -> k) ORDER BY k)
       END AS fields
FROM a FULL JOIN b ON a.kind = b.kind AND a.ekey = b.ekey
WHERE a.data IS DISTINCT FROM b.data
ORDER BY 1, 2
"""


async def two_frames(dsn: str, world: str = W) -> None:
    async with DeltaClient.connect(dsn, stream_id="s", world=world) as dc:
        await dc.insert_delta(1, FRAME_1, utc=at(1))
        await dc.insert_delta(3, FRAME_3, utc=at(3))
    await close_frames(dsn, world, [1, 3])
    await merge_until_idle(dsn, world)


def test_diff_json_gives_added_changed_field_by_field_and_removed(
    dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(two_frames(dreamcatcher_dsn))
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", W, "1", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["world"], doc["from"], doc["to"], doc["last_merged_frame"]) == (W, 1, 3, 3)
    assert doc["summary"] == {
        "agent": {"added": 0, "changed": 1, "removed": 0},
        "book": {"added": 0, "changed": 1, "removed": 0},
        "chapter": {"added": 1, "changed": 0, "removed": 0},
        "post": {"added": 1, "changed": 1, "removed": 0},
    }
    post = doc["changes"]["post"]
    assert post["changed"][0]["key"] == "1"
    assert post["changed"][0]["fields"] == {
        "pinned": {"after": True},
        "title": {"before": "old", "after": "new"},
    }
    assert post["added"] == [{"key": "2", "after": {"number": 2, "title": "second"}}]
    book = doc["changes"]["book"]["changed"][0]["fields"]
    assert book == {"chapters": {"before": 1, "after": 2}, "compiled_frame": {"before": None, "after": 3}}
    # the other way round, what was added is removed
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", W, "3", "1", "--json"]) == 0
    back = json.loads(capsys.readouterr().out)
    assert back["changes"]["post"]["removed"] == [{"key": "2", "before": {"number": 2, "title": "second"}}]
    assert back["changes"]["post"]["changed"][0]["fields"]["title"] == {"before": "new", "after": "old"}


def test_diff_table(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(two_frames(dreamcatcher_dsn))
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", W, "1", "3"]) == 0
    out = capsys.readouterr().out
    assert "world 'w': frame 1 -> frame 3" in out
    assert "post: 1 added, 1 changed, 0 removed" in out
    assert re.search(r"changed .* 1 .* pinned .* — .* true", out)
    assert re.search(r"title .* \"old\" .* \"new\"", out)
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", W, "1", "2"]) == 0
    assert "no change" in capsys.readouterr().out
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", W, "3", "9"]) == 0
    assert "not merged" in capsys.readouterr().out
    assert main(["--dsn", dreamcatcher_dsn, "diff", "--world", "nobody", "1", "3"]) == 1
    assert "world 'nobody' has no frames" in capsys.readouterr().err


def rows_of(records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in records]


def state_of(frame: int) -> int:
    """Which state the test world is in right after ``frame`` (frames 1-4 and 6 merged)."""
    return 0 if frame < 1 else 4 if frame == 5 else 6 if frame >= 6 else frame


async def test_entity_changes_gives_the_rows_of_diff(dreamcatcher_dsn: str) -> None:
    """The index-driven diff agrees with dreamcatcher.diff on every pair of frames, frames that
    are not frames included, in both directions."""
    await build_world(dreamcatcher_dsn)
    async with connection(dreamcatcher_dsn) as conn:
        for a in range(8):
            for b in range(8):
                slow = await conn.fetch(NAIVE_DIFF, W, a, b)
                fast = await conn.fetch("SELECT * FROM dreamcatcher.diff($1, $2, $3)", W, a, b)
                assert rows_of(fast) == rows_of(slow), (a, b)
                assert bool(slow) == (state_of(a) != state_of(b)), (a, b)


async def test_entities_at_and_state_at_follow_the_definition(dreamcatcher_dsn: str) -> None:
    await build_world(dreamcatcher_dsn)
    async with connection(dreamcatcher_dsn) as conn:
        for frame in range(8):
            everything = []
            for kind in KINDS:
                slow = await conn.fetch(NAIVE_ENTITIES_AT, W, kind, frame)
                fast = await conn.fetch(
                    "SELECT world, kind, ekey, data, first_frame, last_frame "
                    "FROM dreamcatcher.entities_at($1, $2, $3) ORDER BY ekey",
                    W,
                    kind,
                    frame,
                )
                assert rows_of(fast) == rows_of(slow), (kind, frame)
                everything += [(kind, r["ekey"], r["first_frame"], r["last_frame"]) for r in slow]
            api = await state_at(conn, W, frame)
            assert sorted((e.kind, e.key, e.first_frame, e.last_frame) for e in api) == sorted(everything)
    posts = await state_at(dreamcatcher_dsn, W, 6, "post")
    assert [(p.key, p.data["title"]) for p in posts] == [("1", "six"), ("2", "deferred")]
    assert await state_at(dreamcatcher_dsn, "nobody", 6) == []


async def test_diff_api(dreamcatcher_dsn: str) -> None:
    await two_frames(dreamcatcher_dsn)
    result = await diff(dreamcatcher_dsn, W, 1, 3)
    post = next(c for c in result.changes if c.kind == "post" and c.change == "changed")
    assert post.field_changes() == [("pinned", None, True), ("title", "old", "new")]
    assert result.summary()["chapter"] == {"added": 1, "changed": 0, "removed": 0}
    with pytest.raises(UnknownWorldError):
        await diff(dreamcatcher_dsn, "nobody", 1, 3)


# -- the as-of index -------------------------------------------------------------------------------


async def long_history(conn: asyncpg.Connection, world: str, frames: int, posts: int, per_frame: int) -> None:
    """``posts`` posts created at frame 0, ``per_frame`` of them updated at every frame after (the
    shape merge_frame writes), straight into entity_versions."""
    rows = []
    since = dict.fromkeys(range(posts), 0)
    for f in range(1, frames):
        for n in range(f % posts, f % posts + per_frame):
            number = n % posts
            rows.append(
                (
                    world,
                    "post",
                    str(number),
                    f'{{"number": {number}, "v": {since[number]}}}',
                    0,
                    since[number],
                    f,
                )
            )
            since[number] = f
    rows += [(world, "post", str(n), f'{{"number": {n}, "v": {s}}}', 0, s, None) for n, s in since.items()]
    await conn.copy_records_to_table(
        "entity_versions",
        schema_name="dreamcatcher",
        records=rows,
        columns=["world", "kind", "ekey", "data", "first_frame", "valid_from", "valid_to"],
    )
    await conn.execute("ANALYZE dreamcatcher.entity_versions")


async def test_as_of_queries_use_the_span_index_at_every_depth(dreamcatcher_dsn: str) -> None:
    """On a long history the state at any frame is read through entity_versions_history (closed
    versions) and entity_versions_current (current ones): never by scanning the history."""
    async with connection(dreamcatcher_dsn) as conn:
        await long_history(conn, "long", frames=2000, posts=200, per_frame=10)
        for frame in (1, 1000, 1999):
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    f"EXPLAIN SELECT * FROM dreamcatcher.state_at('long', {frame}, 'post')"
                )
            )
            assert "entity_versions_history" in plan, plan
            assert "Seq Scan on entity_versions" not in plan, plan
            rows = await conn.fetch("SELECT * FROM dreamcatcher.state_at('long', $1, 'post')", frame)
            assert len(rows) == 200


# -- the README's time-travel section ---------------------------------------------------------------

#: The commands of the README's "Time travel" section, run here as written (in a scratch directory).
README_COMMANDS = [
    "dreamcatcher diff --world default 500 515",
    "dreamcatcher diff --world default 500 515 --json",
    "dreamcatcher replay --world default --verify",
    "dreamcatcher export --world default --frame 515 snapshot.tar.gz",
    "dreamcatcher import snapshot.tar.gz --world restored",
    "dreamcatcher export-dir --world default deltas/",
    "dreamcatcher ingest deltas/ --world from-git",
]


async def readme_world(dsn: str) -> None:
    """Frames 500 and 515 of the README's tour, in world ``default``."""
    async with DeltaClient.connect(dsn, stream_id="stream-1") as dc:
        await dc.insert_delta(500, {"posts_created": [{"number": 42, "title": "Draft", "author": "ada"}]})
        await dc.close_frame(500)
    await merge_until_idle(dsn, "default")
    async with DeltaClient.connect(dsn, stream_id="stream-1") as dc:
        await dc.insert_delta(
            515,
            {
                "posts_created": [{"number": 42, "title": "Hello", "author": "ada"}],
                "comments_added": [{"id": "c1", "discussion": 42, "author": "bob", "body": "hi"}],
            },
        )
        await dc.close_frame(515)
    await merge_until_idle(dsn, "default")


async def readme_python(dsn: str) -> None:
    """The README's Python example."""
    posts = await state_at(dsn, "default", 515, "post")  # the state right after frame 515
    print(posts[0].data["title"])  # Hello
    changes = await diff(dsn, "default", 500, 515)
    print(changes.summary())  # {'comment': {'added': 1, ...}, 'post': {..., 'changed': 1, ...}}
    report = await replay_verify(dsn, "default")  # rebuild from the log alone; compare every frame
    assert report.ok, report.divergence


async def frame_hashes(dsn: str, world: str) -> dict[int, str]:
    async with connection(dsn) as conn:
        rows = await conn.fetch("SELECT frame, state_hash FROM dreamcatcher.frames WHERE world = $1", world)
    return {r["frame"]: r["state_hash"] for r in rows}


def test_readme_time_travel_commands(
    dreamcatcher_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(readme_world(dreamcatcher_dsn))
    monkeypatch.chdir(tmp_path)
    for command in README_COMMANDS:
        argv = shlex.split(command)
        assert argv[0] == "dreamcatcher"
        assert main(["--dsn", dreamcatcher_dsn, *argv[1:]]) == 0, command
    out = capsys.readouterr().out
    assert '"before": "Draft"' in out and '"after": "Hello"' in out  # diff --json
    expected = asyncio.run(frame_hashes(dreamcatcher_dsn, "default"))
    assert asyncio.run(frame_hashes(dreamcatcher_dsn, "restored")) == expected
    assert asyncio.run(frame_hashes(dreamcatcher_dsn, "from-git")) == expected
    asyncio.run(readme_python(dreamcatcher_dsn))
    assert "Hello" in capsys.readouterr().out


def test_readme_shows_only_commands_the_tests_run() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "## Time travel" not in readme:
        pytest.skip("the README has no Time travel section yet")
    section = readme.split("## Time travel", 1)[1].split("\n## ", 1)[0]
    shown = [
        line.strip().removeprefix(".venv/bin/")
        for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
        for line in block.splitlines()
        if line.strip().removeprefix(".venv/bin/").startswith("dreamcatcher ")
    ]
    assert shown and all(re.sub(r"\s+#.*$", "", line) in README_COMMANDS for line in shown), shown
