"""Portable snapshots (``export`` / ``import``) and the git layout (``export-dir`` -> ``ingest``).

Every import replays the archive's log and must reproduce the manifest's hashes; a damaged,
truncated or lying archive, or a target world with data, is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import os
import secrets
import tarfile
import tracemalloc
import unicodedata
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psycopg
import pytest
from psycopg import sql

from dreamcatcher_pg import DeltaClient
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.ingest import ingest_directory, parse_file_name
from dreamcatcher_pg.testing import database_dsn
from dreamcatcher_pg.timetravel import (
    ExportDirError,
    FrameNotMergedError,
    SnapshotCorruptError,
    SnapshotFormatError,
    SnapshotVerificationError,
    WorldNotEmptyError,
    export_dir,
    export_snapshot,
    import_snapshot,
    state_at,
)
from dreamcatcher_pg.timetravel.archive import MAX_LINE_BYTES, check_archive
from tests.support.helpers import (
    D,
    at,
    close_frames,
    connection,
    entity_history,
    extra_database,
    frame_table,
    insert_each,
    merge_until_idle,
    quarantine_rows,
    scenario,
)
from tests.support.replay_world import TABLES, W, build_world

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
ENVELOPE = ("frame", "stream_id", "utc")


# -- reading a world back --------------------------------------------------------------------


async def log_rows(conn: asyncpg.Connection, world: str) -> dict[str, list[tuple[Any, ...]]]:
    deltas = await conn.fetch(
        "SELECT frame, stream_id, utc, late, payload::text FROM dreamcatcher.delta_log WHERE world = $1"
        ' ORDER BY frame, stream_id COLLATE "C", utc',
        world,
    )
    deferred = await conn.fetch(
        "SELECT frame, stream_id, utc, merged_in FROM dreamcatcher.deferred_log WHERE world = $1"
        " ORDER BY 1, 2, 3",
        world,
    )
    late = await conn.fetch(
        "SELECT frame, stream_id, utc, policy, payload::text FROM dreamcatcher.late_log WHERE world = $1"
        " ORDER BY id",
        world,
    )
    return {
        "deltas": [tuple(r) for r in deltas],
        "deferred": [tuple(r) for r in deferred],
        "late": [tuple(r) for r in late],
    }


async def fingerprint(dsn: str, world: str) -> dict[str, Any]:
    """Everything a world is made of, without ids and wall-clock times."""
    async with connection(dsn) as conn:
        return {
            "frames": await frame_table(conn, world),
            "versions": await entity_history(conn, world),
            "quarantine": await quarantine_rows(conn, world),
            **await log_rows(conn, world),
        }


async def table_counts(dsn: str) -> dict[str, int]:
    async with connection(dsn) as conn:
        if not await conn.fetchval("SELECT to_regclass('dreamcatcher.delta_log') IS NOT NULL"):
            return {}
        return {t: await conn.fetchval(f"SELECT count(*) FROM dreamcatcher.{t}") for t in TABLES}


async def hashes(dsn: str, world: str) -> dict[int, str]:
    async with connection(dsn) as conn:
        rows = await conn.fetch("SELECT frame, state_hash FROM dreamcatcher.frames WHERE world = $1", world)
    return {r["frame"]: r["state_hash"] for r in rows}


@contextlib.asynccontextmanager
async def bare_database(server_dsn: str) -> AsyncIterator[str]:
    """A new database without the dreamcatcher schema."""
    name = f"dc_bare_{os.getpid()}_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_dsn(server_dsn, name)
    finally:
        async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# -- editing archives ------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_members(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    with tarfile.open(path, "r:gz") as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        files = {}
        for name in names:
            handle = tar.extractfile(name)
            assert handle is not None
            files[name] = handle.read()
    return orjson.loads(files.pop("manifest.json")), files


def write_members(path: Path, manifest: dict[str, Any], files: dict[str, bytes], *, fix: bool = True) -> None:
    """Write an archive; with ``fix``, the manifest's checksums match the (edited) members."""
    if fix:
        for name, data in files.items():
            manifest["members"][name] = {
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "lines": data.count(b"\n"),
            }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [("manifest.json", orjson.dumps(manifest)), *files.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def edit_lines(data: bytes, edit: Callable[[dict[str, Any]], None], *, index: int = 0) -> bytes:
    lines = data.splitlines()
    doc = orjson.loads(lines[index])
    edit(doc)
    lines[index] = orjson.dumps(doc)
    return b"\n".join(lines) + b"\n"


@pytest.fixture
async def archive(dreamcatcher_dsn: str, tmp_path: Path) -> Path:
    """A snapshot of the test world at its last frame (6)."""
    await build_world(dreamcatcher_dsn)
    path = tmp_path / "w.tar.gz"
    await export_snapshot(dreamcatcher_dsn, W, 6, path)
    return path


# -- export and import ------------------------------------------------------------------------


async def test_import_into_another_database_reproduces_the_world(
    dreamcatcher_dsn: str, dreamcatcher_server_dsn: str, dreamcatcher_template_db: str, archive: Path
) -> None:
    source = await fingerprint(dreamcatcher_dsn, W)
    assert source["deferred"] and source["late"] and source["quarantine"]  # every part is exercised
    async with extra_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as (other, _):
        seen: list[int] = []
        report = await import_snapshot(other, archive, on_progress=lambda done, total: seen.append(done))
        assert (report.world, report.source_world, report.frame, report.frames) == (W, W, 6, 5)
        assert report.state_hash == (await hashes(dreamcatcher_dsn, W))[6]
        assert seen == [1, 2, 3, 4, 5]
        assert await fingerprint(other, W) == source
        async with connection(other) as conn:
            assert await conn.fetchval("SELECT horizon FROM dreamcatcher.worlds WHERE world = $1", W) == 6
            assert (
                await conn.fetchval("SELECT late_policy FROM dreamcatcher.worlds WHERE world = $1", W)
                == "defer"
            )


async def test_import_under_a_new_name_gives_identical_hashes(dreamcatcher_dsn: str, archive: Path) -> None:
    report = await import_snapshot(dreamcatcher_dsn, archive, world="copy")
    assert report.world == "copy"
    source, copy = await fingerprint(dreamcatcher_dsn, W), await fingerprint(dreamcatcher_dsn, "copy")
    assert copy == source
    # and the copy lives on: a new frame merges on top of the imported state
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="copy") as dc:
        await dc.insert_delta(7, {"posts_created": [{"number": 7}]})
        await dc.close_frame(7)
    await merge_until_idle(dreamcatcher_dsn, "copy")
    assert (await state_at(dreamcatcher_dsn, "copy", 7, "post"))[-1].data == {"number": 7}


