"""The test harness itself: a real PostgreSQL, a fresh migrated database per test."""

from __future__ import annotations

import os

import asyncpg
import psycopg
import pytest

from dreamcatcher_pg.testing import ENV_BACKEND, ServerInfo, database_dsn

#: current_database() of each test that ran ``test_each_test_gets_its_own_database``.
_seen_databases: list[str] = []


async def test_fresh_database_has_the_schema(dreamcatcher_dsn: str) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('dreamcatcher.delta_log') IS NOT NULL")
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log") == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_its_own_database(
    run: int, dreamcatcher_dsn: str, dreamcatcher_server_dsn: str
) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        # What an earlier test left behind is not here...
        assert await conn.fetchval("SELECT to_regclass('public.harness_marker')") is None
        await conn.execute("CREATE TABLE public.harness_marker (run int)")
    finally:
        await conn.close()
    assert name not in _seen_databases
    server = await asyncpg.connect(dreamcatcher_server_dsn)
    try:
        existing = {r["datname"] for r in await server.fetch("SELECT datname FROM pg_database")}
    finally:
        await server.close()
    assert name in existing
    # ...and the earlier test's database was dropped after it.
    assert not existing.intersection(_seen_databases)
    _seen_databases.append(name)


async def test_it_is_really_postgresql(dreamcatcher_dsn: str, dreamcatcher_server_info: ServerInfo) -> None:
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        version = await conn.fetchval("SELECT version()")
        version_num = int(await conn.fetchval("SHOW server_version_num"))
    finally:
        await conn.close()
    assert version.startswith("PostgreSQL ")
    assert version_num == dreamcatcher_server_info.server_version_num
    assert version_num >= 130000  # DROP DATABASE ... WITH (FORCE)
    assert dreamcatcher_server_info.backend in ("dsn", "testcontainers", "embedded")
    forced = os.environ.get(ENV_BACKEND, "auto")
    if forced != "auto":
        assert dreamcatcher_server_info.backend == forced


async def test_keyword_dsn_converts_to_a_uri_both_drivers_accept(dreamcatcher_dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dreamcatcher_dsn)
    keywords = psycopg.conninfo.make_conninfo("", **params)
    dsn = database_dsn(keywords, str(params["dbname"]))
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == params["dbname"]
    finally:
        await conn.close()
    with psycopg.connect(dsn) as sync_conn:
        row = sync_conn.execute("SELECT current_database()").fetchone()
    assert row == (params["dbname"],)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:p@db.example:5433/ci", "postgresql://u:p@db.example:5433/t1"),
        ("postgres://u@h/ci?sslmode=disable", "postgres://u@h/t1?sslmode=disable"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/x/pgdata",
            "postgresql://postgres:@/t1?host=/tmp/x/pgdata",
        ),
        ("postgresql:///ci?host=/sock&dbname=ci", "postgresql:///t1?host=/sock"),
        (
            "host=/tmp/sock port=5432 user=postgres dbname=ci",
            "postgresql://postgres@/t1?host=/tmp/sock&port=5432",
        ),
        ("host=127.0.0.1 user=u password=p@ss dbname=ci", "postgresql://u:p%40ss@127.0.0.1/t1"),
        ("host=::1 port=5433 dbname=ci", "postgresql://[::1]:5433/t1"),
    ],
)
def test_database_dsn(dsn: str, expected: str) -> None:
    assert database_dsn(dsn, "t1") == expected


async def test_init_twice_is_safe_and_keeps_data(dreamcatcher_dsn: str) -> None:
    from dreamcatcher_pg import DeltaClient
    from dreamcatcher_pg.ops.schema import init_database

    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
        await dc.insert_delta(1, {"observations": [1]})
    await init_database(dreamcatcher_dsn)
    await init_database(dreamcatcher_dsn)
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.deltas") == 1
    finally:
        await conn.close()


async def test_running_merger_merges_what_a_test_writes(dreamcatcher_dsn: str) -> None:
    from dreamcatcher_pg import DeltaClient
    from dreamcatcher_pg.testing import running_merger

    async with running_merger(dreamcatcher_dsn, "w") as merger:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
            await dc.insert_delta(1, {"posts_created": [{"number": 1, "title": "t"}]})
            await dc.close_frame(1)
            await dc.wait_merged(1, timeout=10)
        assert merger.get_stats()["frames_merged"] == 1
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        assert await conn.fetchval("SELECT data->>'title' FROM dreamcatcher.posts WHERE world = 'w'") == "t"
        # the merger let go of the world's leader lock when the block ended
        assert await conn.fetchval("SELECT pg_try_advisory_lock(dreamcatcher.leader_lock_key('w'))")
    finally:
        await conn.close()


async def test_payload_limit_comes_from_the_environment(
    dreamcatcher_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dreamcatcher_pg import DeltaClient, InvalidDeltaError

    monkeypatch.setenv("DREAMCATCHER_MAX_PAYLOAD_BYTES", "64")
    async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
        await dc.insert_delta(1, {"observations": ["small"]})
        with pytest.raises(InvalidDeltaError, match="over the limit of 64"):
            await dc.insert_delta(1, {"observations": ["x" * 100]})
