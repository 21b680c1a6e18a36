"""Every JSON endpoint of the inspector, against the worlds of tests.support.webscenario
(answers known in advance)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from dreamcatcher_pg.web import api_entity, api_state
from tests.support.webscenario import MANY, T0, at, many_title


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(path, params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


async def test_meta_says_read_only(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/meta")
    assert doc["read_only"] is True
    assert doc["default_world"] == "w"
    assert doc["role"]


async def test_worlds_summarise_frames_lag_leader_quarantine_and_late(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/worlds")
    worlds = {w["world"]: w for w in doc["worlds"]}
    assert list(worlds) == ["d", "many", "w"]
    w = worlds["w"]
    assert w["frames"] == {"open": 0, "closed": 0, "merged": 4}
    assert (w["first_frame"], w["last_frame"], w["last_merged"]) == (1, 5, 5)
    assert w["merge_lag"] == {"frames": 0, "seconds": 0.0}
    assert w["quarantined"] == 1
    assert w["late_attempts"] == 1
    assert w["leader"]["holder"] and w["leader"]["holds_lock"] is False  # the merger has stopped
    assert worlds["d"]["late_attempts"] == 1 and worlds["d"]["quarantined"] == 0


async def test_world_lists_its_kinds(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/world", world="w")
    assert doc["kinds"] == ["agent", "book", "chapter", "comment", "observation", "post"]
    assert (await get(http, "/api/world", world="many"))["kinds"] == ["post"]


async def test_timeline_gives_deltas_latency_and_merge_duration_per_frame(
    http: httpx.AsyncClient, web_world: str
) -> None:
    doc = await get(http, "/api/timeline", world="w")
    assert doc["bucketed"] is False
    assert [(p["frame_from"], p["frame_to"], p["deltas"]) for p in doc["points"]] == [
        (1, 1, 2),
        (2, 2, 2),
        (3, 3, 1),
        (5, 5, 1),
    ]
    conn = await asyncpg.connect(web_world)
    try:
        rows = await conn.fetch(
            "SELECT frame, extract(epoch FROM merged_at - closed_at) * 1000 AS close_ms,"
            " extract(epoch FROM merged_at - merge_started_at) * 1000 AS merge_ms"
            " FROM dreamcatcher.frames WHERE world = 'w' ORDER BY frame"
        )
    finally:
        await conn.close()
    for point, row in zip(doc["points"], rows, strict=True):
        assert point["status"] == {"open": 0, "closed": 0, "merged": 1}
        assert point["close_to_merged_ms"]["max"] == pytest.approx(float(row["close_ms"]), abs=0.01)
        assert point["merge_ms"]["max"] == pytest.approx(float(row["merge_ms"]), abs=0.01)
        assert 0 < point["merge_ms"]["max"] <= point["close_to_merged_ms"]["max"]

    buckets = await get(http, "/api/timeline", world="w", points=2)
    assert buckets["bucketed"] is True
    assert [(p["frame_from"], p["frame_to"], p["frames"], p["deltas"]) for p in buckets["points"]] == [
        (1, 2, 2, 4),
        (3, 5, 2, 2),
    ]
    window = await get(http, "/api/timeline", world="w", **{"from": 2, "to": 3})
    assert [p["frame_from"] for p in window["points"]] == [2, 3]


async def test_frame_gives_its_facts_and_the_merged_frames_around_it(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/frame", world="w", frame=3)
    assert doc["exists"] and doc["status"] == "merged" and doc["delta_count"] == 1
    assert (doc["prev_merged"], doc["next_merged"]) == (2, 5)
    assert doc["stats"]["quarantined"] == 1 and len(doc["state_hash"]) == 16
    assert doc["merge_ms"] > 0 and doc["close_to_merged_ms"] >= doc["merge_ms"]
    gap = await get(http, "/api/frame", world="w", frame=4)
    assert gap["exists"] is False and (gap["prev_merged"], gap["next_merged"]) == (3, 5)


def titles(doc: dict[str, Any]) -> dict[str, Any]:
    return {item["key"]: item["data"].get("title") for item in doc["items"]}


async def test_state_moves_with_the_frame(http: httpx.AsyncClient) -> None:
    assert titles(await get(http, "/api/state", world="w", kind="post", frame=1)) == {"1": "b"}
    assert titles(await get(http, "/api/state", world="w", kind="post", frame=2)) == {"1": "d"}
    assert titles(await get(http, "/api/state", world="w", kind="post", frame=4)) == {"1": "d", "2": "two"}
    latest = await get(http, "/api/state", world="w", kind="post")
    assert latest["frame"] == 5 and titles(latest) == {"1": "d", "2": "two!"}
    assert latest["total"] == {"count": 2, "at_least": False}
    before = await get(http, "/api/state", world="w", kind="book", frame=2)
    assert [i["data"] for i in before["items"]] == [
        {"book": "bk", "target": 2, "chapters": 1, "compiled_frame": None}
    ]
    after = await get(http, "/api/state", world="w", kind="book", frame=3)
    assert after["items"][0]["data"]["compiled_frame"] == 3 and after["items"][0]["last_frame"] == 3


async def test_state_pages_by_key_and_equals_the_sql_state(http: httpx.AsyncClient, web_world: str) -> None:
    seen: list[dict[str, Any]] = []
    after = None
    pages = 0
    while True:
        doc = await get(
            http,
            "/api/state",
            world="many",
            kind="post",
            frame=2,
            limit=7,
            **({"after": after} if after else {}),
        )
        pages += 1
        seen += doc["items"]
        after = doc["next"]
        if after is None:
            break
    assert pages == 5 and len(seen) == len(MANY)
    conn = await asyncpg.connect(web_world)
    try:
        rows = await conn.fetch(
            "SELECT ekey, data::text, first_frame, last_frame"
            " FROM dreamcatcher.entities_at('many', 'post', 2) ORDER BY ekey"
        )
    finally:
        await conn.close()
    import orjson

    assert [(i["key"], i["data"], i["first_frame"], i["last_frame"]) for i in seen] == [
        (r["ekey"], orjson.loads(r["data"]), r["first_frame"], r["last_frame"]) for r in rows
    ]
    assert {i["data"]["title"] for i in seen} == {many_title(n, 2 if n % 2 else 1) for n in MANY}


async def test_state_search_by_key_and_by_field_value(http: httpx.AsyncClient) -> None:
    by_key = await get(http, "/api/state", world="many", kind="post", frame=2, key="12")
    assert [i["key"] for i in by_key["items"]] == sorted(str(n) for n in MANY if "12" in str(n))
    assert by_key["search"]["exhausted"] is True and by_key["search"]["scanned"] == len(MANY)
    retitled = await get(
        http, "/api/state", world="many", kind="post", frame=2, field="title", value="RETITLED"
    )
    assert [i["key"] for i in retitled["items"]] == [str(n) for n in MANY if n % 2]
    at_one = await get(http, "/api/state", world="many", kind="post", frame=1, value="retitled")
    assert at_one["items"] == []  # not yet at frame 1
    any_field = await get(http, "/api/state", world="many", kind="post", frame=2, value="even post 11")
    assert [i["key"] for i in any_field["items"]] == ["110", "112", "114", "116", "118"]


async def test_a_search_looks_at_a_bounded_number_of_entities_per_request(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_state, "SEARCH_SCAN", 8)
    found: list[str] = []
    requests = 0
    after = None
    while True:
        doc = await get(
            http,
            "/api/state",
            world="many",
            kind="post",
            frame=2,
            key="9",
            **({"after": after} if after else {}),
        )
        requests += 1
        assert doc["search"]["scanned"] <= 8
        found += [i["key"] for i in doc["items"]]
        after = doc["next"]
        if after is None:
            assert doc["search"]["exhausted"] is True
            break
        assert doc["search"]["exhausted"] is False
    assert found == ["109", "119", "129"]
    assert requests == 4  # 30 keys, 8 looked at per request


async def test_diff_gives_added_changed_and_removed_per_kind(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/diff", world="w", a=1, b=2, kind="post")
    assert doc["summary"]["post"] == {"added": 0, "changed": 1, "removed": 0}
    assert doc["summary"]["agent"] == {"added": 1, "changed": 0, "removed": 0}
    assert doc["summary"]["comment"] == {"added": 0, "changed": 0, "removed": 0}
    [post] = doc["items"]
    assert post["key"] == "1" and post["change"] == "changed"
    assert post["fields"] == [{"field": "title", "before": "b", "after": "d"}]
    agents = await get(http, "/api/diff", world="w", a=1, b=2, kind="agent")
    assert agents["items"] == [{"key": "ada", "change": "added", "after": {"id": "ada", "bio": "x"}}]
    backwards = await get(http, "/api/diff", world="w", a=2, b=1, kind="agent")
    assert backwards["items"] == [{"key": "ada", "change": "removed", "before": {"id": "ada", "bio": "x"}}]
    book = (await get(http, "/api/diff", world="w", a=2, b=3, kind="book"))["items"][0]
    assert {f["field"]: (f["before"], f["after"]) for f in book["fields"]} == {
        "chapters": (1, 2),
        "compiled_frame": (None, 3),
    }


async def test_diff_pages_by_key(http: httpx.AsyncClient) -> None:
    keys: list[str] = []
    after = None
    while True:
        doc = await get(
            http,
            "/api/diff",
            world="many",
            a=1,
            b=2,
            kind="post",
            limit=4,
            **({"after": after} if after else {}),
        )
        assert all(i["change"] == "changed" for i in doc["items"])
        keys += [i["key"] for i in doc["items"]]
        after = doc["next"]
        if after is None:
            break
    assert keys == [str(n) for n in MANY if n % 2]
    assert doc["summary"]["post"]["changed"] == 15


def blamed(doc: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """field -> (frame, stream, utc, delta key, position) of the delta that set it (None: none)."""
    out: dict[str, tuple[Any, ...]] = {}
    for f in doc["fields"]:
        d = f["delta"]
        out[f["field"]] = (f["frame"],) + (
            (d["stream_id"], d["utc"], d["delta_key"], d["position"]) if d else (None,)
        )
    return out


async def test_blame_follows_last_write_wins(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/entity", world="w", kind="post", key="1", frame=1)
    assert doc["policy"] == "last" and doc["exists"] and doc["versions"] == 2
    assert doc["version"]["data"] == {"number": 1, "title": "b", "author": "ada"}
    assert blamed(doc) == {
        "number": (1, "s2", at(2).isoformat(), "posts_updated", 1),  # the last item carrying number 1
        "title": (1, "s2", at(2).isoformat(), "posts_updated", 1),
        "author": (1, "s1", at(1).isoformat(), "posts_created", 1),
    }
    later = blamed(await get(http, "/api/entity", world="w", kind="post", key="1", frame=5))
    # s1 and s2 wrote at the same utc: the greater stream id (in the "C" order) wins
    assert later["title"] == (2, "s2", at(10).isoformat(), "posts_updated", 1)
    assert later["author"] == (1, "s1", at(1).isoformat(), "posts_created", 1)


async def test_blame_follows_first_write_wins(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/entity", world="w", kind="comment", key="id:c1")
    assert doc["policy"] == "first"
    assert doc["version"]["data"]["body"] == "hi"
    b = blamed(doc)
    assert b["body"] == (1, "s1", at(1).isoformat(), "comments_added", 1)
    assert b["mood"] == (1, "s2", at(2).isoformat(), "comments_added", 1)


async def test_blame_of_a_derived_kind_is_its_frame(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/entity", world="w", kind="book", key="bk")
    assert doc["policy"] == "derived"
    assert blamed(doc) == {
        "book": (2, None),
        "target": (2, None),
        "chapters": (3, None),
        "compiled_frame": (3, None),
    }


async def test_blame_of_a_deferred_late_delta_names_both_frames(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/entity", world="d", kind="post", key="7")
    [title] = [f for f in doc["fields"] if f["field"] == "title"]
    assert title["value"] == "late" and title["frame"] == 2
    assert title["delta"] == {
        "into_frame": 2,
        "frame": 1,
        "stream_id": "s2",
        "utc": at(5).isoformat(),
        "delta_key": "posts_updated",
        "position": 1,
    }


async def test_blame_reads_every_item_when_the_key_filter_misses(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text filter only skips items cheaply: with one that keeps nothing, blame is the same."""
    expected = blamed(await get(http, "/api/entity", world="w", kind="post", key="1", frame=5))
    monkeypatch.setattr(api_entity, "key_parts", lambda kind, key: ["no item holds this text"])
    assert blamed(await get(http, "/api/entity", world="w", kind="post", key="1", frame=5)) == expected
    history = await get(http, "/api/history", world="w", kind="post", key="1")
    assert history["versions"][0]["changes"][0]["delta"]["stream_id"] == "s2"


