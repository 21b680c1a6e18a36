"""Untrusted writers: the roles of ``dreamcatcher init --roles`` (issue 3, item 6).

Every "cannot" is shown by trying it as a login user that is a member of the
role, and every "can" by doing it through the normal code path (DeltaClient,
Merger). Roles are cluster-wide: every test makes its own uniquely prefixed
roles and login users and drops them afterwards, also when the test fails.
"""

from __future__ import annotations

import asyncio
import re
import secrets

import asyncpg
import orjson
import psycopg
import pytest
from psycopg import sql

from dreamcatcher_pg import DatabaseError, DeltaClient, DreamcatcherError, Merger
from dreamcatcher_pg.ops.roles import (
    InvalidRolePrefixError,
    create_roles,
    grant_stream,
    revoke_stream,
    role_names,
)
from dreamcatcher_pg.ops.schema import init_database
from dreamcatcher_pg.testing import database_dsn
from tests.support.roles import (
    OTHER,
    STATE_TABLES,
    Cast,
    W,
    at,
    cleanup_roles,
    connect,
    log_counts,
    merge_as,
    refused,
    refused_by_database,
    run_cli,
    unique_prefix,
)

# -- creating the roles -------------------------------------------------------------


def test_role_names_are_prefixed_and_checked() -> None:
    assert role_names() == ("dreamcatcher_worker", "dreamcatcher_merger", "dreamcatcher_reader")
    assert role_names("acme") == ("acme_worker", "acme_merger", "acme_reader")
    for bad in ("", "x" * 57, "a\x00b", "\ud800"):
        with pytest.raises(InvalidRolePrefixError):
            role_names(bad)


async def test_init_roles_is_idempotent_and_reuses_roles_across_databases(
    dreamcatcher_dsn: str, dreamcatcher_server_dsn: str, dreamcatcher_template_db: str
) -> None:
    prefix = unique_prefix()
    names = role_names(prefix)
    other_db = f"dc_roles_{secrets.token_hex(4)}"
    other_dsn = database_dsn(dreamcatcher_server_dsn, other_db)
    with psycopg.connect(dreamcatcher_server_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(other_db), sql.Identifier(dreamcatcher_template_db)
            )
        )
    try:
        with cleanup_roles([dreamcatcher_dsn, other_dsn], list(names)):
            argv = ["--dsn", dreamcatcher_dsn, "init", "--roles", "--role-prefix", prefix]
            assert await asyncio.to_thread(run_cli, argv) == 0
            assert await asyncio.to_thread(run_cli, argv) == 0  # twice: nothing changes, nothing fails
            # the roles exist in the cluster now; another database gets its grants
            assert await create_roles(other_dsn, prefix=prefix) == list(names)
            for dsn in (dreamcatcher_dsn, other_dsn):
                async with connect(dsn) as conn:
                    rows = await conn.fetch(
                        "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
                        " FROM pg_roles WHERE rolname = ANY($1) ORDER BY rolname",
                        list(names),
                    )
                    assert [r["rolname"] for r in rows] == sorted(names)
                    assert not any(any(tuple(r)[1:]) for r in rows)  # NOLOGIN groups, no attributes
                    for role in names:
                        assert await conn.fetchval(
                            "SELECT has_schema_privilege($1, 'dreamcatcher', 'USAGE')", role
                        )
                    assert await conn.fetchval(
                        "SELECT has_function_privilege($1, 'dreamcatcher.append_delta(text, text, bigint,"
                        " timestamptz, jsonb)', 'EXECUTE')",
                        names.worker,
                    )
    finally:
        with psycopg.connect(dreamcatcher_server_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other_db)))


async def test_init_roles_refuses_a_superuser_role_of_the_same_name(dreamcatcher_dsn: str) -> None:
    prefix = unique_prefix()
    names = role_names(prefix)
    with cleanup_roles([dreamcatcher_dsn], list(names)):
        async with connect(dreamcatcher_dsn) as admin:
            await admin.execute(f'CREATE ROLE "{names.reader}" SUPERUSER NOLOGIN')
        with pytest.raises(DatabaseError) as caught:
            await create_roles(dreamcatcher_dsn, prefix=prefix)
        assert caught.value.sqlstate == "42501"
        async with connect(dreamcatcher_dsn) as admin:  # all or nothing: no other role was made
            assert (
                await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", list(names))
                == 1
            )


