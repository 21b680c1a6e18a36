"""Rules declared in a file: checking, applying by frame, merging, reading, and every path that
merges a frame again (replay, import, export-dir + ingest) using the rules that merged it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, DreamcatcherError
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.ingest import ingest_directory
from dreamcatcher_pg.rules import (
    RulesApplyError,
    RulesError,
    apply_rules,
    load_rules,
    parse_rules,
    show_rules,
)
from dreamcatcher_pg.timetravel import export_dir, export_snapshot, import_snapshot, replay_verify
from tests.support.helpers import connection, fetch, merge_until_idle
from tests.support.roles import Cast, W, at
from tests.support.roles import connect as roles_connect
from tests.support.roles import merge_as as roles_merge_as

pytestmark = pytest.mark.usefixtures("restore_logging")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SIM = EXAMPLES / "simulation" / "rules.toml"
REVIEW = EXAMPLES / "code_review" / "rules.toml"


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def put(dsn: str, world: str, stream: str, frame: int, payload: dict[str, Any]) -> None:
    async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
        assert (await dc.insert_delta(frame, payload)).status == "stored"


async def close_merge(dsn: str, world: str, *frames: int) -> None:
    async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
        for frame in frames:
            await dc.close_frame(frame)
    await merge_until_idle(dsn, world)


async def frames(dsn: str, world: str) -> list[tuple[int, str, str | None]]:
    rows = await fetch(
        dsn,
        "SELECT frame, state_hash, rules FROM dreamcatcher.frame_log WHERE world = $1 ORDER BY frame",
        world,
    )
    return [(r["frame"], r["state_hash"], r["rules"]) for r in rows]


# -- the examples --------------------------------------------------------------------------------


async def test_simulation_example(dreamcatcher_dsn: str) -> None:
    out = await example("simulation").run(dreamcatcher_dsn, "sim")
    assert sorted(out["units"]) == [1, 2, 3, 4, 5]  # unit 6 was destroyed in the last frame
    assert all(u["hp"] == 10 and "x" in u for u in out["units"].values())
    assert out["events"] == 4 * 5  # every event kept
    moved = example("simulation").payload
    ore = sum(
        moved(w, f)["stock_changes"][0]["qty"] for w in range(4) for f in range(1, 6) if (w, f) != (0, 5)
    )
    assert out["stock"] == {"north/ore": ore - 3, "south/gold": None}
    assert {r[2] for r in await frames(dreamcatcher_dsn, "sim")} == {load_rules(SIM).id}
    assert (await replay_verify(dreamcatcher_dsn, "sim")).ok


async def test_code_review_example(dreamcatcher_dsn: str) -> None:
    out = await example("code_review").run(dreamcatcher_dsn, "review")
    assert out["files"] == 3
    assert out["reviews"] == 3 + 3 + 2  # the repeats of an earlier change are duplicates
    assert out["findings"] == 3 + 1  # the same finding from three agents is one
    assert out["labels"]["101"] == ["area-0", "area-1", "area-2", "needs-review"]
    assert out["labels"]["103"] == ["area-0", "area-1", "needs-review"]
    assert out["approved"] == {"101": 1, "102": 2, "103": 3}
    assert (await replay_verify(dreamcatcher_dsn, "review")).ok


# -- bad rule files ------------------------------------------------------------------------------

#: a table, one case per row: name -> (rules text, line of the error, its message); kept as rows by fmt: skip
BAD = {
    "unknown merge": (
        '[kinds.a]\nfrom = ["x"]\nkey = ["id"]\nmerge = "newest"\n', 4, "unknown merge 'newest'",
    ),
    "missing key": ('[kinds.a]\nfrom = ["x"]\nmerge = "lww"\n', 1, "needs a key"),
    "key claimed twice": (
        '[kinds.a]\nfrom = ["x"]\nmerge = "append"\n\n[kinds.b]\nfrom = ["y", "x"]\nmerge = "append"\n',
        6, "delta key 'x' is already read by kind 'a'",
    ),
    "fields on lww": (
        '[kinds.a]\nfrom = ["x"]\nkey = ["id"]\nmerge = "lww"\nfields = ["n"]\n', 5, "takes no fields",
    ),
    "invalid toml": ('[kinds.a]\nfrom = ["x"\nmerge = "append"\n', 3, "invalid TOML"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
async def test_a_bad_rules_file_names_its_line_and_applies_nothing(
    case: str, dreamcatcher_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, line, message = BAD[case]
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "bad.toml")
    assert any(p.line == line and message in p.message for p in caught.value.problems), caught.value
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["rules", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err and message in err
    before = await fetch(dreamcatcher_dsn, "SELECT count(*) AS n FROM dreamcatcher.rule_sets")
    assert main(["--dsn", dreamcatcher_dsn, "rules", "apply", str(path), "--world", "w"]) == 1
    assert await fetch(dreamcatcher_dsn, "SELECT count(*) AS n FROM dreamcatcher.rule_sets") == before
    assert await fetch(dreamcatcher_dsn, "SELECT * FROM dreamcatcher.world_rules") == []


def test_check_accepts_the_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    default = Path(__file__).resolve().parents[2] / "dreamcatcher_pg" / "rules" / "default.toml"
    for path in (SIM, REVIEW, default):
        assert main(["rules", "check", str(path)]) == 0
        assert ": ok," in capsys.readouterr().out


# -- versions by frame ---------------------------------------------------------------------------


async def test_rules_take_effect_from_a_frame_and_never_rewrite_merged_history(dreamcatcher_dsn: str) -> None:
    dsn, w = dreamcatcher_dsn, "v"
    await put(dsn, w, "s", 1, {"posts_created": [{"number": 1, "title": "t"}], "units_moved": [{"id": 1}]})
    await close_merge(dsn, w, 1)
    before = await frames(dsn, w)
    default_id = before[0][2]
    assert default_id is not None

    sim = load_rules(SIM)
    with pytest.raises(RulesApplyError, match="already merged"):
        await apply_rules(dsn, w, sim, from_frame=1)
    result = await apply_rules(dsn, w, sim)
    assert (result.from_frame, result.changed) == (2, True)
    assert not (await apply_rules(dsn, w, sim)).changed  # the same rules again: a no-op
    assert not (await apply_rules(dsn, w, parse_rules(SIM.read_text() + "\n# a comment\n"))).changed

    await put(dsn, w, "s", 2, {"posts_created": [{"number": 2}], "units_moved": [{"id": 1, "x": 3}]})
    await close_merge(dsn, w, 2)
    after = await frames(dsn, w)
    assert after[0] == before[0]  # frame 1: same hash, same rules
    assert after[1][2] == sim.id
    kinds = {
        r["kind"] for r in await fetch(dsn, "SELECT kind FROM dreamcatcher.entities WHERE world = $1", w)
    }
    assert kinds == {"post", "unit"}  # post 1 from frame 1 stays; frame 2's posts_created is not read
    stats = (await fetch(dsn, "SELECT stats FROM dreamcatcher.frames WHERE world = $1 AND frame = 2", w))[0]
    assert stats["stats"]["unmerged_keys"] == {"posts_created": 1}

    versions = await show_rules(dsn, w)
    assert [(v.from_frame, v.rule_set) for v in versions] == [(None, default_id), (2, sim.id)]
    report = await replay_verify(dsn, w)
    assert report.ok, report.divergence


async def test_snapshot_and_export_dir_carry_the_rules(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    dsn, w = dreamcatcher_dsn, "carry"
    await put(dsn, w, "s", 1, {"posts_created": [{"number": 1}]})
    await close_merge(dsn, w, 1)
    await apply_rules(dsn, w, load_rules(REVIEW))
    await put(
        dsn, w, "a", 2, {"reviews": [{"change": 1, "agent": "x"}], "labels": [{"change": 1, "tags": "t"}]}
    )
    await put(
        dsn, w, "b", 2, {"reviews": [{"change": 1, "agent": "y"}], "labels": [{"change": 1, "tags": ["u"]}]}
    )
    await close_merge(dsn, w, 2)
    recorded = await frames(dsn, w)

    await export_snapshot(dsn, w, 2, tmp_path / "snap.tar.gz")
    await import_snapshot(dsn, tmp_path / "snap.tar.gz", world="copy")
    assert await frames(dsn, "copy") == recorded
    assert [(v.from_frame, v.rule_set) for v in await show_rules(dsn, "copy")][1:] == [
        (2, load_rules(REVIEW).id)
    ]

    await export_dir(dsn, w, tmp_path / "dir")
    assert sorted(p.name for p in (tmp_path / "dir").glob("rules-*.toml")) == [
        "rules-from-frame-1.toml",
        "rules-from-frame-2.toml",
    ]
    report = await ingest_directory(dsn, tmp_path / "dir", "back", timeout=10)
    assert report.ok
    assert [(f, h) for f, h, _ in await frames(dsn, "back")] == [(f, h) for f, h, _ in recorded]


# -- generic reads -------------------------------------------------------------------------------


async def test_entities_give_each_key_as_a_json_array(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    await apply_rules(dsn, "keys", load_rules(REVIEW))
    await put(
        dsn,
        "keys",
        "s",
        1,
        {
            "files_changed": [{"change": "7", "path": "a.py"}],
            "labels": [{"change": 7, "tags": ["x"]}],
            "findings": ["f"],
        },
    )
    await put(
        dsn,
        "default",
        "s",
        1,
        {
            "posts_created": [42],
            "comments_added": ["c1", {"body": "no id"}],
            "observations": [{"o": 1}],
            "reactions_added": ["p:like"],
        },
    )
    await close_merge(dsn, "keys", 1)
    await close_merge(dsn, "default", 1)
    async with connection(dsn) as conn:

        async def keys(world: str, kind: str) -> list[Any]:
            rows = await conn.fetch("SELECT key::text FROM dreamcatcher.entities_at($1, $2, 1)", world, kind)
            now = await conn.fetch("SELECT key::text FROM dreamcatcher.entities($1, $2)", world, kind)
            assert sorted(r[0] or "" for r in rows) == sorted(r[0] or "" for r in now)
            return sorted((json.loads(r[0]) if r[0] else None for r in rows), key=json.dumps)

        assert await keys("keys", "file") == [[7, "a.py"]]
        assert await keys("keys", "label") == [[7]]
        assert (await keys("keys", "finding"))[0][0].startswith("content:")
        assert await keys("default", "post") == [[42]]
        comments = await keys("default", "comment")
        assert comments[0] == ["c1"] and comments[1][0].startswith("content:") and len(comments) == 2
        assert await keys("default", "reaction") == [["p", "like", None]]
        assert await keys("default", "observation") == [None]


# -- roles ---------------------------------------------------------------------------------------


async def test_with_roles_the_merger_merges_declared_rules_and_only_the_owner_applies_them(
    cast: Cast,
) -> None:
    rules = parse_rules(SIM.read_text())
    await apply_rules(cast.dsn, W, rules)
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        await dc.insert_delta(
            1, {"units_spawned": [1, 2], "stock_changes": [{"depot": "d", "item": "i", "qty": 2}]}
        )
        await dc.insert_delta(1, {"units_destroyed": [2], "events": ["e"]}, utc=at(5))
        await dc.close_frame(1)
    await roles_merge_as(cast.url(cast.merger), W)
    async with roles_connect(cast.url(cast.reader)) as conn:
        units = await conn.fetch("SELECT key::text FROM dreamcatcher.entities($1, 'unit')", W)
        assert [r[0] for r in units] == ["[1]"]
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.entities_at($1, 'event', 1)", W) == 1
    for login in (cast.merger, cast.reader, cast.worker):
        with pytest.raises(DreamcatcherError):
            await apply_rules(cast.url(login), "other", parse_rules(REVIEW.read_text()))
        with pytest.raises(DreamcatcherError):
            await apply_rules(
                cast.url(login), "other", rules
            )  # installed already: the version row is refused
