"""Shared helpers of the invariant tests: connections, merging, reading state back.

Everything here talks to a real PostgreSQL; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
from psycopg import sql

from dreamcatcher_pg import DeltaClient, Merger, MergeResult
from dreamcatcher_pg.ops.schema import init_database
from dreamcatcher_pg.testing import database_dsn

#: Fixed writer clocks: the same delta set can be replayed anywhere with the same keys.
T0 = datetime(2030, 1, 1, tzinfo=UTC)

_unique = itertools.count(1)


def at(seconds: int = 0, micros: int = 0) -> datetime:
    """A writer clock value ``seconds`` (+ ``micros``) after :data:`T0`."""
    return T0 + timedelta(seconds=seconds, microseconds=micros)


def unique_utc() -> datetime:
    """A writer clock no other call in this process returns (so keys never collide)."""
    return datetime(2031, 1, 1, tzinfo=UTC) + timedelta(microseconds=next(_unique))


def make_rng() -> tuple[random.Random, int]:
    """A seeded RNG; the seed goes into assertion messages so a failure can be replayed."""
    seed = int(os.environ.get("DC_TEST_SEED", "0")) or secrets.randbits(32)
    return random.Random(seed), seed


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


# -- a delta set -------------------------------------------------------------


@dataclass(frozen=True)
class D:
    """One delta as a test describes it."""

    stream: str
    frame: int
    utc: datetime
    payload: dict[str, Any] = field(hash=False)


async def insert_each(dsn: str, world: str, deltas: Sequence[D], *, concurrent: bool = False) -> list[str]:
    """Insert ``deltas`` one by one with one client per stream; return the receipt statuses."""
    streams = sorted({d.stream for d in deltas})
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            s: await stack.enter_async_context(DeltaClient.connect(dsn, stream_id=s, world=world))
            for s in streams
        }

        async def one(d: D) -> str:
            receipt = await clients[d.stream].insert_delta(d.frame, d.payload, utc=d.utc)
            return receipt.status

        if concurrent:
            return list(await asyncio.gather(*(one(d) for d in deltas)))
        return [await one(d) for d in deltas]


async def insert_batches(dsn: str, world: str, deltas: Sequence[D]) -> list[str]:
    """Insert ``deltas`` with one ``insert_deltas`` batch per stream, all streams at once."""
    by_stream: dict[str, list[D]] = {}
    for d in deltas:
        by_stream.setdefault(d.stream, []).append(d)

    async def batch(stream: str, items: list[D]) -> list[str]:
        async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
            receipts = await dc.insert_deltas(
                [{"frame": d.frame, "payload": d.payload, "utc": d.utc} for d in items]
            )
            return [r.status for r in receipts]

    results = await asyncio.gather(*(batch(s, items) for s, items in by_stream.items()))
    return [status for statuses in results for status in statuses]


async def close_frames(dsn: str, world: str, frames: Sequence[int]) -> None:
    async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
        for frame in frames:
            assert await dc.close_frame(frame) in ("closed", "merged")


def scenario() -> list[D]:
    """A delta set over frames 1-4 that exercises every rule and its tie-breaks.

    Streams ``B``, ``Z``, ``a``, ``c`` sort ``B < Z < a < c`` in the "C" collation but
    ``a < B < c < Z`` in en_US, so a utc tie resolved by the database's collation
    instead of "C" picks another winner. What the rules must make of it is spelled
    out in :data:`SCENARIO_POSTS` and :data:`SCENARIO_BOOK_COMPILED`.
    """
    # fmt: off
    return [
        # frame 1: post 1 created by three streams; B, Z and a tie on utc
        D("c", 1, at(1), {"posts_created": [{"number": 1, "title": "c-title", "channel": "random"},
                                            {"number": 2, "title": "two"}]}),
        D("B", 1, at(2), {"posts_created": [{"number": 1, "title": "B-title", "channel": "general",
                                             "author": "B"}],
                          "comments_added": [{"id": "c1", "discussion": 1, "author": "B", "body": "first"}],
                          "reactions_added": [{"target": "1", "type": "+1", "author": "B"}],
                          "chapters": [{"book": "bk", "agent": "B", "chapter": 1, "target": 3}]}),
        D("a", 1, at(2), {"posts_created": [{"number": 1, "title": "a-title"}],
                          "comments_added": [{"id": "c1", "discussion": 1, "author": "a", "body": "other"}],
                          "reactions_added": [{"target": "1", "type": "+1", "author": "B"}, "1:heart"],
                          "chapters": [{"book": "bk", "agent": "a", "chapter": 1}]}),
        D("Z", 1, at(2), {"posts_updated": [{"number": 1, "pinned": True}],
                          "observations": [{"id": "o1"}],
                          "agents_updated": [{"id": "Z", "mood": "calm"}]}),
        D("Z", 1, at(2, 1), {"posts_created": [{"title": "no number"}]}),  # quarantined
        # frame 2: retitles, a content-keyed comment sent twice, the book reaches its target
        D("c", 2, at(9), {"posts_updated": [{"number": 1, "title": "c-2", "channel": "news"}]}),
        D("a", 2, at(10), {"posts_updated": [{"number": 1, "title": "a-2"}],
                           "comments_added": [{"discussion": 1, "author": "a", "body": "no id"}],
                           "chapters": [{"book": "bk", "agent": "a", "chapter": 2}]}),
        D("B", 2, at(10), {"comments_added": [{"discussion": 1, "author": "a", "body": "no id"}],
                           "chapters": [{"book": "bk", "agent": "B", "chapter": 1}],
                           "reactions_added": ["heart on 1"]}),
        D("Z", 2, at(10), {"posts_updated": [{"number": 2, "title": "x"}, {"number": 2, "title": "y"}],
                           "agents_updated": [{"agent": "Z", "mood": "busy"}]}),
        # frame 3: another tie (Z vs a), observations from two streams, a comment id sent thrice
        D("Z", 3, at(20), {"posts_updated": [{"number": 2, "title": "Z-3"}],
                           "observations": [{"id": "o2"}, {"id": "o2"}],
                           "comments_added": [{"comment_id": "c2", "agent": "Z", "discussion": 2,
                                               "content": "hi"}]}),
        D("a", 3, at(20), {"posts_updated": [{"number": 2, "title": "a-3"}],
                           "observations": {"id": "o3"},
                           "comments_added": ["c2"]}),
        D("B", 3, at(19), {"comments_added": [{"id": "c2", "author": "B", "discussion": 2, "body": "late"}],
                           "unknown_key": [1, 2, 3]}),
        # frame 4: post 1 gets its frame-1 fields back; a duplicate reaction changes nothing
        D("c", 4, at(30), {"posts_updated": [{"number": 1, "title": "a-title", "channel": "general"}],
                           "reactions_added": [{"node": "1", "reaction": "+1", "agent": "B"}]}),
    ]
    # fmt: on


#: What the rules make of :func:`scenario` (the winners of every tie, checked explicitly):
#: (frame, post number) -> fields of that post right after that frame.
SCENARIO_POSTS: dict[tuple[int, int], dict[str, Any]] = {
    (1, 1): {"title": "a-title", "channel": "general", "author": "B", "pinned": True},
    (1, 2): {"title": "two"},
    (2, 1): {"title": "a-2", "channel": "news", "author": "B", "pinned": True},
    (2, 2): {"title": "y"},
    (3, 2): {"title": "a-3"},
    (4, 1): {"title": "a-title", "channel": "general", "author": "B", "pinned": True},
}
#: The frame in which book "bk" (target 3) compiles.
SCENARIO_BOOK_COMPILED = 2


# -- merging -----------------------------------------------------------------


async def merge_until_idle(dsn: str, world: str) -> list[MergeResult]:
    """Merge every closed frame that is next in line with a fresh Merger; close it after."""
    merger = Merger(dsn, world)
    results: list[MergeResult] = []
    try:
        while True:
            got = await merger.run_until_idle()
            assert merger.get_stats()["is_leader"], f"the merger of {world!r} did not get the leader lock"
            if not got:
                return results
            results.extend(got)
    finally:
        await merger.aclose()


# -- reading state back ------------------------------------------------------


async def frame_table(conn: asyncpg.Connection, world: str) -> list[tuple[Any, ...]]:
    """(frame, status, delta_count, state_hash) of every frame of ``world``."""
    rows = await conn.fetch(
        "SELECT frame, status, delta_count, state_hash FROM dreamcatcher.frames"
        " WHERE world = $1 ORDER BY frame",
        world,
    )
    return [tuple(r) for r in rows]


async def entity_history(conn: asyncpg.Connection, world: str) -> list[tuple[Any, ...]]:
    """Every version of every entity: (kind, ekey, data, first_frame, valid_from, valid_to)."""
    rows = await conn.fetch(
        "SELECT kind, ekey, data::text, first_frame, valid_from, valid_to"
        " FROM dreamcatcher.entity_versions WHERE world = $1"
        ' ORDER BY kind, ekey COLLATE "C", valid_from',
        world,
    )
    return [tuple(r) for r in rows]


async def current_entities(conn: asyncpg.Connection, world: str) -> list[tuple[Any, ...]]:
    """The current state: (kind, ekey, data, first_frame, last_frame)."""
    rows = await conn.fetch(
        "SELECT kind, ekey, data::text, first_frame, last_frame FROM dreamcatcher.entities"
        ' WHERE world = $1 ORDER BY kind, ekey COLLATE "C"',
        world,
    )
    return [tuple(r) for r in rows]


async def quarantine_rows(conn: asyncpg.Connection, world: str) -> list[tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT frame, stream_id, utc, key, position, reason, item::text, merged_in"
        " FROM dreamcatcher.quarantine WHERE world = $1"
        ' ORDER BY frame, utc, stream_id COLLATE "C", key, position',
        world,
    )
    return [tuple(r) for r in rows]


KINDS = ("post", "agent", "comment", "reaction", "chapter", "book", "observation")


async def recomputed_hash(conn: asyncpg.Connection, world: str, frame: int) -> str:
    """The state hash after ``frame``, recomputed from scratch over the entities alive then."""
    value = await conn.fetchval(
        """
        SELECT dreamcatcher.state_hash_text(
                   coalesce(sum(dreamcatcher.entity_hash(e.kind, e.ekey, e.data)), 0))
        FROM unnest($3::text[]) AS k(kind)
        CROSS JOIN LATERAL dreamcatcher.entities_at($1, k.kind, $2) AS e
        """,
        world,
        frame,
        list(KINDS),
    )
    assert isinstance(value, str)
    return value


async def observation_ids(conn: asyncpg.Connection, world: str, frame: int) -> list[str]:
    """The ``id`` of every merged observation written for ``frame`` (one per row)."""
    rows = await conn.fetch(
        "SELECT data ->> 'id' AS id FROM dreamcatcher.observations WHERE world = $1 AND frame = $2",
        world,
        frame,
    )
    return [r["id"] for r in rows]


async def logged_observation_ids(conn: asyncpg.Connection, world: str, frame: int) -> list[str]:
    """The observation ids in the log (``dreamcatcher.deltas``) for ``frame``."""
    rows = await conn.fetch(
        "SELECT o ->> 'id' AS id FROM dreamcatcher.deltas d"
        " CROSS JOIN LATERAL jsonb_array_elements(d.payload -> 'observations') AS o"
        " WHERE d.world = $1 AND d.frame = $2",
        world,
        frame,
    )
    return [r["id"] for r in rows]


async def late_observation_ids(conn: asyncpg.Connection, world: str, frame: int) -> list[str]:
    """The observation ids of every refused attempt recorded in ``dreamcatcher.late_attempts``."""
    rows = await conn.fetch(
        "SELECT o ->> 'id' AS id FROM dreamcatcher.late_attempts l"
        " CROSS JOIN LATERAL jsonb_array_elements(l.payload -> 'observations') AS o"
        " WHERE l.world = $1 AND l.frame = $2",
        world,
        frame,
    )
    return [r["id"] for r in rows]


# -- watching merges ---------------------------------------------------------


async def install_merge_audit(conn: asyncpg.Connection) -> None:
    """Record every write that leaves a frame 'merged' (test-side trigger, not library code)."""
    await conn.execute(
        """
        CREATE TABLE public.merge_audit (
            world text, frame bigint, old_status text, backend_pid int,
            at timestamptz DEFAULT clock_timestamp());
        CREATE FUNCTION public.audit_merge() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.status = 'merged' THEN
                INSERT INTO public.merge_audit (world, frame, old_status, backend_pid)
                VALUES (NEW.world, NEW.frame, OLD.status, pg_backend_pid());
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER zz_audit_merge AFTER UPDATE ON dreamcatcher.frame_log
            FOR EACH ROW EXECUTE FUNCTION public.audit_merge();
        """
    )


async def merge_audit(conn: asyncpg.Connection, world: str) -> list[tuple[int, str, int]]:
    """(frame, old_status, backend_pid) of every merge recorded by :func:`install_merge_audit`."""
    rows = await conn.fetch(
        "SELECT frame, old_status, backend_pid FROM public.merge_audit WHERE world = $1 ORDER BY at, frame",
        world,
    )
    return [(r["frame"], r["old_status"], r["backend_pid"]) for r in rows]


# -- waiting and killing -----------------------------------------------------


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.01
) -> float:
    """Poll ``predicate`` until true; return the seconds waited. Fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
    return loop.time() - start