async def test_import_into_a_database_without_the_schema(dreamcatcher_server_dsn: str, archive: Path) -> None:
    async with bare_database(dreamcatcher_server_dsn) as bare:
        report = await import_snapshot(bare, archive)
        assert report.schema_applied
        assert (await hashes(bare, W))[6] == report.state_hash


async def test_a_snapshot_at_an_earlier_frame_holds_that_frame_only(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path
) -> None:
    early = tmp_path / "early.tar.gz"
    report = await export_snapshot(dreamcatcher_dsn, W, 5, early)  # 5 is no frame: the state after 4
    assert (report.frame, report.last_merged_frame, report.frames) == (5, 4, 4)
    manifest, files = read_members(early)
    assert sorted(manifest["frames"], key=int) == ["1", "2", "3", "4"]
    assert b'"deferred"' not in files["deltas.jsonl"]  # the late delta merged into frame 6 is not in it
    assert files["deferred.jsonl"] == b""
    await import_snapshot(dreamcatcher_dsn, early, world="early")
    assert await hashes(dreamcatcher_dsn, "early") == {
        f: h for f, h in (await hashes(dreamcatcher_dsn, W)).items() if f <= 4
    }
    assert await state_at(dreamcatcher_dsn, "early", 4) == await state_at(dreamcatcher_dsn, W, 5)


