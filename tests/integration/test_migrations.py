"""Versioned migrations: init on fresh, current and previous-release databases, the version
check at connect, edited functions, ``init --plan`` and ``dreamcatcher sql``.

The previous release's database is built from its own SQL (tests/data/schema_previous, copied
from commit bdaf6f5, the commit before migrations existed) and written and merged through that
schema's own SQL functions, not through today's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql

from dreamcatcher_pg import DeltaClient, Merger
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.errors import SchemaEditedError, SchemaVersionError
from dreamcatcher_pg.ops.migrations import (
    Migration,
    check_schema_version,
    migrate,
    migrations,
    migrations_sql,
    package_schema_version,
    plan_migrations,
    schema_status,
)
from dreamcatcher_pg.testing import database_dsn
from tests.support.helpers import at, connection, recomputed_hash, scenario

PREVIOUS = Path(__file__).parent.parent / "data" / "schema_previous"
VERSION = package_schema_version()


@contextlib.asynccontextmanager
async def empty_database(server_dsn: str) -> AsyncIterator[str]:
    """A database with nothing of dreamcatcher in it; dropped after."""
    name = f"dc_mig_{os.getpid()}_{secrets.token_hex(4)}"
    async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_dsn(server_dsn, name)
    finally:
        async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the schema dreamcatcher, as JSON objects."""
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'dreamcatcher' ORDER BY tablename"
    )
    out = {}
    for (table,) in tables:
        rows = await conn.fetch(
            f"SELECT to_jsonb(t)::text FROM dreamcatcher.{table} t"
        )  # names from pg_tables
        out[table] = [json.loads(r[0]) for r in rows]
    return out


