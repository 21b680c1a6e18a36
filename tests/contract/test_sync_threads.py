"""SyncDeltaClient and threads: one client shared by threads takes turns; nothing is lost."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import asyncpg

from dreamcatcher_pg import SyncDeltaClient

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def test_threads_sharing_one_client_take_turns_and_lose_nothing(dreamcatcher_dsn: str) -> None:
    with SyncDeltaClient.connect(dreamcatcher_dsn, stream_id="shared", world="threads") as dc:

        def work(thread: int) -> list[str]:
            statuses = []
            for i in range(40):
                utc = T0 + timedelta(seconds=thread, microseconds=i)
                if i % 2:
                    statuses.append(dc.insert_delta(1, {"n": [thread, i]}, utc=utc).status)
                else:
                    [r] = dc.insert_deltas([{"frame": 1, "payload": {"n": [thread, i]}, "utc": utc}])
                    statuses.append(r.status)
            return statuses

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        assert all(s == ["stored"] * 40 for s in results)
        assert dc.close_frame(1) == "closed"

    async def count() -> int:
        conn = await asyncpg.connect(dreamcatcher_dsn)
        try:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM dreamcatcher.delta_log WHERE world = 'threads'"
            )
            return n
        finally:
            await conn.close()

    assert asyncio.run(count()) == 320


def test_close_is_idempotent_and_the_context_manager_closes(dreamcatcher_dsn: str) -> None:
    dc = SyncDeltaClient.open(dreamcatcher_dsn, stream_id="s", world="threads")
    dc.close()
    dc.close()
    with dc:  # the context manager closes too
        pass