async def test_the_manifest_describes_the_archive(dreamcatcher_dsn: str, archive: Path) -> None:
    manifest, files = read_members(archive)
    assert (manifest["format"], manifest["version"]) == ("dreamcatcher-snapshot", 1)
    assert (manifest["world"], manifest["frame"], manifest["last_merged_frame"]) == (W, 6, 6)
    assert manifest["frames"] == {str(f): h for f, h in (await hashes(dreamcatcher_dsn, W)).items()}
    assert manifest["state_hash"] == manifest["frames"]["6"]
    assert manifest["world_config"]["late_policy"] == "defer"
    for name, data in files.items():
        info = manifest["members"][name]
        assert info == {
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "lines": data.count(b"\n"),
        }
    counts = manifest["counts"]
    assert (counts["frames"], counts["deltas"], counts["deferred"], counts["late_attempts"]) == (5, 15, 1, 2)
    state = await state_at(dreamcatcher_dsn, W, 6)
    assert counts["entities"] == len(state) == len(files["state.jsonl"].splitlines())
    assert sum(counts["entities_by_kind"].values()) == len(state)
    line = orjson.loads(files["deltas.jsonl"].splitlines()[0])
    assert set(line) == {"frame", "stream_id", "utc", "late", "inserted_at", "payload"}


@pytest.mark.parametrize("where", [1 / 3, 1 / 2, 2 / 3, 0.99])
async def test_a_flipped_byte_is_refused_and_changes_nothing(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path, where: float
) -> None:
    data = bytearray(read_bytes(archive))
    data[int(len(data) * where)] ^= 0x20
    damaged = write_bytes(tmp_path / "damaged.tar.gz", bytes(data))
    before = await table_counts(dreamcatcher_dsn)
    with pytest.raises(SnapshotCorruptError, match=r"damaged|truncated"):
        await import_snapshot(dreamcatcher_dsn, damaged, world="copy")
    assert await table_counts(dreamcatcher_dsn) == before


@pytest.mark.parametrize("keep", [0.5, -8, -1])
async def test_a_truncated_archive_is_refused_and_changes_nothing(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path, keep: float
) -> None:
    data = read_bytes(archive)
    cut = write_bytes(
        tmp_path / "cut.tar.gz", data[: int(len(data) * keep)] if keep > 0 else data[: int(keep)]
    )
    before = await table_counts(dreamcatcher_dsn)
    with pytest.raises(SnapshotCorruptError):
        await import_snapshot(dreamcatcher_dsn, cut, world="copy")
    assert await table_counts(dreamcatcher_dsn) == before


async def test_a_wrong_hash_in_the_manifest_is_refused_and_changes_nothing(
    dreamcatcher_server_dsn: str, archive: Path, tmp_path: Path
) -> None:
    manifest, files = read_members(archive)
    manifest["frames"]["3"] = "0123456789abcdef"
    lying = tmp_path / "lying.tar.gz"
    write_members(lying, manifest, files)
    async with bare_database(dreamcatcher_server_dsn) as bare:
        with pytest.raises(
            SnapshotVerificationError, match=r"frame 3: .* the manifest says 0123456789abcdef"
        ):
            await import_snapshot(bare, lying)
        assert await table_counts(bare) == {}  # not even the schema it applied remains


async def test_an_altered_log_is_refused(dreamcatcher_dsn: str, archive: Path, tmp_path: Path) -> None:
    manifest, files = read_members(archive)

    def rewrite(doc: dict[str, Any]) -> None:
        doc["payload"]["posts_created"].append({"number": 99, "title": "rewritten history"})

    files["deltas.jsonl"] = edit_lines(files["deltas.jsonl"], rewrite)  # a delta of frame 1
    lying = tmp_path / "lying.tar.gz"
    write_members(lying, manifest, files)
    before = await table_counts(dreamcatcher_dsn)
    with pytest.raises(SnapshotVerificationError, match="frame 1: the archive's log merges to state hash"):
        await import_snapshot(dreamcatcher_dsn, lying, world="copy")
    assert await table_counts(dreamcatcher_dsn) == before