async def test_an_entity_that_did_not_exist_yet(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/entity", world="w", kind="post", key="2", frame=2)
    assert doc["exists"] is False and doc["version"] is None and doc["versions"] == 2
    none = await get(http, "/api/entity", world="w", kind="post", key="999")
    assert none["exists"] is False and none["versions"] == 0


async def test_history_lists_versions_with_their_changes_and_blame(http: httpx.AsyncClient) -> None:
    doc = await get(http, "/api/history", world="w", kind="post", key="1")
    assert doc["total"] == 2 and doc["next"] is None
    newest, oldest = doc["versions"]
    assert (newest["valid_from"], newest["valid_to"], newest["created"]) == (2, None, False)
    [change] = newest["changes"]
    assert (change["field"], change["before"], change["after"], change["frame"]) == ("title", "b", "d", 2)
    assert change["delta"]["stream_id"] == "s2"
    assert (oldest["valid_from"], oldest["valid_to"], oldest["created"]) == (1, 2, True)
    assert {c["field"]: c["delta"]["stream_id"] for c in oldest["changes"]} == {
        "number": "s2",
        "title": "s2",
        "author": "s1",
    }

    first_page = await get(http, "/api/history", world="w", kind="post", key="1", limit=1)
    assert [v["valid_from"] for v in first_page["versions"]] == [2] and first_page["next"] == 2
    assert (
        first_page["versions"][0]["changes"][0]["before"] == "b"
    )  # compared with the version on the next page
    second = await get(http, "/api/history", world="w", kind="post", key="1", limit=1, before=2)
    assert [v["valid_from"] for v in second["versions"]] == [1] and second["next"] is None


async def test_quarantine_and_late_attempts_carry_the_reason_and_the_original(
    http: httpx.AsyncClient,
) -> None:
    q = await get(http, "/api/quarantine", world="w")
    [item] = q["items"]
    assert (item["frame"], item["stream_id"], item["key"], item["position"]) == (3, "s1", "posts_created", 2)
    assert item["reason"] == "post has no readable number" and item["item"] == {"title": "no number"}
    late = await get(http, "/api/late", world="w")
    [attempt] = late["items"]
    assert (attempt["frame"], attempt["stream_id"], attempt["policy"]) == (3, "s3", "reject")
    assert attempt["payload"] == {"posts_updated": [{"number": 1, "title": "too late"}]}
    assert attempt["utc"] == at(30).isoformat()
    assert (await get(http, "/api/quarantine", world="w", frame=2))["items"] == []
    deferred = await get(http, "/api/late", world="d")
    assert [a["policy"] for a in deferred["items"]] == ["defer"]
    assert T0.year == 2031