async def terminate_backend(conn: asyncpg.Connection, pid: int, *, timeout: float = 10.0) -> None:
    """Kill backend ``pid`` and wait until it is gone (its locks released)."""
    assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)

    async def gone() -> bool:
        return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid)

    await wait_until(gone, timeout=timeout, what=f"backend {pid} to exit")


# -- another database on the same server --------------------------------------


@contextlib.asynccontextmanager
async def extra_database(
    server_dsn: str, template: str, *, icu: bool = False
) -> AsyncIterator[tuple[str, str]]:
    """A second fresh, migrated database on the same server; dropped after.

    Yields ``(dsn, how)``. With ``icu``, the database sorts text in the ICU root
    collation (``a < B < c < Z``, unlike "C") when the server is built with ICU
    (``how == "icu"``); otherwise it is a clone of the session's template (``"template"``).
    """
    name = f"dc_extra_{os.getpid()}_{secrets.token_hex(4)}"
    how = "template"
    async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
        if icu:
            try:
                await admin.execute(
                    sql.SQL(
                        "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'"
                        " LOCALE_PROVIDER icu ICU_LOCALE 'und' LOCALE 'C.UTF-8'"
                    ).format(sql.Identifier(name))
                )
                how = "icu"
            except (psycopg.errors.FeatureNotSupported, psycopg.errors.InvalidParameterValue):
                pass
        if how == "template":
            await admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    dsn = database_dsn(server_dsn, name)
    try:
        if how == "icu":
            await init_database(dsn)
        yield dsn, how
    finally:
        async with await psycopg.AsyncConnection.connect(server_dsn, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows as dicts, jsonb decoded, on a connection of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def log_rows(dsn: str, world: str) -> list[tuple[Any, ...]]:
    """The world's log as (frame, stream_id, utc, payload text, late), in key order."""
    async with connection(dsn) as conn:
        rows = await conn.fetch(
            "SELECT frame, stream_id, utc, payload::text, late FROM dreamcatcher.delta_log"
            " WHERE world = $1 ORDER BY frame, stream_id, utc",
            world,
        )
    return [tuple(r) for r in rows]