async def test_grant_stream_needs_an_existing_role(dreamcatcher_dsn: str) -> None:
    prefix = unique_prefix()
    with cleanup_roles([dreamcatcher_dsn], list(role_names(prefix))):
        await create_roles(dreamcatcher_dsn, prefix=prefix)
        async with connect(dreamcatcher_dsn) as admin:
            with pytest.raises(DatabaseError) as caught:
                await grant_stream(admin, W, "s1", f"{prefix}_nobody")
            assert caught.value.sqlstate == "42704"
            assert not await revoke_stream(admin, W, "s1")


# -- the worker ----------------------------------------------------------------------


async def test_worker_appends_its_own_stream_closes_its_frame_and_sees_it_merged(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        assert (
            await dc.insert_delta(1, {"posts_created": [{"number": 1, "title": "t"}]}, utc=at(1))
        ).status == ("stored")
        assert (
            await dc.insert_delta(1, {"posts_created": [{"number": 1, "title": "t"}]}, utc=at(1))
        ).status == ("duplicate")
        receipts = await dc.insert_deltas(
            [
                {"frame": 1, "payload": {"observations": [{"id": "o"}]}, "utc": at(2)},
                {"frame": 2, "payload": {"comments_added": [{"id": "c", "discussion": 1}]}, "utc": at(3)},
            ]
        )
        assert [r.status for r in receipts] == ["stored", "stored"]
        assert await dc.frame_status(1) == "open"
        assert await dc.close_frame(1) == "closed"
        assert await dc.close_frame(1) == "closed"  # idempotent
        # the other worker's stream is in the same frame: each writes its own
        async with DeltaClient.connect(cast.url(cast.worker2), stream_id="s2", world=W) as dc2:
            assert (await dc2.insert_delta(2, {"posts_created": [2]}, utc=at(4))).status == "stored"
        # a frame of its own world that has no row yet: closing opens and closes it
        assert await dc.close_frame(2) == "closed"
        waiter = asyncio.create_task(dc.wait_merged(2, timeout=10))
        assert await merge_as(cast.url(cast.merger), W) == [1, 2]
        await waiter
        assert await dc.frame_status(2) == "merged"
    async with connect(cast.url(cast.worker)) as conn:  # a worker reads what a reader reads
        assert await conn.fetchval("SELECT data ->> 'title' FROM dreamcatcher.posts WHERE number = 1") == "t"
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.deltas") == 4
        assert await conn.fetchval("SELECT dreamcatcher.session_owns_stream($1, 's1')", W)
        assert not await conn.fetchval("SELECT dreamcatcher.session_owns_stream($1, 's2')", W)


async def test_a_sync_worker_appends_through_the_entry_points_it_may_call(cast: Cast) -> None:
    """SyncDeltaClient tries append_open and open_frames first; a worker may call neither, and
    the client falls back to append_delta and append_deltas, every answer as usual."""
    from dreamcatcher_pg import SyncDeltaClient

    def work() -> None:
        with SyncDeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
            payload = {"posts_created": [{"number": 1, "title": "t"}]}
            assert dc.insert_delta(1, payload, utc=at(1)).status == "stored"
            assert dc.insert_delta(1, payload, utc=at(1)).status == "duplicate"
            assert dc.insert_delta(1, {"observations": [{"id": "o"}]}, utc=at(2)).status == "stored"
            batch = [
                {"frame": 2, "payload": {"observations": [{"id": f"b{n}"}]}, "utc": at(10 + n)}
                for n in range(3)
            ]
            assert [r.status for r in dc.insert_deltas(batch)] == ["stored"] * 3
            assert [r.status for r in dc.insert_deltas(batch)] == ["duplicate"] * 3

    await asyncio.to_thread(work)
    async with connect(cast.url(cast.worker)) as conn:
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.deltas") == 5


async def test_worker_cannot_write_a_stream_it_does_not_own(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as mine:
        await mine.insert_delta(5, {"observations": [1]}, utc=at(1))
    before = await log_counts(cast.dsn)
    attempts = [
        (W, "s2"),  # another worker's stream
        (W, "nobody"),  # a stream nobody owns
        (OTHER, "s1"),  # its own stream's name, in another world
        (OTHER, "o1"),
        ("brand-new-world", "s1"),
    ]
    for world, stream in attempts:
        async with DeltaClient.connect(cast.url(cast.worker), stream_id=stream, world=world) as dc:
            for frame in (5, 6):  # an existing open frame, and a frame that has no row yet
                with pytest.raises(DreamcatcherError) as caught:
                    await dc.insert_delta(frame, {"observations": [{"id": "forged"}]}, utc=at(9))
                assert refused_by_database(caught.value) == "42501", (world, stream, frame)
                with pytest.raises(DreamcatcherError) as caught:
                    await dc.insert_deltas(
                        [{"frame": frame, "payload": {"posts_created": [1]}, "utc": at(9)}]
                    )
                assert refused_by_database(caught.value) == "42501", (world, stream, frame)
    assert await log_counts(cast.dsn) == before  # no delta, no frame, no late attempt, no world

    # a closed frame: a foreign late attempt is refused too, and not recorded
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as mine:
        assert await mine.close_frame(5) == "closed"
    before = await log_counts(cast.dsn)
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s2", world=W) as dc:
        with pytest.raises(DreamcatcherError) as caught:
            await dc.insert_delta(5, {"observations": [{"id": "late and forged"}]}, utc=at(10))
        assert refused_by_database(caught.value) == "42501"
    assert await log_counts(cast.dsn) == before

    # revoking a stream takes effect at once
    async with connect(cast.dsn) as admin:
        assert await revoke_stream(admin, W, "s1")
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as mine:
        with pytest.raises(DreamcatcherError) as caught:
            await mine.insert_delta(7, {"observations": [1]}, utc=at(11))
        assert refused_by_database(caught.value) == "42501"


async def test_a_foreign_world_is_refused_before_any_of_its_locks_is_taken(cast: Cast) -> None:
    """A worker that replays a key of a world it does not write (nothing is inserted, so no check
    fired) or closes a frame that is already closed there, in a transaction it keeps open, held
    that frame's fence: the owner's close (or late insert) of the frame waited for it."""
    payload = {"observations": [1]}
    async with DeltaClient.connect(cast.url(cast.worker2), stream_id="o1", world=OTHER) as owner:
        await owner.insert_delta(3, payload, utc=at(1))
        await owner.insert_delta(4, payload, utc=at(1))
        assert await owner.close_frame(4) == "closed"
    text = orjson.dumps(payload).decode()
    async with (
        connect(cast.url(cast.worker)) as intruder,
        connect(cast.dsn) as admin,
        DeltaClient.connect(cast.url(cast.worker2), stream_id="o1", world=OTHER) as owner,
    ):
        pid = intruder.get_server_pid()
        for statement, args in (
            ("SELECT dreamcatcher.append_delta($1, 'o1', 3, $2, $3::text::jsonb)", (OTHER, at(1), text)),
            (
                "SELECT dreamcatcher.append_deltas($1, 'o1', '{3}', ARRAY[$2::timestamptz],"
                " ARRAY[$3::text::jsonb])",
                (OTHER, at(1), text),
            ),
            ("SELECT dreamcatcher.close_frame($1, 4)", (OTHER,)),
        ):
            tx = intruder.transaction()
            await tx.start()
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await intruder.fetchval(statement, *args)
            held = await admin.fetchval(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory'", pid
            )
            assert held == 0, statement
            await tx.rollback()
        # an intruder that does not even call: the owner is never held up by it
        intruder_tx = intruder.transaction()
        await intruder_tx.start()
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await intruder.fetchval("SELECT dreamcatcher.close_frame($1, 3)", OTHER)
        assert await asyncio.wait_for(owner.close_frame(3), 5) == "closed"
        await intruder_tx.rollback()


async def test_the_database_limits_a_worker_payload_whatever_its_client_allows(cast: Cast) -> None:
    async with connect(cast.dsn) as admin:
        await grant_stream(admin, W, "s1", cast.worker, max_payload_bytes=200)
        assert await admin.fetchval(
            "SELECT max_payload_bytes FROM dreamcatcher.stream_owners WHERE stream_id = 's2'"
        )
    small, big = {"observations": ["x" * 100]}, {"observations": ["x" * 300]}
    async with DeltaClient.connect(
        cast.url(cast.worker), stream_id="s1", world=W, max_payload_bytes=10**6
    ) as dc:
        assert (await dc.insert_delta(1, small, utc=at(1))).status == "stored"
        with pytest.raises(DreamcatcherError) as caught:
            await dc.insert_delta(1, big, utc=at(2))
        assert refused_by_database(caught.value) == "54000"
        with pytest.raises(DreamcatcherError) as caught:
            await dc.insert_deltas(
                [{"frame": 1, "payload": small, "utc": at(3)}, {"frame": 1, "payload": big}]
            )
        assert refused_by_database(caught.value) == "54000"  # the whole batch: nothing stored
        await dc.close_frame(1)
        with pytest.raises(DreamcatcherError) as caught:  # a late attempt is not recorded either
            await dc.insert_delta(1, big, utc=at(4))
        assert refused_by_database(caught.value) == "54000"
    async with connect(cast.url(cast.worker)) as conn:  # past the client: the same
        await refused(
            conn,
            "SELECT dreamcatcher.append_delta('w', 's1', 2, now(), $1::jsonb)",
            orjson.dumps({"blob": "x" * 10_000}).decode(),
            sqlstate="54000",
        )
    async with DeltaClient.connect(cast.dsn, stream_id="s1", world=W) as owner:  # the owner is not limited
        assert (await owner.insert_delta(2, big, utc=at(5))).status == "stored"
    assert await log_counts(cast.dsn) == (2, 2, 0, 1)


async def test_a_stream_owned_by_a_team_role_is_written_by_its_members(cast: Cast) -> None:
    team = f"{cast.names.worker}_team"
    with cleanup_roles([cast.dsn], [team]):
        async with connect(cast.dsn) as admin:
            await admin.execute(f'CREATE ROLE "{team}" NOLOGIN')
            await admin.execute(f'GRANT "{team}" TO "{cast.worker}"')
            await grant_stream(admin, W, "team-stream", team)
        async with DeltaClient.connect(cast.url(cast.worker), stream_id="team-stream", world=W) as dc:
            assert (await dc.insert_delta(1, {"observations": [1]}, utc=at(1))).status == "stored"
        async with DeltaClient.connect(cast.url(cast.worker2), stream_id="team-stream", world=W) as dc:
            with pytest.raises(DreamcatcherError) as caught:
                await dc.insert_delta(1, {"observations": [2]}, utc=at(2))
            assert refused_by_database(caught.value) == "42501"


async def test_worker_cannot_close_frames_of_other_worlds(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker2), stream_id="o1", world=OTHER) as theirs:
        await theirs.insert_delta(3, {"observations": [1]}, utc=at(1))
    before = await log_counts(cast.dsn)
    for world in (OTHER, "brand-new-world"):
        async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=world) as dc:
            for frame in (3, 4):  # an open frame, and one with no row yet
                with pytest.raises(DreamcatcherError) as caught:
                    await dc.close_frame(frame)
                assert refused_by_database(caught.value) == "42501", (world, frame)
    assert await log_counts(cast.dsn) == before
    async with connect(cast.dsn) as admin:
        assert (
            await admin.fetchval("SELECT status FROM dreamcatcher.frame_log WHERE world = $1", OTHER)
            == "open"
        )
    # the owner of a stream there may
    async with DeltaClient.connect(cast.url(cast.worker2), stream_id="o1", world=OTHER) as theirs:
        assert await theirs.close_frame(3) == "closed"


