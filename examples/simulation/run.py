"""A simulation on dreamcatcher with its own entity types (rules.toml beside this file).

Four workers move units, log events and change depot stock for five frames; the merger merges
each frame in one transaction with the simulation's rules. Run it against any PostgreSQL that
`dreamcatcher init` has prepared:

    python examples/simulation/run.py postgresql://localhost/sim  [--world sim]

It prints the state after the last frame (units, stock) and the number of events kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from dreamcatcher_pg import DeltaClient, Merger
from dreamcatcher_pg.rules import apply_rules, load_rules

RULES = Path(__file__).with_name("rules.toml")
WORKERS, FRAMES, UNITS = 4, 5, 6
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def payload(worker: int, frame: int) -> dict[str, object]:
    """What one worker did in one frame: a pure function of (worker, frame)."""
    rng = random.Random(f"{worker}:{frame}")
    unit = rng.randrange(1, UNITS + 1)
    out: dict[str, object] = {
        "units_moved": [{"id": unit, "x": rng.randrange(10), "y": rng.randrange(10), "by": f"w{worker}"}],
        "events": [{"what": "moved", "unit": unit}],
        "stock_changes": [{"depot": "north", "item": "ore", "qty": rng.randrange(1, 5)}],
    }
    if frame == 1:
        out["units_spawned"] = [{"id": u, "hp": 10} for u in range(1, UNITS + 1)]
    if frame == FRAMES and worker == 0:
        out["units_destroyed"] = [UNITS]  # a bare id: the unit's key
        out["stock_changes"] = [
            {"depot": "north", "item": "ore", "qty": -3},
            {"depot": "south", "item": "gold"},
        ]
    return out


async def run(dsn: str, world: str) -> dict[str, object]:
    await apply_rules(dsn, world, load_rules(RULES))
    for frame in range(1, FRAMES + 1):
        for worker in range(WORKERS):
            async with DeltaClient.connect(dsn, stream_id=f"w{worker}", world=world) as dc:
                utc = T0 + timedelta(minutes=frame, seconds=worker % 2)  # some workers tie on utc
                await dc.insert_delta(frame, payload(worker, frame), utc=utc)
        async with DeltaClient.connect(dsn, stream_id="clock", world=world) as dc:
            await dc.close_frame(frame)
        merger = Merger(dsn, world)
        try:
            await merger.run_until_idle()
        finally:
            await merger.aclose()
    conn = await asyncpg.connect(dsn)
    try:
        units = {
            json.loads(r["key"])[0]: json.loads(r["data"])
            for r in await conn.fetch(
                "SELECT key::text, data::text FROM dreamcatcher.entities($1, 'unit')", world
            )
        }
        stock = {
            "/".join(json.loads(r["key"])): json.loads(r["data"]).get("qty")
            for r in await conn.fetch(
                "SELECT key::text, data::text FROM dreamcatcher.entities($1, 'stock')", world
            )
        }
        events = await conn.fetchval("SELECT count(*) FROM dreamcatcher.entities($1, 'event')", world)
        last_hash = await conn.fetchval(
            "SELECT state_hash FROM dreamcatcher.frames WHERE world = $1 ORDER BY frame DESC LIMIT 1", world
        )
    finally:
        await conn.close()
    return {"units": units, "stock": stock, "events": events, "state_hash": last_hash}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("--world", default="sim")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.dsn, args.world)), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
