"""An async worker: one stream appending deltas with DeltaClient (a worker-only install is enough:
``pip install dreamcatcher-pg``).

    python examples/workers/async_worker.py --dsn postgresql://localhost/app [--init] [--wait 30]

For each frame it appends a batch of deltas for its stream, then (``--close``, the default) closes
the frame; with ``--wait`` it waits until a merger (``dreamcatcher merger``, elsewhere) has merged
every frame. Every delta has a fixed writer clock, so running it twice stores nothing new: the
second run's receipts read ``duplicate``, even for merged frames — retrying a worker is always
safe; a new delta for a closed frame is refused (``late``). It prints one JSON line: what happened.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from dreamcatcher_pg import DeltaClient, FrameClosedError

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def delta(stream: str, frame: int, index: int) -> dict[str, Any]:
    """What the stream did in ``frame``: a pure function of its arguments (a retry repeats it)."""
    return {
        "frame": frame,
        "utc": T0 + timedelta(seconds=frame, microseconds=index),
        "payload": {
            "agents_updated": [{"id": stream, "last_frame": frame, "steps": index + 1}],
            "observations": [{"stream": stream, "frame": frame, "value": index}],
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.init:  # the schema, for a fresh database (idempotent; `dreamcatcher init` does the same)
        from dreamcatcher_pg.schema import init_database

        await init_database(args.dsn)
    frames = list(range(args.first_frame, args.first_frame + args.frames))
    statuses: Counter[str] = Counter()
    async with DeltaClient.connect(args.dsn, stream_id=args.stream, world=args.world) as dc:
        for frame in frames:
            batch = [delta(args.stream, frame, i) for i in range(args.deltas)]
            try:
                statuses.update(r.status for r in await dc.insert_deltas(batch))
            except FrameClosedError:
                statuses["late"] += len(batch)
            if args.close:
                await dc.close_frame(frame)
        if args.wait is not None:
            for frame in frames:
                await dc.wait_merged(frame, timeout=args.wait)
    return {"client": "async", "stream": args.stream, "world": args.world, "frames": frames, **statuses}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dsn", default=os.environ.get("DREAMCATCHER_DSN"), help="default $DREAMCATCHER_DSN")
    p.add_argument("--world", default="default")
    p.add_argument("--stream", default="async-worker")
    p.add_argument("--first-frame", type=int, default=1)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--deltas", type=int, default=10, help="deltas per frame")
    p.add_argument("--no-close", dest="close", action="store_false", help="leave the frames open")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait until a merger merged them")
    p.add_argument("--init", action="store_true", help="apply the schema first")
    args = p.parse_args(argv)
    if not args.dsn:
        p.error("give --dsn or set DREAMCATCHER_DSN")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(parse_args()))))
