"""The worlds the HTTP tests read, written through the real client and merged by the real merger.

World ``w`` (late policy reject): every merge rule the inspector explains.

* frame 1: s1 creates post 1 (title a, author ada) and comment c1 (body hi);
  s2, later, retitles post 1 (b) and sends c1 again (body hello, and a mood).
  Post 1: title b by s2 (last write), author ada by s1. Comment c1: body hi by
  s1 (first write wins), mood glad by s2 (a field still missing).
* frame 2: s1 and s2 at the SAME utc retitle post 1 (c, d): d wins (the greater
  stream id). s1 updates agent ada and writes chapter 1 of book bk (target 2).
* frame 3: s1 writes chapter 2 of bk (the book compiles), creates post 2, and
  sends a post without a number (quarantined). Then s3 tries to write frame 3:
  refused, recorded as a late attempt.
* frame 5 (no frame 4): s2 retitles post 2 and writes an observation.

World ``d`` (late policy defer): post 7 in frame 1; a late delta of s2 for
frame 1 retitles it; frame 2's merge takes it (blame: written for frame 1,
merged into frame 2).

World ``many``: 30 posts (100..129) in frame 1, the odd ones retitled in frame 2.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dreamcatcher_pg import DeltaClient, FrameClosedError, Merger, configure_world

T0 = datetime(2031, 3, 1, tzinfo=UTC)
MANY = range(100, 130)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def many_title(number: int, frame: int) -> str:
    kind = "odd" if number % 2 else "even"
    return f"{kind} post {number}" + (" retitled" if frame == 2 else "")


W_DELTAS: list[tuple[str, int, float, dict[str, Any]]] = [
    (
        "s1",
        1,
        1,
        {
            "posts_created": [{"number": 1, "title": "a", "author": "ada"}],
            "comments_added": [{"id": "c1", "discussion": 1, "author": "bob", "body": "hi"}],
        },
    ),
    (
        "s2",
        1,
        2,
        {
            "posts_updated": [{"number": 1, "title": "b"}],
            "comments_added": [
                {"id": "c1", "discussion": 1, "author": "bob", "body": "hello", "mood": "glad"}
            ],
        },
    ),
    (
        "s1",
        2,
        10,
        {
            "posts_updated": [{"number": 1, "title": "c"}],
            "agents_updated": [{"id": "ada", "bio": "x"}],
            "chapters": [{"book": "bk", "agent": "ada", "chapter": 1, "target": 2}],
        },
    ),
    ("s2", 2, 10, {"posts_updated": [{"number": 1, "title": "d"}]}),
    (
        "s1",
        3,
        20,
        {
            "chapters": [{"book": "bk", "agent": "bob", "chapter": 2}],
            "posts_created": [{"number": 2, "title": "two"}, {"title": "no number"}],
        },
    ),
    ("s2", 5, 40, {"posts_updated": [{"number": 2, "title": "two!"}], "observations": [{"note": "look"}]}),
]
LATE_PAYLOAD = {"posts_updated": [{"number": 1, "title": "too late"}]}
DEFERRED_PAYLOAD = {"posts_updated": [{"number": 7, "title": "late"}]}


async def _merge(dsn: str, world: str) -> None:
    merger = Merger(dsn, world)
    try:
        while await merger.run_until_idle():
            pass
    finally:
        await merger.aclose()


async def _write(
    dsn: str, world: str, stream: str, frame: int, seconds: float, payload: dict[str, Any]
) -> None:
    async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
        await dc.insert_delta(frame, payload, at(seconds))


async def _close(dsn: str, world: str, frame: int) -> None:
    async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
        await dc.close_frame(frame)


async def write_scenario(dsn: str) -> None:
    for frame in (1, 2, 3, 5):
        for stream, f, seconds, payload in W_DELTAS:
            if f == frame:
                await _write(dsn, "w", stream, f, seconds, payload)
        await _close(dsn, "w", frame)
        await _merge(dsn, "w")
        if frame == 3:
            with pytest.raises(FrameClosedError):
                await _write(dsn, "w", "s3", 3, 30, LATE_PAYLOAD)

    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await configure_world(conn, "d", late_policy="defer")
    finally:
        await conn.close()
    await _write(dsn, "d", "s1", 1, 1, {"posts_created": [{"number": 7, "title": "first"}]})
    await _close(dsn, "d", 1)
    await _merge(dsn, "d")
    await _write(dsn, "d", "s2", 1, 5, DEFERRED_PAYLOAD)  # late: deferred into the next merge
    await _write(dsn, "d", "s1", 2, 60, {"agents_updated": [{"id": "z", "bio": "zz"}]})
    await _close(dsn, "d", 2)
    await _merge(dsn, "d")

    await _write(
        dsn, "many", "s1", 1, 1, {"posts_created": [{"number": n, "title": many_title(n, 1)} for n in MANY]}
    )
    await _close(dsn, "many", 1)
    await _merge(dsn, "many")
    odd = [{"number": n, "title": many_title(n, 2)} for n in MANY if n % 2]
    await _write(dsn, "many", "s1", 2, 70, {"posts_updated": odd})
    await _close(dsn, "many", 2)
    await _merge(dsn, "many")