def kept(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> bool:
    """Is every row of ``before`` still in ``after`` (on the columns it had)?"""
    if not before:
        return True
    columns = sorted(before[0])
    key = lambda row: json.dumps([row.get(c) for c in columns])  # noqa: E731
    return not (Counter(map(key, before)) - Counter(map(key, after)))


async def build_previous_release(dsn: str) -> None:
    """The database `dreamcatcher init` of the previous release made, with a history written and
    merged through that schema's SQL functions: frames 1-3 merged, a late delta deferred,
    frame 4 closed and not merged, frame 5 open."""
    async with connection(dsn) as conn:
        await conn.execute((PREVIOUS / "schema.sql").read_text(encoding="utf-8"))
        await conn.execute((PREVIOUS / "rules_default.sql").read_text(encoding="utf-8"))
        await conn.execute("INSERT INTO dreamcatcher.worlds (world, late_policy) VALUES ('old', 'defer')")
        for d in scenario():
            status = await conn.fetchval(
                "SELECT dreamcatcher.append_delta('old', $1, $2, $3, $4::jsonb)",
                d.stream,
                d.frame,
                d.utc,
                json.dumps(d.payload),
            )
            assert status == "stored", (d, status)
        for frame in (1, 2, 3):
            assert await conn.fetchval("SELECT dreamcatcher.close_frame('old', $1)", frame) == "closed"
            async with conn.transaction():
                assert await conn.fetchval("SELECT dreamcatcher.claim_next_frame('old')") == frame
                assert await conn.fetchval("SELECT dreamcatcher.merge_frame('old', $1)", frame) is not None
        late = {"posts_updated": [{"number": 2, "title": "late"}]}
        assert (
            await conn.fetchval(
                "SELECT dreamcatcher.append_delta('old', 'L', 2, $1, $2::jsonb)", at(50), json.dumps(late)
            )
            == "deferred"
        )
        assert await conn.fetchval("SELECT dreamcatcher.close_frame('old', 4)") == "closed"
        assert (
            await conn.fetchval(
                "SELECT dreamcatcher.append_delta('old', 'a', 5, $1, $2::jsonb)",
                at(60),
                json.dumps({"observations": [{"id": "o9"}]}),
            )
            == "stored"
        )


async def test_upgrade_from_the_previous_release_keeps_everything(dreamcatcher_server_dsn: str) -> None:
    async with empty_database(dreamcatcher_server_dsn) as dsn:
        await build_previous_release(dsn)
        async with connection(dsn) as conn:
            before = await snapshot(conn)
            hashes = dict(
                await conn.fetch(
                    "SELECT frame, state_hash FROM dreamcatcher.frame_log"
                    " WHERE world = 'old' AND status = 'merged'"
                )
            )
            assert sorted(hashes) == [1, 2, 3] and all(hashes.values())

            status = await schema_status(conn)
            assert (status.state, status.ok, status.database_version) == ("unversioned", False, None)
            plan = await plan_migrations(conn)
            assert plan.state == "unversioned" and [m.version for m in plan.pending] == list(
                range(1, VERSION + 1)
            )
            assert "keeping its data" in plan.describe()

        # the new client and merger refuse the old schema, saying what to run
        with pytest.raises(SchemaVersionError, match=r"no version .* run `dreamcatcher init`"):
            async with DeltaClient.connect(dsn, stream_id="s", world="old"):
                pass
        with pytest.raises(SchemaVersionError):
            await Merger(dsn, "old", poll_interval=0.05).run()

        async with connection(dsn) as conn:
            result = await migrate(conn)
            assert result.before is None and result.after == VERSION
            assert await check_schema_version(conn) == VERSION
            after = await snapshot(conn)
            lost = [t for t in before if not kept(before[t], after.get(t, []))]
            assert lost == [], f"rows lost or changed in {lost}"
            # the frames and the log are exactly as they were, hashes included
            for table in ("delta_log", "frame_log", "entity_versions", "deferred_log", "quarantine_log"):
                assert len(after[table]) == len(before[table]), table
            assert (
                dict(
                    await conn.fetch(
                        "SELECT frame, state_hash FROM dreamcatcher.frame_log WHERE status = 'merged'"
                    )
                )
                == hashes
            )
            # and each is the hash of the state the upgraded schema reads back
            for frame, value in hashes.items():
                assert await recomputed_hash(conn, "old", frame) == value
            assert (await plan_migrations(conn)).pending == ()

        # today's client and merger carry on where the old release stopped
        async with DeltaClient.connect(dsn, stream_id="new", world="old") as dc:
            assert (
                await dc.insert_delta(5, {"observations": [{"id": "o10"}]}, utc=at(70))
            ).status == "stored"
            assert await dc.close_frame(5) == "closed"
        merger = Merger(dsn, "old")
        try:
            merged = await merger.run_until_idle()
        finally:
            await merger.aclose()
        assert [m.frame for m in merged] == [4, 5]
        async with connection(dsn) as conn:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM dreamcatcher.deferred_log WHERE world = 'old' AND merged_in = 4"
                )
                == 1
            )
            for m in merged:
                assert await recomputed_hash(conn, "old", m.frame) == m.state_hash
            # the same log merged from scratch by today's code gives the old release's hashes
            await conn.execute(
                "INSERT INTO dreamcatcher.worlds (world) VALUES ('again');"
                " INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
                " SELECT 'again', frame, stream_id, utc, payload FROM dreamcatcher.delta_log"
                " WHERE world = 'old' AND frame <= 3 AND NOT late;"
                " INSERT INTO dreamcatcher.frame_log (world, frame, status)"
                " SELECT 'again', frame, 'closed' FROM generate_series(1, 3) frame"
            )
        merger = Merger(dsn, "again")
        try:
            again = await merger.run_until_idle()
        finally:
            await merger.aclose()
        assert {m.frame: m.state_hash for m in again} == hashes