async def test_worker_cannot_touch_the_log_the_state_the_locks_or_the_roles(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        await dc.insert_delta(1, {"posts_created": [1]}, utc=at(1))
        await dc.close_frame(1)
    await merge_as(cast.url(cast.merger), W)
    async with connect(cast.url(cast.worker)) as conn:
        assert await conn.fetchval("SELECT session_user") == cast.worker
        statements = [
            # the log: not even its own stream directly, and never UPDATE/DELETE/TRUNCATE
            "INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
            " VALUES ('w', 9, 's1', now(), '{}')",
            "UPDATE dreamcatcher.delta_log SET payload = '{}'",
            "DELETE FROM dreamcatcher.delta_log",
            "TRUNCATE dreamcatcher.delta_log",
            # nor the cheap path of sessions that may write it (the client falls back by itself)
            "SELECT dreamcatcher.append_open('w', 's1', 1, now(), '{}')",
            # the merger's work
            "SELECT dreamcatcher.merge_frame('w', 1)",
            "SELECT dreamcatcher.claim_next_frame('w')",
            "SELECT dreamcatcher.ensure_frame('w', 99)",
            "SELECT * FROM dreamcatcher.frame_log FOR UPDATE",
            "LOCK TABLE dreamcatcher.frame_log IN EXCLUSIVE MODE",
            # (the advisory locks and pg_notify: see test_restricted_lock_functions...)
            # ownership and roles
            "SELECT dreamcatcher.grant_stream('w', 's2', session_user)",
            "SELECT dreamcatcher.revoke_stream('w', 's2')",
            "SELECT dreamcatcher.install_roles('evil')",
            f'SET ROLE "{cast.names.merger}"',
            f'GRANT "{cast.names.merger}" TO "{cast.worker}"',
            # the schema itself
            "CREATE TABLE dreamcatcher.evil (x int)",
            "CREATE FUNCTION dreamcatcher.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "ALTER FUNCTION dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb)"
            " SECURITY INVOKER",
            "ALTER TABLE dreamcatcher.delta_log DISABLE TRIGGER delta_log_check_owner",
        ]
        for table in STATE_TABLES:
            statements += [
                f"INSERT INTO dreamcatcher.{table} DEFAULT VALUES",
                f"UPDATE dreamcatcher.{table} SET world = world",
                f"DELETE FROM dreamcatcher.{table}",
                f"TRUNCATE dreamcatcher.{table}",
            ]
        for statement in statements:
            await refused(conn, statement)
    # configuring a world (late policy, expected streams) is the owner's
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        with pytest.raises(DreamcatcherError) as caught:
            await dc.configure_world(late_policy="defer")
        assert refused_by_database(caught.value) == "42501"
    async with connect(cast.dsn) as admin:
        assert (
            await admin.fetchval("SELECT late_policy FROM dreamcatcher.worlds WHERE world = $1", W)
            == "reject"
        )
        assert await admin.fetchval("SELECT count(*) FROM dreamcatcher.entity_versions") == 1


