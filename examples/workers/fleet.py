"""A multiprocessing fleet of sync workers: N processes, one stream each, one SyncDeltaClient per
process (``pip install 'dreamcatcher-pg[sync]'``).

    python examples/workers/fleet.py --dsn postgresql://localhost/app --processes 4 [--wait 30]

The world expects the fleet's streams, so the merger closes each frame once every stream wrote
to it; the parent also closes the frames when the fleet is done (idempotent), so a merger that
runs later finds them closed anyway. A task is (stream, frame); each process keeps one client per
stream it has served, opened in the process on first use — after the fork: a connection must
never cross a fork — and closed when the process exits. The same shape serves Celery: a
process-global dict of clients, closed in ``worker_process_shutdown``. It prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from multiprocessing.util import Finalize
from typing import Any

from dreamcatcher_pg import FrameClosedError, SyncDeltaClient

T0 = datetime(2030, 1, 1, tzinfo=UTC)

#: This process's clients, one per stream it has served (opened on first use, in the process).
_clients: dict[str, SyncDeltaClient] = {}
_dsn, _world = "", ""


def _start_process(dsn: str, world: str) -> None:
    """The pool's initializer: remember where to connect, close the clients when the process ends."""
    global _dsn, _world
    _dsn, _world = dsn, world
    Finalize(None, _close_all, exitpriority=10)


def _close_all() -> None:
    for client in _clients.values():
        client.close()


def step(stream: str, frame: int) -> Counter[str]:
    """One frame of one stream: a few deltas in one batch (a task of the pool)."""
    client = _clients.get(stream)
    if client is None:
        client = _clients[stream] = SyncDeltaClient.open(_dsn, stream_id=stream, world=_world)
    batch = [
        {
            "frame": frame,
            "utc": T0 + timedelta(seconds=frame, microseconds=i),
            "payload": {"observations": [{"stream": stream, "frame": frame, "value": i}]},
        }
        for i in range(3)
    ]
    try:
        return Counter(r.status for r in client.insert_deltas(batch))
    except FrameClosedError:
        return Counter(late=len(batch))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.init:
        import asyncio

        from dreamcatcher_pg.schema import init_database

        asyncio.run(init_database(args.dsn))
    streams = [f"fleet-{i}" for i in range(args.processes)]
    frames = list(range(args.first_frame, args.first_frame + args.frames))
    with SyncDeltaClient.connect(args.dsn, stream_id="fleet-parent", world=args.world) as parent:
        parent.configure_world(expected_streams=streams)
        # "spawn": a fresh interpreter per process, the portable choice (and what macOS uses)
        ctx = multiprocessing.get_context("spawn")
        statuses: Counter[str] = Counter()
        pool = ctx.Pool(args.processes, initializer=_start_process, initargs=(args.dsn, args.world))
        try:
            for frame in frames:
                for counts in pool.starmap(step, [(stream, frame) for stream in streams]):
                    statuses.update(counts)
        finally:
            pool.close()  # (not terminate: the processes exit on their own and close their clients)
            pool.join()
        for frame in frames:
            parent.close_frame(frame)
        if args.wait is not None:
            for frame in frames:
                parent.wait_merged(frame, timeout=args.wait)
    return {"client": "sync-fleet", "processes": args.processes, "frames": frames, **statuses}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--dsn", default=os.environ.get("DREAMCATCHER_DSN"), help="default $DREAMCATCHER_DSN")
    p.add_argument("--world", default="fleet")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--first-frame", type=int, default=1)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait until a merger merged them")
    p.add_argument("--init", action="store_true", help="apply the schema first")
    args = p.parse_args(argv)
    if not args.dsn:
        p.error("give --dsn or set DREAMCATCHER_DSN")
    return args


if __name__ == "__main__":
    print(json.dumps(run(parse_args())))
