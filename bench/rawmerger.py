"""The latency row's ceiling merger: ``python -m bench.rawmerger DSN WORLD``, a subprocess.

The raw counterpart of ``dreamcatcher merger``: one dedicated connection that LISTENs
on ``bench_close``; for each ``frame`` it is sent, one transaction merges that frame's
rows of ``public.bench_raw`` into the plain tables of bench/merge.py (the set-based
merge of merge_throughput's ceiling, statements prepared once) and NOTIFYs
``bench_merged`` with the frame. It runs in a process of its own, as our merger does,
so neither merger shares the writers' event loop. It prints ``ready`` once listening.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from bench.merge import RAW_MERGE_COMMENTS, RAW_MERGE_POSTS

CLOSE_CHANNEL = "bench_close"
MERGED_CHANNEL = "bench_merged"
SOURCE = "public.bench_raw"


def raw_merge_statements() -> tuple[str, str]:
    """merge_throughput's ceiling, reading the raw writers' table instead of the log."""
    return (
        RAW_MERGE_POSTS.replace("dreamcatcher.delta_log", SOURCE),
        RAW_MERGE_COMMENTS.replace("dreamcatcher.delta_log", SOURCE),
    )


async def serve(dsn: str, world: str) -> None:
    conn = await asyncpg.connect(dsn)
    listener = await asyncpg.connect(dsn)
    frames: asyncio.Queue[int] = asyncio.Queue()
    try:
        statements = [await conn.prepare(sql) for sql in raw_merge_statements()]
        notify = await conn.prepare(f"SELECT pg_notify('{MERGED_CHANNEL}', $1::text)")
        await listener.add_listener(
            CLOSE_CHANNEL, lambda _c, _p, _ch, payload: frames.put_nowait(int(str(payload)))
        )
        print("ready", flush=True)
        while True:
            frame = await frames.get()
            async with conn.transaction():
                for statement in statements:
                    await statement.fetch(world, frame, world)
                await notify.fetch(str(frame))
    finally:
        await listener.close()
        await conn.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