LOCK_STATEMENTS = [
    # locks that would hold up the merger, and the merger's notifications
    "SELECT pg_try_advisory_lock(dreamcatcher.leader_lock_key('w'))",
    "SELECT pg_advisory_lock(dreamcatcher.leader_lock_key('w'))",
    "SELECT pg_advisory_lock_shared(dreamcatcher.world_lock_key('w'))",
    "SELECT pg_advisory_xact_lock(dreamcatcher.world_lock_key('w'))",
    "SELECT pg_try_advisory_xact_lock_shared(dreamcatcher.frame_lock_key('w', 2))",
    "SELECT pg_try_advisory_lock(1, 2)",
    "SELECT pg_notify('dreamcatcher_merged', 'w:1')",
    "SELECT pg_notify('dreamcatcher_work', 'w:2:closed')",
]
LOCK_FUNCTIONS = (
    "SELECT p.oid::regprocedure::text, p.proacl::text FROM pg_proc p"
    " WHERE p.pronamespace = 'pg_catalog'::regnamespace"
    " AND (p.proname = 'pg_notify' OR p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$') ORDER BY 1"
)


async def test_init_roles_changes_no_function_outside_its_schema(cast: Cast) -> None:
    """Without --restrict-lock-functions, pg_notify and the advisory-lock functions keep their
    rights (other applications of the database may use them): a worker may call them."""
    async with connect(cast.dsn) as admin:
        before = [tuple(r) for r in await admin.fetch(LOCK_FUNCTIONS)]
        assert all(acl == "None" or acl is None for _, acl in before), before  # the defaults: PUBLIC
    prefix = cast.names.worker.removesuffix("_worker")
    assert (
        await asyncio.to_thread(run_cli, ["--dsn", cast.dsn, "init", "--roles", "--role-prefix", prefix]) == 0
    )
    async with connect(cast.dsn) as admin:
        assert [tuple(r) for r in await admin.fetch(LOCK_FUNCTIONS)] == before
    async with connect(cast.url(cast.worker)) as conn:
        for statement in LOCK_STATEMENTS:
            async with conn.transaction():
                await conn.execute(statement)
            await conn.execute("SELECT pg_advisory_unlock_all()")


