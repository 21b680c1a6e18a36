"""Hostile delta files through ``dreamcatcher ingest`` (issue 3, item 5).

Whatever a directory holds, ``ingest_directory`` returns a report and does not
raise; every file is accounted for (stored, duplicate, late, deferred, conflict
or unreadable), every unreadable file and every conflict is a quarantine row,
the frames of the readable files merge, and the merger runs on afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dreamcatcher_pg import configure_world
from dreamcatcher_pg.ingest import IngestReport, ingest_directory
from dreamcatcher_pg.validation import MAX_FRAME
from tests.support.strategies import RULES, db_settings, json_values, merge, new_world

#: The size limit of these tests (``ingest_directory(max_bytes=...)``).
LIMIT = 4096

GOOD_NAME = "frame-1-good.json"
GOOD_POST = 515151
GOOD = {"posts_created": [{"number": GOOD_POST, "title": "survivor"}], "utc": "2030-01-01T00:00:00Z"}

_dirs = itertools.count(1)

SQLISH = ["'); DROP TABLE dreamcatcher.delta_log; --", "$$", "\\", '"; --']
ODD = ["\u202eevil", "👍🏽", "e\u0301", "\ufeff", "", " ", *SQLISH]

frame_values: st.SearchStrategy[Any] = st.one_of(
    st.integers(0, 3),
    st.sampled_from(
        [-1, MAX_FRAME, MAX_FRAME + 1, 2**64, 10**30, 1.0, 1.5, True, None, "2", " 3 ", "-4", "x", [], {}]
    ),
)
stream_values: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["s1", "s2", 7, None, True, [], {}, "a" * 201, *ODD]), st.text(max_size=8)
)
utc_values = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "2030-01-01T00:00:00Z",
            "2030-01-01",
            "2030-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "yesterday",
            "",
            5,
            1.5,
            True,
            [],
            {},
        ]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A delta document: an envelope of odd values around items of every rule."""
    doc: dict[str, Any] = {}
    for key, values in (("frame", frame_values), ("stream_id", stream_values), ("utc", utc_values)):
        if draw(st.booleans()):
            doc[key] = draw(values)
    if draw(st.booleans()):
        doc["_meta"] = draw(st.one_of(st.fixed_dictionaries({"timestamp": utc_values}), json_values))
    if draw(st.booleans()):
        doc["completed_at"] = draw(utc_values)
    for key in draw(st.lists(st.sampled_from(list(RULES)), unique=True, max_size=3)):
        doc[key] = [i.value for i in draw(st.lists(RULES[key], max_size=3))]
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["agents_activated", *SQLISH]))] = draw(json_values)
    return doc


RAW_NASTIES = [
    b"",
    b"   \n\t",
    b"\xef\xbb\xbf{}",  # a BOM, then an empty object
    b"\xff\xfe{\x00}\x00",  # UTF-16
    b'{"a": "\\u0000"}',
    b'{"a\\u0000": 1}',
    b'{"posts_created": [1]}\x00',
    b'{"a": "\\ud800"}',  # a lone surrogate escape
    b"{",
    b"[" * 5000 + b"]" * 5000,
    b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}",
    b"1e400",
    b'{"frame": 1e400}',
    b'"just a string"',
    b"[1, 2]",
    b"null",
    b"NaN",
    b'{"frame": 1, "frame": 2}',
    b'{"observations": [' + b"1," * 3000 + b"1]}",  # over the size limit
]


@st.composite
def files(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["doc", "doc", "doc", "raw", "bytes"]))
    frame = draw(st.integers(0, 3))
    stream = draw(st.sampled_from(["s1", "s2", "x y", "é", "e\u0301", "'); --", "$$"]))
    name = draw(
        st.sampled_from(
            [
                f"frame-{frame}-{stream}.json",
                f"FRAME-{frame}-{stream}.JSON",
                f"frame-{2**64}-{stream}.json",
                f"frame--1-{stream}.json",
                f"{stream}.json",
                "frame-1-.json",
                f"frame-{frame}-{stream}.txt",
            ]
        )
    )
    name = f"{draw(st.integers(0, 10**6))}-{name}" if draw(st.booleans()) and kind != "doc" else name
    if kind == "doc":  # the standard library writes what orjson refuses (integers past 64 bits)
        return name, json.dumps(draw(documents()), ensure_ascii=draw(st.booleans())).encode()
    if kind == "raw":
        return name, draw(st.sampled_from(RAW_NASTIES))
    return name, draw(st.binary(max_size=64))


def fresh_dir(root: Path) -> Path:
    directory = root / f"d{next(_dirs)}"
    directory.mkdir()
    return directory


def write_files(directory: Path, contents: list[tuple[str, bytes]]) -> int:
    """Write the files (a repeated name keeps its first content); the number of *.json regular files."""
    written: set[str] = set()
    for name, data in contents:
        if name in written:
            continue
        written.add(name)
        (directory / name).write_bytes(data)
    return sum(1 for n in written if n.lower().endswith(".json"))


