"""A sync worker: one stream appending deltas with SyncDeltaClient, no event loop
(``pip install 'dreamcatcher-pg[sync]'``).

    python examples/workers/sync_worker.py --dsn postgresql://localhost/app [--init] [--wait 30]

The same worker as async_worker.py, written the way a simulation step, a notebook cell or a
Celery task is: plain function calls that block. It prints one JSON line: what happened.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from dreamcatcher_pg import FrameClosedError, SyncDeltaClient

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


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.init:  # the schema, for a fresh database (idempotent; `dreamcatcher init` does the same)
        import asyncio

        from dreamcatcher_pg.schema import init_database

        asyncio.run(init_database(args.dsn))
    frames = list(range(args.first_frame, args.first_frame + args.frames))
    statuses: Counter[str] = Counter()
    with SyncDeltaClient.connect(args.dsn, stream_id=args.stream, world=args.world) as dc:
        for frame in frames:
            batch = [delta(args.stream, frame, i) for i in range(args.deltas)]
            try:
                statuses.update(r.status for r in dc.insert_deltas(batch))
            except FrameClosedError:
                statuses["late"] += len(batch)
            if args.close:
                dc.close_frame(frame)
        if args.wait is not None:
            for frame in frames:
                dc.wait_merged(frame, timeout=args.wait)
    return {"client": "sync", "stream": args.stream, "world": args.world, "frames": frames, **statuses}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dsn", default=os.environ.get("DREAMCATCHER_DSN"), help="default $DREAMCATCHER_DSN")
    p.add_argument("--world", default="default")
    p.add_argument("--stream", default="sync-worker")
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
    print(json.dumps(run(parse_args())))