async def test_an_altered_archived_state_is_refused(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path
) -> None:
    manifest, files = read_members(archive)
    first = orjson.loads(files["state.jsonl"].splitlines()[0])

    def alter(doc: dict[str, Any]) -> None:
        doc["data"]["forged"] = True

    files["state.jsonl"] = edit_lines(files["state.jsonl"], alter)
    lying = tmp_path / "lying.tar.gz"
    write_members(lying, manifest, files)
    with pytest.raises(SnapshotVerificationError, match=f"{first['kind']} {first['ekey']} differs"):
        await import_snapshot(dreamcatcher_dsn, lying, world="copy")
    assert await hashes(dreamcatcher_dsn, "copy") == {}


async def test_checksums_that_do_not_match_are_refused(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path
) -> None:
    manifest, files = read_members(archive)
    files["state.jsonl"] = files["state.jsonl"].replace(b'"kind"', b'"Kind"', 1)
    bad = tmp_path / "bad.tar.gz"
    write_members(bad, manifest, files, fix=False)
    with pytest.raises(SnapshotCorruptError, match=r"member state\.jsonl is damaged"):
        await import_snapshot(dreamcatcher_dsn, bad, world="copy")


async def test_a_target_world_with_data_is_refused(dreamcatcher_dsn: str, archive: Path) -> None:
    before = await table_counts(dreamcatcher_dsn)
    with pytest.raises(WorldNotEmptyError, match="world 'w' already has data"):
        await import_snapshot(dreamcatcher_dsn, archive)
    assert await table_counts(dreamcatcher_dsn) == before