async def check_report(dsn: str, report: IngestReport, json_files: int) -> None:
    """Every file accounted for, every refusal quarantined, every readable frame merged."""
    outcomes = report.stored + report.duplicate + report.late + report.deferred + report.conflict
    assert outcomes + len(report.unreadable) == json_files, report.to_dict()
    assert report.late == report.deferred == 0  # a fresh world: nothing is late
    assert report.frames_unmerged == [] and report.ok, report.to_dict()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT reason, item ->> 'file' AS file FROM dreamcatcher.quarantine"
            " WHERE world = $1 AND merged_in IS NULL",
            report.world,
        )
        unreadable = sorted(
            r["file"] for r in rows if r["reason"].startswith("ingest: unreadable delta file: ")
        )
        conflicts = sorted(r["file"] for r in rows if r["reason"].startswith("ingest: conflict"))
        assert unreadable == sorted(u["file"] for u in report.unreadable)
        assert conflicts == sorted(c["file"] for c in report.conflicts)
        assert len(rows) == len(unreadable) + len(conflicts)
        title = await conn.fetchval(
            "SELECT data ->> 'title' FROM dreamcatcher.posts WHERE world = $1 AND number = $2",
            report.world,
            GOOD_POST,
        )
        assert title == "survivor"
        merged = await conn.fetch(
            "SELECT frame FROM dreamcatcher.frames WHERE world = $1 AND status = 'merged' ORDER BY frame",
            report.world,
        )
        assert [r["frame"] for r in merged] == report.frames
    finally:
        await conn.close()
    assert await merge(dsn, report.world) == []  # the merger runs on: nothing left, nothing broken


# -- hypothesis --------------------------------------------------------------------------


@db_settings(30)
@given(contents=st.lists(files(), max_size=6))
async def test_fuzzed_directories_ingest_without_crashing_and_account_for_every_file(
    dreamcatcher_dsn: str, tmp_path: Path, contents: list[tuple[str, bytes]]
) -> None:
    directory = fresh_dir(tmp_path)
    json_files = write_files(directory, [(GOOD_NAME, orjson.dumps(GOOD)), *contents])
    report = await ingest_directory(
        dreamcatcher_dsn, directory, new_world("ingest"), timeout=20, max_bytes=LIMIT
    )
    await check_report(dreamcatcher_dsn, report, json_files)


# -- the named nasties ---------------------------------------------------------------------


NAMED: dict[str, bytes | Any] = {
    "frame-1-empty.json": b"",
    "frame-1-blank.json": b" \n",
    "frame-1-utf16.json": '{"posts_created": [1]}'.encode("utf-16"),
    "frame-1-latin1.json": '{"posts_created": [{"number": 1, "title": "caf\xe9"}]}'.encode("latin-1"),
    "frame-1-nul-byte.json": b'{"a": 1}\x00',
    "frame-1-nul-escape.json": b'{"a": "x\\u0000y"}',
    "frame-1-nul-key.json": b'{"a\\u0000": 1}',
    "frame-1-surrogate.json": b'{"a": "\\udc80"}',
    "frame-1-truncated.json": b'{"posts_created": [1',
    "frame-1-deep.json": b'{"a": ' + b"[" * 70 + b"]" * 70 + b"}",
    "frame-1-deeper.json": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "frame-1-huge.json": orjson.dumps({"observations": ["x" * LIMIT]}),
    "frame-1-array.json": [1, 2],
    "frame-1-string.json": "text",
    "frame-1-infinity.json": b'{"observations": [1e400]}',
    "frame-neg.json": {"frame": -1, "stream_id": "s"},
    "frame-big.json": {"frame": MAX_FRAME + 1, "stream_id": "s"},
    "frame-float.json": {"frame": 1.5, "stream_id": "s"},
    "frame-bool.json": {"frame": True, "stream_id": "s"},
    "frame-text.json": {"frame": "one", "stream_id": "s"},
    "stream-list.json": {"frame": 1, "stream_id": ["s"]},
    "stream-empty.json": {"frame": 1, "stream_id": "  "},
    "stream-long.json": {"frame": 1, "stream_id": "s" * 201},
    "no-frame-no-name.json": {"stream_id": "s"},
}
ACCEPTED: dict[str, Any] = {
    # name -> document; each is stored and merged
    "frame-2-sql.json": {
        "stream_id": SQLISH[0],
        "posts_created": [{"number": 2, "title": SQLISH[0]}],
        "comments_added": [{"id": t} for t in SQLISH],
        SQLISH[1]: [1],
    },
    "frame-2-odd.json": {
        "comments_added": [{"id": t} for t in ODD if t.strip()],
        "reactions_added": ["🎉 on 👍🏽"],
    },
    "frame-2-\u202eevil.json": {"posts_created": [3]},
    "frame-2-edge-utc.json": {
        "utc": "0001-01-01T00:00:00+14:00",
        "_meta": {"timestamp": "9999-12-31T23:59:59-14:00"},
        "completed_at": "not a date",
        "posts_created": [4],
    },
    "frame-3-stream-int.json": {"stream_id": 42, "posts_created": [5]},
    f"frame-{MAX_FRAME}-top.json": {"posts_created": [6]},
}


