"""An example worker: one stream of a fleet writing into a shared world.

docker-compose.yml runs it as the ``worker`` service; every replica
(``docker-compose up --scale worker=8``) is one stream, named after its host
(the container). It uses only the public client API, so it doubles as a
template for your own workers::

    python3 docker/worker.py --world fleet --period 1 --frames 0   # 0: until stopped

Frames follow the wall clock (frame = seconds since the epoch // period), so
replicas agree on the current frame without talking to each other. Each period
the worker writes one delta for the current frame: it retitles a post, comments
on it, reacts to it and records an observation. Nobody calls ``close_frame``:
the world's deadline closes each frame (``dreamcatcher world fleet
--close-after 2``, which the compose ``init`` service runs), then the merger
service merges it. A delta that arrives after its frame closed (a replica that
stalled longer than the deadline) gets ``FrameClosedError``: it is logged and
the worker goes on with the next frame.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time

from dreamcatcher_pg import DeltaClient, DreamcatcherError, FrameClosedError

log = logging.getLogger("worker")

TOPICS = ("tidepools", "lanterns", "glass bees", "paper boats", "night trains", "salt maps")
REACTIONS = ("like", "heart", "insight", "rocket")


def payload(stream: str, frame: int, rng: random.Random) -> dict[str, object]:
    post = rng.randrange(1, 25)
    return {
        "posts_updated": [{"number": post, "title": f"On {rng.choice(TOPICS)}", "last_editor": stream}],
        "comments_added": [
            {"id": f"{stream}-{frame}", "discussion": post, "author": stream, "body": f"frame {frame}"}
        ],
        "reactions_added": [{"target": str(post), "type": rng.choice(REACTIONS), "author": stream}],
        "observations": [{"stream": stream, "load": round(rng.random(), 3)}],
    }


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=max(seconds, 0.0))


async def run(dsn: str, world: str, stream: str, period: float, frames: int, stop: asyncio.Event) -> int:
    """Write one delta per frame until ``stop`` (or ``frames`` deltas); return how many were written."""
    rng = random.Random(stream)
    written = 0
    async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
        while not stop.is_set() and (frames == 0 or written < frames):
            frame = int(time.time() // period)
            try:
                await dc.insert_delta(frame, payload(stream, frame, rng))
                written += 1
                log.info("stream %s wrote frame %s", stream, frame)
            except FrameClosedError as exc:
                log.warning("late for frame %s: %s", frame, exc)
            await pause(stop, (frame + 1) * period - time.time() + 0.01)  # to the next frame
    return written


async def main() -> int:
    parser = argparse.ArgumentParser(description="an example dreamcatcher worker (one stream)")
    parser.add_argument("--dsn", default=os.environ.get("DREAMCATCHER_DSN"), help="($DREAMCATCHER_DSN)")
    parser.add_argument("--world", default=os.environ.get("DREAMCATCHER_WORLD", "fleet"))
    parser.add_argument("--stream", default=socket.gethostname(), help="stream id (default: the host name)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds per frame (default 1)")
    parser.add_argument("--frames", type=int, default=0, help="frames to write, 0: until stopped")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("no --dsn and no DREAMCATCHER_DSN")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    backoff, written = 0.5, 0
    while not stop.is_set():
        try:
            left = 0 if args.frames == 0 else args.frames - written
            written += await run(args.dsn, args.world, args.stream, args.period, left, stop)
            log.info("stream %s done: %s deltas written", args.stream, written)
            return 0
        except (DreamcatcherError, OSError) as exc:  # the database restarting, say: try again
            log.warning("%s; retrying in %.1fs", exc, backoff)
            await pause(stop, backoff)
            backoff = min(backoff * 2, 10.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