async def test_fresh_database_gets_every_migration_once(dreamcatcher_server_dsn: str) -> None:
    async with empty_database(dreamcatcher_server_dsn) as dsn, connection(dsn) as conn:
        plan = await plan_migrations(conn)
        assert plan.state == "missing" and len(plan.pending) == VERSION
        status = await schema_status(conn)
        assert not status.ok and "no dreamcatcher schema" in status.message
        # two inits at once: the lock serialises them, the second finds nothing to do
        results = await asyncio.gather(*(_migrate_dsn(dsn) for _ in range(2)))
        assert sorted(len(r) for r in results) == [0, VERSION]
        rows = await conn.fetch(
            "SELECT version, name, checksum, package_version FROM dreamcatcher.schema_version"
        )
        assert [(r["version"], r["name"], r["checksum"]) for r in sorted(rows)] == [
            (m.version, m.name, m.checksum) for m in migrations()
        ]
        assert await conn.fetchval("SELECT dreamcatcher.schema_version()") == VERSION
        assert (
            await plan_migrations(conn)
        ).describe() == f"schema dreamcatcher is up to date at version {VERSION}"


async def _migrate_dsn(dsn: str) -> tuple[int, ...]:
    async with connection(dsn) as conn:
        return tuple(m.version for m in (await migrate(conn)).applied)


async def test_client_and_merger_refuse_another_schema_version(dreamcatcher_dsn: str) -> None:
    async with connection(dsn := dreamcatcher_dsn) as conn:
        assert (await schema_status(conn)).ok

        async def pretend(version: int) -> None:
            await conn.execute(
                "CREATE OR REPLACE FUNCTION dreamcatcher.schema_version() RETURNS integer"
                f" LANGUAGE sql IMMUTABLE AS $$ SELECT {version} $$"
            )

        await pretend(VERSION + 1)
        with pytest.raises(
            SchemaVersionError, match=rf"version {VERSION + 1}, newer .* upgrade dreamcatcher_pg"
        ) as e:
            async with DeltaClient.connect(dsn, stream_id="s", world="w"):
                pass
        assert (e.value.database_version, e.value.package_version) == (VERSION + 1, VERSION)
        with pytest.raises(SchemaVersionError, match="newer"):
            await Merger(dsn, "w", poll_interval=0.05).run()
        # init does not downgrade: it refuses too (it reads the versions recorded)
        await conn.execute(
            "INSERT INTO dreamcatcher.schema_version (version, name, checksum, package_version)"
            " VALUES ($1, 'future', 'x', '9.9')",
            VERSION + 1,
        )
        with pytest.raises(SchemaVersionError, match="upgrade dreamcatcher_pg"):
            await migrate(conn)
        await conn.execute("DELETE FROM dreamcatcher.schema_version WHERE version > $1", VERSION)

        await pretend(VERSION - 1)
        message = rf"database schema is version {VERSION - 1}, this dreamcatcher_pg .* needs {VERSION}: run"
        with pytest.raises(SchemaVersionError, match=message):
            async with DeltaClient.connect(dsn, stream_id="s", world="w", pool_size=2):
                pass
        status = await schema_status(conn)
        assert (status.state, status.ok, status.database_version) == ("older", False, VERSION - 1)

        await pretend(VERSION)
        async with DeltaClient.connect(dsn, stream_id="s", world="w") as dc:
            assert (await dc.insert_delta(1, {"observations": [1]})).status == "stored"


async def test_missing_schema_is_a_clear_error(dreamcatcher_server_dsn: str) -> None:
    async with empty_database(dreamcatcher_server_dsn) as dsn:
        with pytest.raises(SchemaVersionError, match=r"no dreamcatcher schema.*run `dreamcatcher init`"):
            async with DeltaClient.connect(dsn, stream_id="s", world="w"):
                pass


