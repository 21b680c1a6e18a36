"""A code-review fleet on dreamcatcher with its own entity types (rules.toml beside this file).

Three reviewer agents look at the same three changes over three frames: they report the files a
change touches (the latest report of a file wins), review (a reviewer's first review of a change
stands; repeats are duplicates), label (labels are unioned) and report findings (the same
finding from two agents is one). A change is approved once two reviews are in.

    python examples/code_review/run.py postgresql://localhost/review  [--world review]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from dreamcatcher_pg import DeltaClient, Merger
from dreamcatcher_pg.rules import apply_rules, load_rules

RULES = Path(__file__).with_name("rules.toml")
AGENTS = ("alice", "bob", "carol")
T0 = datetime(2030, 6, 1, tzinfo=UTC)


def payload(agent: str, frame: int) -> dict[str, object]:
    change = 100 + frame
    n = AGENTS.index(agent)
    return {
        "files_changed": [{"change": change, "path": f"src/m{frame}.py", "lines": 10 * (n + 1), "by": agent}],
        "reviews": [{"change": change, "agent": agent, "verdict": "approve" if n != 2 else "comment"}]
        + ([{"change": change - 1, "reviewer": agent, "verdict": "late repeat"}] if frame > 1 else []),
        "labels": [{"change": change, "tags": ["needs-review", f"area-{n}"]}],
        "findings": [f"unused import in src/m{frame}.py"] + ([{"line": 3, "rule": "E501"}] if n == 0 else []),
    }


async def run(dsn: str, world: str) -> dict[str, object]:
    await apply_rules(dsn, world, load_rules(RULES))
    for frame in (1, 2, 3):
        for n, agent in enumerate(AGENTS):
            if frame == 3 and agent == "carol":
                continue  # carol is late for the last change: it gets one review less
            async with DeltaClient.connect(dsn, stream_id=agent, world=world) as dc:
                await dc.insert_delta(
                    frame, payload(agent, frame), utc=T0 + timedelta(minutes=frame, seconds=n)
                )
        async with DeltaClient.connect(dsn, stream_id="ci", world=world) as dc:
            await dc.close_frame(frame)
        merger = Merger(dsn, world)
        try:
            await merger.run_until_idle()
        finally:
            await merger.aclose()
    conn = await asyncpg.connect(dsn)
    try:

        async def kind(name: str) -> list[tuple[Any, Any]]:
            """(key, data) of the current entities of a kind, by key."""
            rows = await conn.fetch(
                "SELECT key::text, data::text FROM dreamcatcher.entities($1, $2) ORDER BY key::text",
                world,
                name,
            )
            return [(json.loads(r["key"]), json.loads(r["data"])) for r in rows]

        return {
            "files": len(await kind("file")),
            "reviews": len(await kind("review")),
            "labels": {str(k[0]): d["tags"] for k, d in await kind("label")},
            "findings": len(await kind("finding")),
            "approved": {str(k[0]): d["compiled_frame"] for k, d in await kind("approval")},
        }
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--world", default="review")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.dsn, args.world)), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