async def test_restricted_lock_functions_are_the_mergers_only(cast: Cast) -> None:
    """`init --roles --restrict-lock-functions` (as a superuser): only the merger and the schema
    owner may call pg_notify and the advisory-lock functions in this database."""
    prefix = cast.names.worker.removesuffix("_worker")
    argv = ["--dsn", cast.dsn, "init", "--roles", "--role-prefix", prefix, "--restrict-lock-functions"]
    assert await asyncio.to_thread(run_cli, argv) == 0
    async with connect(cast.url(cast.worker)) as conn:
        for statement in LOCK_STATEMENTS:
            await refused(conn, statement)
    async with connect(cast.url(cast.merger)) as conn:
        for statement in LOCK_STATEMENTS:
            async with conn.transaction():
                await conn.execute(statement)
    # the worker's own path takes its locks through the SECURITY DEFINER entry points
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        assert (await dc.insert_delta(5, {"posts_created": [5]}, utc=at(5))).status == "stored"
        assert await dc.close_frame(5) == "closed"
    async with connect(cast.dsn) as admin:
        acls = [acl for _, acl in await admin.fetch(LOCK_FUNCTIONS)]
    # no grant to PUBLIC (an entry with no grantee: "=X/owner"), one to the merger role
    assert acls and all(
        re.search(r"[{,]=X/", acl) is None and f"{cast.names.merger}=X/" in acl for acl in acls
    )