async def test_what_is_not_a_snapshot_is_refused(
    dreamcatcher_dsn: str, archive: Path, tmp_path: Path
) -> None:
    text = tmp_path / "text.tar.gz"
    text.write_bytes(gzip.compress(b"hello\n" * 100))
    with pytest.raises(SnapshotCorruptError):
        await import_snapshot(dreamcatcher_dsn, text)
    plain = tmp_path / "plain.tar.gz"
    with tarfile.open(plain, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(SnapshotFormatError, match="not a dreamcatcher snapshot"):
        await import_snapshot(dreamcatcher_dsn, plain)
    manifest, files = read_members(archive)
    manifest["version"] = 99
    future = tmp_path / "future.tar.gz"
    write_members(future, manifest, files)
    with pytest.raises(SnapshotFormatError, match="version 99"):
        await import_snapshot(dreamcatcher_dsn, future)
    with pytest.raises(FileNotFoundError):
        await import_snapshot(dreamcatcher_dsn, tmp_path / "missing.tar.gz")


async def test_export_of_a_frame_not_merged_is_refused(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    await build_world(dreamcatcher_dsn)
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world=W) as dc:
        await dc.insert_delta(8, {"posts_created": [{"number": 8}]})
    with pytest.raises(FrameNotMergedError, match="frame 8 is not merged"):
        await export_snapshot(dreamcatcher_dsn, W, 9, tmp_path / "x.tar.gz")
    assert not (tmp_path / "x.tar.gz").exists()


def test_export_and_import_commands(
    dreamcatcher_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    path = tmp_path / "snapshot.tar.gz"
    assert main(["--dsn", dreamcatcher_dsn, "export", "--world", W, "--frame", "6", str(path)]) == 0
    assert "exported world 'w' at frame 6" in capsys.readouterr().out
    assert main(["--dsn", dreamcatcher_dsn, "import", str(path), "--world", "copy", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["world"] == "copy"
    assert main(["--dsn", dreamcatcher_dsn, "import", str(path), "--world", "copy"]) == 1
    assert "world 'copy' already has data" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["--dsn", dreamcatcher_dsn, "import", str(path), "--world", "other"]) == 1
    assert "dreamcatcher: error:" in capsys.readouterr().err


# -- export-dir: the git layout ---------------------------------------------------------------


async def roundtrip_dir(dsn: str, world: str, target_dsn: str, target: str, directory: Path) -> Any:
    report = await export_dir(dsn, world, directory)
    ingested = await ingest_directory(target_dsn, directory, target, timeout=20)
    assert ingested.ok and ingested.unreadable == [] and ingested.conflict == 0
    assert ingested.notes == []  # no file name disagrees with its document
    return report


def strip_envelope(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    out = []
    for frame, stream, utc, late, payload in rows:
        doc = orjson.loads(payload)
        out.append((frame, stream, utc, late, {k: v for k, v in doc.items() if k not in ENVELOPE}))
    return out


async def test_export_dir_then_ingest_into_another_database_gives_identical_hashes(
    dreamcatcher_dsn: str, dreamcatcher_server_dsn: str, dreamcatcher_template_db: str, tmp_path: Path
) -> None:
    await insert_each(dreamcatcher_dsn, W, scenario())
    await close_frames(dreamcatcher_dsn, W, [1, 2, 3, 4])
    await merge_until_idle(dreamcatcher_dsn, W)
    async with extra_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as (other, _):
        report = await roundtrip_dir(dreamcatcher_dsn, W, other, "from-git", tmp_path / "deltas")
        assert (report.files, report.frames, report.late) == (13, 4, 0)
        assert await hashes(other, "from-git") == await hashes(dreamcatcher_dsn, W)
        source, copy = await fingerprint(dreamcatcher_dsn, W), await fingerprint(other, "from-git")
        assert copy["versions"] == source["versions"] and copy["quarantine"] == source["quarantine"]
        # the same deltas; the documents gained their envelope (frame, stream_id, utc)
        assert strip_envelope(copy["deltas"]) == strip_envelope(source["deltas"])
    names = sorted(p.name for p in (tmp_path / "deltas").iterdir())
    assert "frame-1-Z.json" in names and "frame-1~1-Z.json" in names  # Z wrote twice in frame 1
    assert parse_file_name("frame-1~1-Z.json") == (None, None)  # outside ingest's name pattern


async def test_export_dir_keeps_real_fleet_files_as_they_were(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    await ingest_directory(dreamcatcher_dsn, CORPUS, "fleet", timeout=20)
    report = await roundtrip_dir(dreamcatcher_dsn, "fleet", dreamcatcher_dsn, "fleet-2", tmp_path / "out")
    assert report.envelope_added == 0  # every corpus document already says its frame, stream and time
    assert await hashes(dreamcatcher_dsn, "fleet-2") == await hashes(dreamcatcher_dsn, "fleet")
    assert (await fingerprint(dreamcatcher_dsn, "fleet-2"))["deltas"] == (
        await fingerprint(dreamcatcher_dsn, "fleet")
    )["deltas"]


async def test_export_dir_with_awkward_stream_names(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    streams = ["a/b", unicodedata.normalize("NFD", "über"), "Up", "up", "x" * 200, "..", "frame-3-x"]
    deltas = [
        D(s, 3, at(i, k), {"posts_created": [{"number": i * 10 + k, "by": s}], "observations": [{"k": k}]})
        for i, s in enumerate(streams)
        for k in range(3)
    ]
    await insert_each(dreamcatcher_dsn, W, deltas)
    await close_frames(dreamcatcher_dsn, W, [3])
    await merge_until_idle(dreamcatcher_dsn, W)
    report = await roundtrip_dir(dreamcatcher_dsn, W, dreamcatcher_dsn, "copy", tmp_path / "out")
    assert report.files == len(deltas) == len(list((tmp_path / "out").iterdir()))
    assert report.not_ingestable == []
    assert await hashes(dreamcatcher_dsn, "copy") == await hashes(dreamcatcher_dsn, W)
    async with connection(dreamcatcher_dsn) as conn:
        streams_back = await conn.fetch(
            "SELECT DISTINCT stream_id FROM dreamcatcher.delta_log WHERE world = 'copy'"
        )
    assert {r[0] for r in streams_back} == set(streams)


async def test_export_dir_counts_late_deltas_that_do_not_round_trip(
    dreamcatcher_dsn: str, tmp_path: Path
) -> None:
    await build_world(dreamcatcher_dsn)
    report = await roundtrip_dir(dreamcatcher_dsn, W, dreamcatcher_dsn, "copy", tmp_path / "out")
    assert report.late == 1
    source, copy = await hashes(dreamcatcher_dsn, W), await hashes(dreamcatcher_dsn, "copy")
    # the deferred delta of frame 2 merged into frame 6 here, into frame 2 after ingest
    assert copy[1] == source[1]
    assert copy[2] != source[2]


async def test_export_dir_refuses_a_directory_with_delta_files(dreamcatcher_dsn: str, tmp_path: Path) -> None:
    await build_world(dreamcatcher_dsn)
    (tmp_path / "frame-1-s.JSON").write_text("{}")
    with pytest.raises(ExportDirError, match="already holds"):
        await export_dir(dreamcatcher_dsn, W, tmp_path)
    (tmp_path / "frame-1-s.JSON").unlink()
    (tmp_path / "README.md").write_text("not a delta")
    report = await export_dir(dreamcatcher_dsn, W, tmp_path, to_frame=2)
    assert report.files == 9 + 1 and report.frames == 2  # frames 1 and 2, and the late delta of 2


def test_export_dir_command(
    dreamcatcher_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(build_world(dreamcatcher_dsn))
    out = tmp_path / "deltas"
    assert main(["--dsn", dreamcatcher_dsn, "export-dir", "--world", W, str(out)]) == 0
    text = capsys.readouterr().out
    assert "wrote 15 delta files of 5 frames" in text and "1 late (deferred)" in text
    assert main(["--dsn", dreamcatcher_dsn, "export-dir", "--world", W, str(out)]) == 1
    assert "already holds *.json files" in capsys.readouterr().err


# -- a hostile archive: every value used is checked, every read bounded before it happens ------


async def test_a_forged_last_merged_frame_is_refused(
    dreamcatcher_server_dsn: str, archive: Path, tmp_path: Path
) -> None:
    """The horizon of the imported world comes from the frames merged, never from the manifest:
    a forged last_merged_frame would make every later frame of the world late."""
    manifest, files = read_members(archive)
    manifest["last_merged_frame"] = 2**53 - 1
    forged = tmp_path / "forged.tar.gz"
    write_members(forged, manifest, files)
    async with bare_database(dreamcatcher_server_dsn) as bare:
        with pytest.raises(SnapshotCorruptError, match="last_merged_frame"):
            await import_snapshot(bare, forged)
        assert await table_counts(bare) == {}


async def test_a_forged_world_setting_is_refused(
    dreamcatcher_server_dsn: str, archive: Path, tmp_path: Path
) -> None:
    manifest, files = read_members(archive)
    manifest["world_config"]["max_frame_ahead"] = -5
    forged = tmp_path / "forged.tar.gz"
    write_members(forged, manifest, files)
    async with bare_database(dreamcatcher_server_dsn) as bare:
        with pytest.raises(SnapshotCorruptError, match=r"world_config\.max_frame_ahead"):
            await import_snapshot(bare, forged)
        assert await table_counts(bare) == {}


def _bomb(path: Path, header: bytes) -> Path:
    """A gzip file whose tar stream starts with ``header`` followed by zeros (compresses to little)."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(header)
        zeros = bytes(1 << 20)
        for _ in range(130):
            out.write(zeros)
    return path


def _tar_header(name: str, size: int, typeflag: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, typeflag
    return info.tobuf(format=tarfile.USTAR_FORMAT)


async def test_a_huge_tar_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A pax header declares its own size and tarfile reads it whole: 120 MiB is refused unread."""
    bomb = _bomb(tmp_path / "bomb.tar.gz", _tar_header("././@PaxHeader", 120 << 20, tarfile.XHDTYPE))
    tracemalloc.start()
    try:
        with pytest.raises(SnapshotCorruptError, match="asks for a read of"):
            check_archive(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 80 << 20, f"{peak} bytes allocated to refuse it"


async def test_a_line_longer_than_any_delta_is_refused(archive: Path, tmp_path: Path) -> None:
    manifest, files = read_members(archive)
    files["deltas.jsonl"] = b"0" * (MAX_LINE_BYTES + 10) + b"\n"
    long_line = tmp_path / "long.tar.gz"
    write_members(long_line, manifest, files)
    with pytest.raises(SnapshotCorruptError, match="a line longer than"):
        check_archive(long_line)
