"""A deterministic log full of the messy shapes the default rules read, and its fingerprint.

``tests/data/golden_default_rules.json`` was written by the hand-written merge (the code before
the rules became a declaration) from :func:`golden_log`; ``test_default_rules_golden.py`` checks
that the default rule set gives byte-identical state: every frame's hash, stats and delta count,
every entity version (kind, key, data, frames) and every quarantined item.

Regenerate (only when the default rules change on purpose)::

    python -m tests.support.golden postgresql://.../db > tests/data/golden_default_rules.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

WORLD = "golden"
FRAMES = 12
STREAMS = ("B", "Z", "a", "c", "stream-1")
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _post(rng: random.Random) -> Any:
    n = rng.randrange(1, 12)
    return rng.choice(
        [
            {"number": n, "title": f"t{rng.randrange(5)}", "score": rng.randrange(3)},
            {"number": str(n), "channel": rng.choice(["general", "meta"])},
            {"number": f" {n} ", "pinned": rng.random() < 0.5},
            n,
            str(n),
            {"title": "no number"},
            {"number": 1.5},
            {"number": "x"},
            True,
            [n],
        ]
    )


def _agent(rng: random.Random) -> Any:
    a = f"ag-{rng.randrange(6)}"
    return rng.choice(
        [
            {"id": a, "mood": rng.choice(["calm", "busy"])},
            {"agent_id": a, "level": rng.randrange(4)},
            {"agent": a, "level": rng.randrange(4)},
            {"id": rng.randrange(3), "mood": "numeric id"},
            {"mood": "no id"},
            "bare-agent",
            {"id": "L" * 1100},
        ]
    )


def _comment(rng: random.Random) -> Any:
    c = f"c-{rng.randrange(8)}"
    d = rng.randrange(1, 4)
    return rng.choice(
        [
            {"id": c, "author": rng.choice(["ann", "bob"]), "discussion": d, "body": "b"},
            {"comment_id": c, "agent": "cy", "content": "aliased", "replied_to": "c-0"},
            {"id": c, "summary": "s", "replyTo": "c-1", "target": "ignored beside replyTo"},
            {"author": "ann", "discussion": d, "body": "no id"},
            {"agent": "ann", "discussion": d, "content": "no id"},
            {"id": c, "comment_id": "legacy", "author": "x", "agent": "y"},
            c,
            f" {c} ",
            12345,
            {},
            "",
            {"id": "K" * 1100},
            {"id": 77, "body": "numeric id"},
        ]
    )


def _reaction(rng: random.Random) -> Any:
    node = f"post-{rng.randrange(4)}"
    kind = rng.choice(["like", "heart", "+1"])
    return rng.choice(
        [
            {"target": node, "type": kind, "author": rng.choice(["ann", "bob"])},
            {"node": node, "reaction": kind, "agent": "ann"},
            {"target": node, "type": kind},
            {"target": node, "type": kind, "count": 2},
            f"{node}:{kind}",
            f"{kind} on {node}",
            "discussion:7:eyes",
            {"type": kind, "count": rng.randrange(1, 5)},
            {"agent": "ann", "count": 2},
            rng.randrange(1, 9),
            "just-a-node",
            {"target": "T" * 1100, "type": "like"},
            None,
        ]
    )


def _chapter(rng: random.Random) -> Any:
    book = f"bk-{rng.randrange(3)}"
    ch = rng.randrange(1, 6)
    return rng.choice(
        [
            {"book": book, "agent": rng.choice(["ann", "bob"]), "chapter": ch},
            {"book": book, "author": "cy", "chapter": str(ch), "title": "t"},
            {"book": book, "agent": "ann", "chapter": ch, "target": rng.randrange(2, 8)},
            {"book": book, "agent": "bob", "chapter": ch, "target": rng.choice(["x", 0, -1, 2.5])},
            {"agent": "ann", "chapter": 1},
            {"book": book, "chapter": 1},
            {"book": book, "agent": "ann", "chapter": "one"},
            "not an object",
        ]
    )


def _observation(rng: random.Random) -> Any:
    return rng.choice([{"kind": "weather", "v": rng.randrange(3)}, {"kind": "mood"}, 5, "text", [1, 2]])


KEYS = {
    "posts_created": _post,
    "posts_updated": _post,
    "agents_updated": _agent,
    "comments_added": _comment,
    "reactions_added": _reaction,
    "chapters": _chapter,
    "observations": _observation,
}


def golden_log() -> list[tuple[int, str, datetime, dict[str, Any]]]:
    """(frame, stream, utc, payload) for every delta; utc ties across streams on purpose."""
    rng = random.Random(20250301)
    out: list[tuple[int, str, datetime, dict[str, Any]]] = []
    for frame in range(1, FRAMES + 1):
        for stream in STREAMS:
            for d in range(rng.randrange(1, 4)):
                payload: dict[str, Any] = {}
                for key in rng.sample(sorted(KEYS), rng.randrange(1, 5)):
                    shape = rng.random()
                    if shape < 0.1:
                        payload[key] = KEYS[key](rng)  # one item, not a list
                    elif shape < 0.13:
                        payload[key] = None
                    else:
                        payload[key] = [KEYS[key](rng) for _ in range(rng.randrange(1, 6))]
                if rng.random() < 0.2:
                    payload["mood"] = "unread key"
                if rng.random() < 0.1:
                    payload["_meta"] = {"note": "envelope"}
                utc = T0 + timedelta(minutes=frame, seconds=d + rng.choice([0, 0, 1]))
                out.append((frame, stream, utc, payload))
    # one entity given many items in one frame (the linear fold), both rule families
    big = [{"number": 3, f"f{i % 90}": i} for i in range(200)]
    out.append((5, "many", T0 + timedelta(minutes=5, seconds=30), {"posts_updated": big}))
    many_comments = [{"id": "c-many", f"g{i}": i} for i in range(100)]
    out.append((6, "many", T0 + timedelta(minutes=6, seconds=30), {"comments_added": many_comments}))
    # a delta of 150 unreadable items: 100 rows, then one summary row
    bad = [{"x": i} for i in range(150)]
    out.append((7, "bad", T0 + timedelta(minutes=7, seconds=30), {"posts_created": bad}))
    return out


async def load_and_merge(conn: asyncpg.Connection, world: str = WORLD) -> None:
    """Write the log straight into the tables, close every frame and merge them in order."""
    for frame, stream, utc, payload in golden_log():
        await conn.execute(
            "SELECT dreamcatcher.append_delta($1, $2, $3, $4, $5::jsonb)",
            world,
            stream,
            frame,
            utc,
            json.dumps(payload),
        )
    for frame in range(1, FRAMES + 1):
        await conn.execute("SELECT dreamcatcher.close_frame($1, $2)", world, frame)
    for frame in range(1, FRAMES + 1):
        async with conn.transaction():
            assert await conn.fetchval("SELECT dreamcatcher.claim_next_frame($1)", world) == frame
            await conn.execute("SELECT dreamcatcher.merge_frame($1, $2)", world, frame)


def _digest(rows: list[Any]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()


async def fingerprint(conn: asyncpg.Connection, world: str = WORLD) -> dict[str, Any]:
    """What the merge made of the log: frames (hash, stats), versions and quarantine."""
    frames = [
        [r["frame"], r["state_hash"], r["delta_count"], json.loads(r["stats"])]
        for r in await conn.fetch(
            "SELECT frame, state_hash, delta_count, stats::text FROM dreamcatcher.frame_log "
            "WHERE world = $1 ORDER BY frame",
            world,
        )
    ]
    versions = [
        list(r.values())
        for r in await conn.fetch(
            "SELECT kind, ekey, data::text, first_frame, valid_from, valid_to "
            "FROM dreamcatcher.entity_versions WHERE world = $1 "
            'ORDER BY kind, ekey COLLATE "C", valid_from',
            world,
        )
    ]
    quarantine = [
        [r["frame"], r["stream_id"], r["key"], r["position"], r["item"]]
        for r in await conn.fetch(
            "SELECT frame, stream_id, key, position, item::text FROM dreamcatcher.quarantine_log "
            'WHERE world = $1 ORDER BY frame, stream_id COLLATE "C", utc, key COLLATE "C", position',
            world,
        )
    ]
    return {
        "frames": frames,
        "versions": len(versions),
        "versions_sha256": _digest(versions),
        "quarantined": len(quarantine),
        "quarantine_sha256": _digest(quarantine),
    }


async def _main(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await load_and_merge(conn)
        print(json.dumps(await fingerprint(conn), indent=1))
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