async def test_notify_cannot_be_revoked_but_a_spoofed_one_changes_nothing(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        await dc.insert_delta(5, {"posts_created": [5]}, utc=at(1))
        waiter = asyncio.create_task(dc.wait_merged(5, timeout=1.5, poll=0.2))
        await asyncio.sleep(0.3)  # the waiter is listening
        async with connect(cast.url(cast.worker)) as conn:
            # the NOTIFY command needs no privilege at all: PostgreSQL has no way to refuse it
            await conn.execute("NOTIFY dreamcatcher_merged, 'w:5'")
            await conn.execute("NOTIFY dreamcatcher_work, 'w:5:closed'")
            await conn.execute("SELECT pg_notify('dreamcatcher_merged', 'w:5')")  # (unless restricted)
        # a notification is a wake-up, never the data: the waiter looks, and goes on waiting
        with pytest.raises(TimeoutError):
            await waiter
        assert await merge_as(cast.url(cast.merger), W) == []
        assert await dc.frame_status(5) == "open"


async def test_a_plain_init_after_the_roles_never_opens_a_foreign_stream(cast: Cast) -> None:
    """Re-applying the schema (plain ``init``) may turn the entry points back into SECURITY
    INVOKER (workers then fail closed with 42501 until ``init --roles`` runs again) or keep the
    roles in force; it never lets a worker write a stream it does not own."""
    prefix = cast.names.worker.removesuffix("_worker")
    await init_database(cast.dsn)
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s2", world=W) as theirs:
        with pytest.raises(DreamcatcherError) as caught:
            await theirs.insert_delta(1, {"observations": [1]}, utc=at(1))
        assert refused_by_database(caught.value) == "42501"
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as mine:
        try:
            assert (await mine.insert_delta(1, {"observations": [1]}, utc=at(1))).status == "stored"
        except DreamcatcherError as exc:  # failed closed
            assert refused_by_database(exc) == "42501"
    await create_roles(cast.dsn, prefix=prefix)  # init --roles again: back in force
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as mine:
        assert (await mine.insert_delta(1, {"observations": [1]}, utc=at(1))).status in (
            "stored",
            "duplicate",
        )
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s2", world=W) as theirs:
        with pytest.raises(DreamcatcherError) as caught:
            await theirs.insert_delta(1, {"observations": [1]}, utc=at(1))
        assert refused_by_database(caught.value) == "42501"
    async with connect(cast.dsn) as admin:
        assert await admin.fetchval(
            "SELECT prosecdef FROM pg_proc"
            " WHERE oid = 'dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb)'::regprocedure"
        )


# -- the merger -----------------------------------------------------------------------


async def test_merger_merges_closes_due_frames_and_cannot_write_the_log(cast: Cast) -> None:
    async with connect(cast.dsn) as admin:  # the owner configures: both streams expected
        await admin.execute(
            "INSERT INTO dreamcatcher.worlds (world, expected_streams) VALUES ($1, $2)", W, ["s1", "s2"]
        )
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        await dc.insert_delta(
            1, {"comments_added": [{"id": "c1", "discussion": 1}], "posts_created": [{}]}, utc=at(1)
        )
    async with DeltaClient.connect(cast.url(cast.worker2), stream_id="s2", world=W) as dc:
        await dc.insert_delta(1, {"reactions_added": ["1:heart"]}, utc=at(1))
    # the merger closes the frame itself (every expected stream is in) and merges it
    assert await merge_as(cast.url(cast.merger), W) == [1]
    async with connect(cast.url(cast.merger)) as conn:
        row = await conn.fetchrow("SELECT status, close_reason, state_hash FROM dreamcatcher.frame_log")
        assert row is not None and (row["status"], row["close_reason"]) == ("merged", "streams")
        assert (
            await conn.fetchval("SELECT count(*) FROM dreamcatcher.quarantine") == 1
        )  # the post with no number
        assert await conn.fetchval("SELECT holder FROM dreamcatcher.mergers WHERE world = $1", W)
        statements = [
            "INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
            " VALUES ('w', 9, 's1', now(), '{}')",
            "UPDATE dreamcatcher.delta_log SET payload = '{}'",
            "DELETE FROM dreamcatcher.delta_log",
            "TRUNCATE dreamcatcher.delta_log",
            # nor the cheap path of sessions that may write it (the client falls back by itself)
            "SELECT dreamcatcher.append_open('w', 's1', 1, now(), '{}')",
            "SELECT dreamcatcher.append_delta('w', 's1', 9, now(), '{}')",  # it owns no stream
            "SELECT dreamcatcher.append_deltas('w', 's1', '{9}', ARRAY[now()], '{\"{}\"}')",
            "SELECT dreamcatcher.grant_stream('w', 'm', session_user)",
            "INSERT INTO dreamcatcher.stream_owners (world, stream_id, role_name)"
            " VALUES ('w', 'm', session_user)",
            "INSERT INTO dreamcatcher.worlds (world) VALUES ('new')",  # configuring worlds is the owner's
            "DELETE FROM dreamcatcher.entity_versions",
            "TRUNCATE dreamcatcher.entity_versions",
            "DELETE FROM dreamcatcher.frame_log",
            "TRUNCATE dreamcatcher.quarantine_log",
            # only the columns the merge writes: it does not configure worlds nor edit frames' history
            "UPDATE dreamcatcher.worlds SET late_policy = 'defer'",
            "UPDATE dreamcatcher.worlds SET expected_streams = '{}'",
            "UPDATE dreamcatcher.worlds SET max_frame_ahead = 1, idle_writer_timeout = '1 hour'",
            "UPDATE dreamcatcher.frame_log SET closed_at = now(), opened_at = now()",
            "UPDATE dreamcatcher.frame_log SET close_reason = 'forged'",
            "UPDATE dreamcatcher.entity_versions SET data = '{}'",
            "UPDATE dreamcatcher.mergers SET world = 'x'",
        ]
        for statement in statements:
            await refused(conn, statement)
        async with conn.transaction():  # (what it does write, it may)
            await conn.execute("UPDATE dreamcatcher.worlds SET horizon = horizon")
            await conn.execute("UPDATE dreamcatcher.frame_log SET stats = stats, state_hash = state_hash")
            await conn.execute("UPDATE dreamcatcher.entity_versions SET valid_to = valid_to")
    async with DeltaClient.connect(cast.url(cast.merger), stream_id="s1", world=W) as dc:
        with pytest.raises(DreamcatcherError) as caught:
            await dc.insert_delta(2, {"observations": [1]}, utc=at(2))
        assert refused_by_database(caught.value) == "42501"


async def test_a_standby_merger_login_ends_another_merger_logins_silent_leadership(cast: Cast) -> None:
    """Two merger logins (both members of the merger role) cannot signal each other's sessions;
    end_silent_leader, which runs with its owner's rights, lets the standby end the leader's
    session, and only when that leader has gone silent; a worker may not call it."""
    m2 = f"{cast.merger}_2"
    with cleanup_roles([cast.dsn], [m2]):
        async with connect(cast.dsn) as admin:
            await admin.execute(f'CREATE ROLE "{m2}" LOGIN IN ROLE "{cast.names.merger}"')
        leader = Merger(cast.url(cast.merger), W, poll_interval=0.1, leader_timeout=0.3, name="leader")
        standby = Merger(cast.url(m2), W, poll_interval=0.1, leader_timeout=0.3, name="standby")
        try:
            assert await leader.try_lead()
            assert leader._conn is not None
            leader_pid = leader._conn.get_server_pid()
            async with connect(cast.url(m2)) as conn:  # the login itself may not end it
                await refused(conn, "SELECT pg_terminate_backend($1)", leader_pid)
                # not silent for a minute: nothing happens
                assert await conn.fetchval("SELECT dreamcatcher.end_silent_leader($1, 60)", W) is None
            assert not await standby.try_lead()
            await asyncio.sleep(0.5)  # the leader sends nothing (no run loop): silent past its timeout
            assert await standby.end_silent_leader() is None  # first look: a suspect
            await asyncio.sleep(standby.heartbeat_interval)
            assert await standby.end_silent_leader() == leader_pid  # still silent: ended
            assert await standby.try_lead()
            async with connect(cast.dsn) as admin:
                assert not await admin.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", leader_pid
                )
            async with connect(cast.url(cast.worker)) as conn:  # and a worker may not call it at all
                await refused(conn, "SELECT dreamcatcher.end_silent_leader($1, 1)", W)
        finally:
            await standby.aclose()
            await leader.aclose()