async def test_named_nasty_files_are_quarantined_and_the_rest_merges(
    dreamcatcher_dsn: str, tmp_path: Path
) -> None:
    directory = fresh_dir(tmp_path)
    contents = [(GOOD_NAME, orjson.dumps(GOOD))]
    contents += [(n, d if isinstance(d, bytes) else orjson.dumps(d)) for n, d in NAMED.items()]
    contents += [(n, orjson.dumps(d)) for n, d in ACCEPTED.items()]
    json_files = write_files(directory, contents)
    # a name that is not UTF-8, a directory and a dangling link that look like delta files
    os.close(os.open(os.fsencode(directory) + b"/frame-2-\xff\xfe.json", os.O_CREAT | os.O_WRONLY, 0o644))
    (directory / "frame-2-dir.json").mkdir()
    (directory / "frame-2-link.json").symlink_to(directory / "nowhere")
    world = new_world("named")
    conn = await asyncpg.connect(dreamcatcher_dsn)  # (its frames jump from 1 to the largest one)
    try:
        await configure_world(conn, world, max_frame_ahead=MAX_FRAME)
    finally:
        await conn.close()
    report = await ingest_directory(dreamcatcher_dsn, directory, world, timeout=20, max_bytes=LIMIT)
    await check_report(dreamcatcher_dsn, report, json_files + 1)

    unreadable = {u["file"] for u in report.unreadable}
    assert unreadable == {*NAMED, "frame-2-\ufffd\ufffd.json"}
    assert {d["file"] for d in report.deltas if d["status"] == "stored"} == {GOOD_NAME, *ACCEPTED}
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        world = report.world
        assert (
            await conn.fetchval(
                "SELECT data ->> 'title' FROM dreamcatcher.posts WHERE world = $1 AND number = 2", world
            )
            == SQLISH[0]
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM dreamcatcher.posts WHERE world = $1 AND number BETWEEN 3 AND 6", world
            )
            == 4
        )
        ids = {r[0] for r in await conn.fetch("SELECT id FROM dreamcatcher.comments WHERE world = $1", world)}
        assert ids == {*SQLISH, *(t for t in ODD if t.strip())}
        assert (
            await conn.fetchval(
                "SELECT stream_id FROM dreamcatcher.deltas WHERE world = $1 AND frame = 3", world
            )
            == "42"
        )
    finally:
        await conn.close()


async def test_a_file_is_stored_as_it_is_written(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    """Numbers a Python float or int64 cannot hold are kept exactly (jsonb holds them), not rounded."""
    directory = fresh_dir(tmp_path)
    big = "123456789012345678901234567890"
    precise = "0.1000000000000000055511151231257827"
    (directory / GOOD_NAME).write_bytes(orjson.dumps(GOOD))
    (directory / "frame-1-numbers.json").write_bytes(
        f'{{"observations": [{{"big": {big}, "precise": {precise}, "neg": -{big}}}]}}'.encode()
    )
    report = await ingest_directory(dreamcatcher_dsn, directory, new_world("exact"), timeout=20)
    await check_report(dreamcatcher_dsn, report, 2)
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT o ->> 'big' AS big, o ->> 'precise' AS precise, o ->> 'neg' AS neg"
            " FROM dreamcatcher.deltas d,"
            " jsonb_array_elements(d.payload -> 'observations') o WHERE d.world = $1",
            report.world,
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["big"], row["precise"], row["neg"]) == (big, precise, f"-{big}")


@pytest.mark.parametrize("utc", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"], ids=["min", "max"])
async def test_a_file_at_the_first_or_last_instant_does_not_stop_the_merge(
    dreamcatcher_dsn: str, tmp_path: Path, utc: str
) -> None:
    """asyncpg sends datetime.min/max as -infinity/infinity: such a file must merge or be quarantined."""
    directory = fresh_dir(tmp_path)
    (directory / GOOD_NAME).write_bytes(orjson.dumps(GOOD))
    (directory / "frame-1-edge.json").write_bytes(orjson.dumps({"utc": utc, "observations": [{"at": utc}]}))
    report = await ingest_directory(dreamcatcher_dsn, directory, new_world("edge"), timeout=20)
    await check_report(dreamcatcher_dsn, report, 2)


async def test_an_entity_key_too_long_for_an_index_does_not_stop_ingest(
    dreamcatcher_dsn: str, tmp_path: Path
) -> None:
    """docs/design.md §6: ingesting any directory must never crash (a 3 kB comment id, incompressible)."""
    directory = fresh_dir(tmp_path)
    (directory / GOOD_NAME).write_bytes(orjson.dumps(GOOD))
    (directory / "frame-1-long.json").write_bytes(
        orjson.dumps({"comments_added": [{"id": secrets.token_hex(1500)}]})
    )
    report = await ingest_directory(dreamcatcher_dsn, directory, new_world("long"), timeout=20)
    await check_report(dreamcatcher_dsn, report, 2)