async def test_init_refuses_to_replace_an_edited_function(dreamcatcher_dsn: str) -> None:
    edited = "-- edited by hand"
    async with connection(dreamcatcher_dsn) as conn:
        definition = await conn.fetchval(
            "SELECT pg_get_functiondef('dreamcatcher.merge_frame(text, bigint)'::regprocedure)"
        )
        await conn.execute(definition.replace("AS $function$", f"AS $function${edited}", 1))

        async def source() -> str:
            value = await conn.fetchval(
                "SELECT prosrc FROM pg_proc WHERE oid = 'dreamcatcher.merge_frame'::regproc"
            )
            assert isinstance(value, str)
            return value

        # up to date: init replaces nothing, so the edit stays and init succeeds
        assert (await migrate(conn)).applied == ()
        assert edited in await source()
        # a migration to apply (here: the version forgotten): init refuses, and changes nothing
        await conn.execute("DELETE FROM dreamcatcher.schema_version")
        with pytest.raises(
            SchemaEditedError, match=r"dreamcatcher\.merge_frame\(p_world text, p_frame bigint\)"
        ) as e:
            await migrate(conn)
        assert e.value.functions == ["dreamcatcher.merge_frame(p_world text, p_frame bigint)"]
        assert edited in await source()
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.schema_version") == 0
        # --force replaces it
        assert len((await migrate(conn, force=True)).applied) == VERSION
        assert edited not in await source()
        assert await migrate(conn) is not None