# -- the reader -----------------------------------------------------------------------


async def test_reader_reads_views_and_time_travel_and_writes_nothing(cast: Cast) -> None:
    async with DeltaClient.connect(cast.url(cast.worker), stream_id="s1", world=W) as dc:
        await dc.insert_delta(1, {"posts_created": [{"number": 7, "title": "seven"}]}, utc=at(1))
        await dc.close_frame(1)
    await merge_as(cast.url(cast.merger), W)
    async with connect(cast.url(cast.reader)) as conn:
        views = await conn.fetch(
            "SELECT viewname FROM pg_views WHERE schemaname = 'dreamcatcher' ORDER BY viewname"
        )
        assert len(views) >= 12
        for view in views:
            await conn.fetch(f'SELECT * FROM dreamcatcher."{view["viewname"]}" LIMIT 5')
        assert await conn.fetchval("SELECT data ->> 'title' FROM dreamcatcher.posts_at($1, 1)", W) == "seven"
        assert await conn.fetchval("SELECT count(*) FROM dreamcatcher.diff($1, 0, 1)", W) == 1
        assert await conn.fetchval("SELECT state_hash FROM dreamcatcher.frames WHERE world = $1", W)
        statements = [
            "INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)"
            " VALUES ('w', 9, 's1', now(), '{}')",
            "SELECT dreamcatcher.append_delta('w', 's1', 9, now(), '{}')",
            "SELECT dreamcatcher.append_deltas('w', 's1', '{9}', ARRAY[now()], '{\"{}\"}')",
            "SELECT dreamcatcher.close_frame('w', 9)",
            "UPDATE dreamcatcher.entity_versions SET data = '{}'",
            "DELETE FROM dreamcatcher.entity_versions",
            "SELECT dreamcatcher.merge_frame('w', 1)",
            "SELECT dreamcatcher.claim_next_frame('w')",
            "SELECT dreamcatcher.end_stuck_writers('w')",
            # the views, not the tables behind them
            "SELECT * FROM dreamcatcher.delta_log",
            "SELECT * FROM dreamcatcher.frame_log",
            "SELECT * FROM dreamcatcher.stream_owners",
            "CREATE TABLE dreamcatcher.evil (x int)",
        ]
        for statement in statements:
            await refused(conn, statement)
