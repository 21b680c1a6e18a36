"""Bad requests get a clear 4xx JSON error naming what was wrong; nothing turns into a 500."""

from __future__ import annotations

import httpx
import pytest

ENDPOINTS = [
    "world",
    "timeline",
    "frame",
    "state",
    "diff",
    "entity",
    "history",
    "quarantine",
    "late",
    "events",
]


async def error(http: httpx.AsyncClient, status: int, path: str, **params: object) -> dict[str, str]:
    response = await http.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    assert "Traceback" not in response.text
    return dict(doc["error"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_every_world_endpoint_wants_a_world(http: httpx.AsyncClient, endpoint: str) -> None:
    e = await error(http, 400, f"/api/{endpoint}")
    assert e["code"] == "bad_request" and "'world'" in e["message"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_an_unknown_world_is_404(http: httpx.AsyncClient, endpoint: str) -> None:
    e = await error(http, 404, f"/api/{endpoint}", world="atlantis", frame=1, a=1, b=2, kind="post", key="1")
    assert e["code"] == "unknown_world" and "atlantis" in e["message"]


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/api/state", {"frame": "seven"}, "'frame' must be an integer"),
        ("/api/state", {"frame": "-1"}, "'frame' must be between 0 and"),
        ("/api/state", {"frame": "99999999999999999999"}, "'frame'"),
        ("/api/state", {"limit": "0"}, "'limit' must be between 1 and 500"),
        ("/api/state", {"limit": "501"}, "'limit' must be between 1 and 500"),
        ("/api/state", {"key": "x" * 1001}, "longer than 1000"),
        ("/api/state", {"after": "a\x00b"}, "NUL"),
        ("/api/frame", {}, "'frame' is required"),
        ("/api/diff", {"a": "1"}, "'b' is required"),
        ("/api/entity", {"kind": "post"}, "'key' is required"),
        ("/api/history", {"key": "1"}, "'kind' is required"),
        ("/api/history", {"kind": "post", "key": "1", "before": "x"}, "'before' must be an integer"),
        ("/api/timeline", {"from": "5", "to": "2"}, "'from' (5) is after 'to' (2)"),
        ("/api/timeline", {"points": "0"}, "'points'"),
        ("/api/quarantine", {"before": "0"}, "'before'"),
        ("/api/late", {"frame": "1.5"}, "'frame' must be an integer"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    http: httpx.AsyncClient, path: str, params: dict[str, str], needle: str
) -> None:
    e = await error(http, 400, path, world="w", **params)
    assert e["code"] == "bad_request" and needle in e["message"], e


async def test_a_frame_not_merged_yet_is_404(http: httpx.AsyncClient) -> None:
    e = await error(http, 404, "/api/state", world="w", frame=6)
    assert e["code"] == "frame_not_merged" and "last merged: 5" in e["message"]
    e = await error(http, 404, "/api/diff", world="w", a=1, b=60)
    assert e["code"] == "frame_not_merged" and e["message"].startswith("b 60")
    e = await error(http, 404, "/api/entity", world="w", kind="post", key="1", frame=6)
    assert e["code"] == "frame_not_merged"


async def test_an_unknown_kind_is_404(http: httpx.AsyncClient) -> None:
    for path in ("/api/state", "/api/diff"):
        e = await error(http, 404, path, world="w", kind="spaceship", a=1, b=2)
        assert e["code"] == "unknown_kind" and "spaceship" in e["message"]


async def test_unknown_paths_and_methods_are_json_errors(http: httpx.AsyncClient) -> None:
    assert (await error(http, 404, "/api/nothing"))["code"] == "not_found"
    response = await http.post("/api/state", params={"world": "w"})
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"
    response = await http.delete("/api/worlds")
    assert response.status_code == 405


async def test_strange_but_valid_text_is_just_not_found(http: httpx.AsyncClient) -> None:
    for world in ("'; DROP TABLE dreamcatcher.delta_log; --", "w:1", "ü" * 200, "%"):
        assert (await error(http, 404, "/api/state", world=world))["code"] == "unknown_world"
    assert (await error(http, 400, "/api/state", world="w" * 201))["code"] == "bad_request"
    doc = (
        await http.get("/api/state", params={"world": "w", "kind": "post", "key": "%_'\\", "value": "'"})
    ).json()
    assert doc["items"] == [] and doc["search"]["exhausted"] is True