def test_cli_init_plan_and_sql(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", dreamcatcher_dsn, "init", "--plan"]) == 0
    assert capsys.readouterr().out.strip() == f"schema dreamcatcher is up to date at version {VERSION}"
    assert main(["--dsn", dreamcatcher_dsn, "init"]) == 0
    assert capsys.readouterr().out.strip() == f"schema dreamcatcher is up to date at version {VERSION}"
    assert main(["sql"]) == 0
    script = capsys.readouterr().out
    assert script == migrations_sql()
    assert "CREATE TABLE IF NOT EXISTS dreamcatcher.delta_log" in script
    assert (
        "INSERT INTO dreamcatcher.schema_version" in script and "INSERT INTO dreamcatcher.rule_sets" in script
    )
    assert main(["sql", "--from", str(VERSION)]) == 0
    assert "CREATE TABLE IF NOT EXISTS dreamcatcher.delta_log" not in capsys.readouterr().out
    assert main(["sql", "--from", str(VERSION + 1)]) == 2


async def test_the_sql_applied_by_another_tool_makes_a_working_database(dreamcatcher_server_dsn: str) -> None:
    async with empty_database(dreamcatcher_server_dsn) as dsn:
        async with connection(dsn) as conn:
            plan = (await plan_migrations(conn)).describe()
            assert "would apply" in plan and migrations()[0].filename in plan
            async with conn.transaction():  # what Flyway does with one migration
                await conn.execute(migrations_sql())
            assert await check_schema_version(conn) == VERSION
            assert (await migrate(conn)).applied == ()  # init agrees: nothing to do
        async with DeltaClient.connect(dsn, stream_id="s", world="w") as dc:
            await dc.insert_delta(1, {"posts_created": [{"number": 1, "title": "t"}]})
            await dc.close_frame(1)
        merger = Merger(dsn, "w")
        try:
            assert [m.frame for m in await merger.run_until_idle()] == [1]
        finally:
            await merger.aclose()


def test_the_merger_command_stops_on_an_unversioned_database(
    dreamcatcher_server_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"dc_mig_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(dreamcatcher_server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        dsn = database_dsn(dreamcatcher_server_dsn, name)
        assert main(["--dsn", dsn, "init", "--plan"]) == 0
        assert "no dreamcatcher schema" in capsys.readouterr().out
        assert main(["--dsn", dsn, "merger", "--world", "w"]) == 1
        err = capsys.readouterr().err
        assert "no dreamcatcher schema, this dreamcatcher_pg" in err and "run `dreamcatcher init`" in err
    finally:
        with psycopg.connect(dreamcatcher_server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


async def test_roles_are_the_package_s_functions_not_edits(dreamcatcher_dsn: str) -> None:
    from dreamcatcher_pg.ops.roles import create_roles, role_names
    from tests.support.roles import cleanup_roles, unique_prefix

    prefix = unique_prefix()
    with cleanup_roles([dreamcatcher_dsn], list(role_names(prefix))):
        await create_roles(dreamcatcher_dsn, prefix=prefix)  # replaces check_writer, among others
        async with connection(dreamcatcher_dsn) as conn:
            await conn.execute("DELETE FROM dreamcatcher.schema_version")  # a migration to apply
            assert len((await migrate(conn)).applied) == VERSION  # no SchemaEditedError
            assert await conn.fetchval(
                "SELECT prosecdef FROM pg_proc WHERE oid = 'dreamcatcher.append_delta'::regproc"
            )  # the roles' SECURITY DEFINER entry points are restored


def test_the_baseline_is_the_previous_release_s_schema_unchanged() -> None:
    """0001 is what 0.1.0's init applied (after its header): an applied migration is never edited."""
    baseline = migrations()[0]
    assert baseline.filename == "0001_baseline.sql"
    previous = (PREVIOUS / "schema.sql").read_text(encoding="utf-8").split("\n", 1)[1]
    body = baseline.sql.split("\n-- dreamcatcher_pg schema: the append-only delta log", 1)[1]
    assert "-- dreamcatcher_pg schema: the append-only delta log" + body == previous, (
        "sql/migrations/0001_baseline.sql is no longer the schema of 0.1.0 (tests/data/schema_previous/"
        "schema.sql, commit bdaf6f5). An applied migration is never edited: put the change in a new "
        "migration. (A merge of a branch that edited sql/schema.sql, merge.sql, rules.sql, "
        "timetravel.sql or views.sql may have put its edit into either of those two files.)"
    )


async def test_a_new_migration_is_applied_alone_and_checked_for(
    dreamcatcher_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The next release's path: a database at version N, a package with N + 1."""
    import dreamcatcher_pg.db.schema_version
    import dreamcatcher_pg.ops.migrations

    shipped = migrations()
    extra = Migration(
        VERSION + 1,
        "worlds_note",
        "ALTER TABLE dreamcatcher.worlds ADD COLUMN note text;\n"
        "CREATE OR REPLACE FUNCTION dreamcatcher.merge_frame(p_world text, p_frame bigint) RETURNS jsonb\n"
        "LANGUAGE sql AS $$\n"
        "SELECT dreamcatcher.merge_frame_with(p_world, p_frame, dreamcatcher.rules_at(p_world, p_frame))\n"
        "$$;\n",
    )
    for module in (dreamcatcher_pg.ops.migrations, dreamcatcher_pg.db.schema_version):
        monkeypatch.setattr(module, "migrations", lambda: (*shipped, extra))
    assert package_schema_version() == VERSION + 1
    message = rf"database schema is version {VERSION}, this dreamcatcher_pg .* needs {VERSION + 1}: run"
    with pytest.raises(SchemaVersionError, match=message):
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w"):
            pass
    async with connection(dreamcatcher_dsn) as conn:
        plan = await plan_migrations(conn)
        assert (plan.state, plan.database_version, plan.pending) == ("older", VERSION, (extra,))
        assert f"is at version {VERSION}" in plan.describe() and extra.filename in plan.describe()
        result = await migrate(conn)
        assert (result.before, result.after, result.applied) == (VERSION, VERSION + 1, (extra,))
        assert await conn.fetchval("SELECT dreamcatcher.schema_version()") == VERSION + 1
        assert await conn.fetchval("SELECT to_regclass('dreamcatcher.worlds') IS NOT NULL")
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM information_schema.columns"
                " WHERE table_schema = 'dreamcatcher' AND table_name = 'worlds' AND column_name = 'note'"
            )
            == 1
        )
        # an applied migration edited afterwards is reported, not applied again
        await conn.execute(
            "UPDATE dreamcatcher.schema_version SET checksum = 'x' WHERE version = $1", VERSION
        )
        with caplog.at_level("WARNING", logger="dreamcatcher_pg.ops.migrations"):
            assert (await migrate(conn)).applied == ()
        assert f"{shipped[-1].filename} was applied from a different file" in caplog.text
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
        assert (await dc.insert_delta(1, {"observations": [1]})).status == "stored"
