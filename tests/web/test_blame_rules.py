"""Blame under rules a user declared: the inspector reads the log with the rules that merged each
frame (the world's own, which may change from a frame on), not with the built-in ones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from dreamcatcher_pg.rules import apply_rules, parse_rules
from dreamcatcher_pg.rules.store import install_default
from dreamcatcher_pg.web.app import WebConfig
from tests.support.webscenario import _close, _merge, _write
from tests.support.webserver import running_inspector, scratch_database

#: Units last-write-wins, votes first-write-wins on a composite key, findings by content.
SIM = parse_rules(
    """
    [kinds.unit]
    from  = ["units_spawned", "units_moved"]
    key   = ["id"]
    types = { id = "int" }
    aliases = { id = ["unit"] }
    merge = "lww"

    [kinds.vote]
    from  = ["votes"]
    key   = ["target", "voter"]
    merge = "first"

    [kinds.finding]
    from  = ["findings"]
    key   = "content"
    merge = "first"
    """
)
#: From frame 3 on, units are first-write-wins: a later move no longer changes a field.
SIM_FIRST = parse_rules(
    """
    [kinds.unit]
    from  = ["units_spawned", "units_moved"]
    key   = ["id"]
    types = { id = "int" }
    aliases = { id = ["unit"] }
    merge = "first"
    """
)


@pytest.fixture(scope="module")
async def sim_world(dreamcatcher_server_dsn: str, dreamcatcher_template_db: str) -> AsyncIterator[str]:
    with scratch_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as dsn:
        await apply_rules(dsn, "sim", SIM, from_frame=0)
        await apply_rules(dsn, "sim", SIM_FIRST, from_frame=3)
        # a table, one delta per row (stream, frame, second, payload): kept as rows by fmt: skip
        deltas: list[tuple[str, int, float, dict[str, Any]]] = [
            ("a", 1, 1, {"units_spawned": [{"id": 1, "x": 0, "hp": 10}],
                         "votes": [{"target": "p", "voter": "v"}]}),
            ("b", 1, 2, {"units_moved": [{"unit": "1", "x": 5}], "findings": [{"text": "leak"}]}),
            ("b", 2, 3, {"votes": [{"target": "p", "voter": "v", "weight": 2}]}),
            ("a", 2, 4, {"units_moved": [{"id": 1, "x": 7}]}),
            ("a", 3, 5, {"units_moved": [{"id": 2, "x": 1}]}),
            ("b", 3, 6, {"units_moved": [{"id": 2, "x": 9, "hp": 3}]}),
        ]  # fmt: skip
        for frame in (1, 2, 3):
            for stream, f, seconds, payload in deltas:
                if f == frame:
                    await _write(dsn, "sim", stream, f, seconds, payload)
            await _close(dsn, "sim", frame)
            await _merge(dsn, "sim")
        yield dsn


@pytest.fixture
async def sim_http(sim_world: str) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        running_inspector(WebConfig(sim_world, world="sim", poll_interval=0.2)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as client,
    ):
        yield client


async def entity(http: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await http.get("/api/entity", params={"world": "sim", **params})
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def by_field(doc: dict[str, Any]) -> dict[str | None, tuple[Any, int, str | None]]:
    return {
        f["field"]: (f["value"], f["frame"], None if f["delta"] is None else f["delta"]["stream_id"])
        for f in doc["fields"]
    }


async def test_last_write_wins_of_a_declared_kind_names_the_last_writer(sim_http: httpx.AsyncClient) -> None:
    doc = await entity(sim_http, kind="unit", key="1", frame=2)
    assert doc["policy"] == "last"
    # b's move is read through the alias "unit", "1" as the int key 1: b wrote id last in frame 1
    assert by_field(doc) == {"id": (1, 1, "b"), "x": (7, 2, "a"), "hp": (10, 1, "a")}
    at_1 = by_field(await entity(sim_http, kind="unit", key="1", frame=1))
    assert at_1["x"] == (5, 1, "b")


async def test_first_write_wins_on_a_composite_key_names_the_first_writer(
    sim_http: httpx.AsyncClient,
) -> None:
    doc = await entity(sim_http, kind="vote", key='["p", "v"]', frame=2)
    assert doc["policy"] == "first"
    fields = by_field(doc)
    assert fields["target"] == ("p", 1, "a") and fields["voter"] == ("v", 1, "a")
    assert fields["weight"] == (2, 2, "b")  # a field still missing, added by a later copy


async def test_a_content_keyed_item_is_found_without_a_key_filter(
    sim_http: httpx.AsyncClient, sim_world: str
) -> None:
    conn = await asyncpg.connect(sim_world)
    try:
        ekey = await conn.fetchval(
            "SELECT ekey FROM dreamcatcher.entity_versions WHERE world = 'sim' AND kind = 'finding'"
        )
    finally:
        await conn.close()
    assert by_field(await entity(sim_http, kind="finding", key=ekey, frame=1)) == {"text": ("leak", 1, "b")}


async def test_each_frame_is_blamed_with_the_rules_that_merged_it(sim_http: httpx.AsyncClient) -> None:
    """Frame 3 merged units first-write-wins: unit 2 keeps a's x, and b only adds hp."""
    doc = await entity(sim_http, kind="unit", key="2", frame=3)
    assert doc["policy"] == "first"
    assert by_field(doc) == {"id": (2, 3, "a"), "x": (1, 3, "a"), "hp": (3, 3, "b")}
    history = (await sim_http.get("/api/history", params={"world": "sim", "kind": "unit", "key": "1"})).json()
    assert history["policy"] == "first"  # the rules in effect now
    assert [c["stream_id"] for v in history["versions"] for c in [x["delta"] for x in v["changes"]]][:1] == [
        "a"
    ]


async def test_init_gives_rule_sets_of_an_older_release_their_item_reader(sim_world: str) -> None:
    """A rule set installed before item readers existed gets one the next time init runs."""
    name = f"dreamcatcher.rules_{SIM.tag}_read_item(text, jsonb, bigint, text, timestamptz, bigint)"
    conn = await asyncpg.connect(sim_world)
    try:
        async with conn.transaction():
            await conn.execute(f"DROP FUNCTION {name}")
            assert await conn.fetchval("SELECT to_regprocedure($1)", name) is None
            await install_default(conn)
            assert await conn.fetchval("SELECT to_regprocedure($1)::text", name) is not None
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()


class _Rollback(Exception):
    pass
