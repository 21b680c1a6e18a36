"""Scenario: a private embedded PostgreSQL stopped (fast, immediate) and started under its clients."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from bench.server import PrivatePostgres
from dreamcatcher_pg import (
    ConnectionLostError,
    DeltaClient,
    Merger,
    configure_world,
)
from dreamcatcher_pg.ops.schema import init_database

from .common import (
    PATIENCE,
    T0,
    Ledger,
    close_retrying,
    connection,
    fleet_payload,
    insert_acked,
    marker,
    poll_until,
)
from .report import Report
from .verdict import Verdict, install_merge_audit, merge_all, verify

# -- scenario: PostgreSQL restarted -----------------------------------------------------------


async def pg_restart(
    *,
    restarts: int = 4,
    outage: float = 1.0,
    streams: int = 6,
    lag: int = 3,
    seed: int | None = None,
    replay: bool = True,
) -> Report:
    """Writers, an in-process merger and probes run while a private server restarts ``restarts`` times.

    Alternates ``fast`` and ``immediate`` stops, each followed by ``outage`` seconds down.
    Reconnect time per restart: from the server being up again to the first successful
    client call (a probe calling ``frame_status`` every 10 ms) and to the merger leading
    again; ``reconnect_s`` keeps the larger of the two. An "in-flight" writer fires single
    inserts without retrying; after the run every one that raised ``ConnectionLostError``
    is retried with the same utc and must answer ``stored`` or ``duplicate``.
    """
    pg = PrivatePostgres()
    await asyncio.to_thread(pg.start)
    try:
        async with connection(pg.dsn_for("postgres")) as admin:
            await admin.execute("CREATE DATABASE reliability")
        dsn = pg.dsn_for("reliability")
        await init_database(dsn)
        return await _pg_restart_run(
            pg, dsn, restarts=restarts, outage=outage, streams=streams, lag=lag, seed=seed, replay=replay
        )
    finally:
        await asyncio.to_thread(pg.close)


async def _pg_restart_run(
    pg: PrivatePostgres,
    dsn: str,
    *,
    restarts: int,
    outage: float,
    streams: int,
    lag: int,
    seed: int | None,
    replay: bool,
) -> Report:
    seed = seed if seed is not None else random.randrange(2**32)
    started = time.monotonic()
    world, inflight_world = "restart", "restart-inflight"
    names = [f"r{i}" for i in range(streams)]
    ledger, inflight_ledger = Ledger(), Ledger()
    report = Report(
        "pg_restart", Verdict(), seed=seed, faults={"PG restart/fast": 0, "PG restart/immediate": 0}
    )
    async with connection(dsn) as conn:
        await install_merge_audit(conn)
        await configure_world(conn, world, expected_streams=names, late_policy="reject", close_after=3600)
    merger = Merger(dsn, world, poll_interval=0.1)
    stop_merger = asyncio.Event()
    merger_task = asyncio.create_task(merger.run(stop_merger))
    done = asyncio.Event()
    top: dict[str, int] = {}
    probe = {"last_ok": 0.0, "errors": 0}
    inflight_lost: list[tuple[datetime, dict[str, Any]]] = []
    per_restart: list[dict[str, Any]] = []

    async def writer(stream: str) -> None:
        wrng = random.Random(f"{seed}/{stream}")
        async with DeltaClient.connect(dsn, stream_id=stream, world=world) as dc:
            frame = 0
            while not done.is_set():
                frame += 1
                if frame - lag >= 1:
                    await dc.wait_merged(frame - lag, timeout=PATIENCE)
                utc = T0 + timedelta(seconds=frame, microseconds=wrng.randrange(1000))
                payload = fleet_payload(wrng, world, stream, frame, utc, 4)
                if await insert_acked(dc, ledger, frame, payload, utc) and wrng.random() < 0.05:
                    await close_retrying(dc, frame)
                top[stream] = frame

    async def prober() -> None:
        async with DeltaClient.connect(dsn, stream_id="probe", world=world) as dc:
            while not done.is_set():
                try:
                    await dc.frame_status(1)
                    probe["last_ok"] = time.monotonic()
                except ConnectionLostError:
                    probe["errors"] += 1
                except Exception as exc:
                    ledger.unexpected.append(f"probe: {type(exc).__module__}.{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)

    async def inflight() -> None:
        """Single inserts, never retried here: each one succeeds or raises ConnectionLostError."""
        async with DeltaClient.connect(dsn, stream_id="inflight", world=inflight_world) as dc:
            n = 0
            while not done.is_set():
                n += 1
                utc = T0 + timedelta(microseconds=n)
                payload = {"observations": [{"id": marker(inflight_world, "inflight", 0, utc)}]}
                try:
                    receipt = await dc.insert_delta(0, payload, utc=utc)
                except ConnectionLostError:
                    inflight_lost.append((utc, payload))
                except Exception as exc:
                    inflight_ledger.unexpected.append(
                        f"in flight: {type(exc).__module__}.{type(exc).__name__}: {exc}"
                    )
                else:
                    if receipt.status != "stored":
                        inflight_ledger.unexpected.append(
                            f"in flight: first attempt answered {receipt.status!r}"
                        )
                    inflight_ledger.acked[(0, "inflight", utc)] = (payload["observations"][0]["id"], 1)
                await asyncio.sleep(0.005)

    async def restarter() -> None:
        for i in range(restarts):
            base = merger.stats.frames_merged

            async def progressed(base: int = base) -> bool:
                return merger.stats.frames_merged >= base + 5

            await poll_until(progressed, what="merges between restarts")
            mode = ("fast", "immediate")[i % 2]
            reconnects = merger.stats.reconnects
            down_at = time.monotonic()
            await asyncio.to_thread(pg.stop_server, mode)
            await asyncio.sleep(outage)
            await asyncio.to_thread(pg.start_server)
            up_at = time.monotonic()
            report.faults[f"PG restart/{mode}"] += 1
            merged_at_up = merger.stats.frames_merged

            async def since_up(check: Callable[[], bool], what: str, up_at: float = up_at) -> float:
                async def ready() -> bool:
                    return check()

                await poll_until(ready, what=what, interval=0.002)
                return time.monotonic() - up_at

            def client_back(up_at: float = up_at) -> bool:
                return probe["last_ok"] > up_at

            def merger_back(before: int = reconnects) -> bool:
                return merger.stats.is_leader and merger.stats.reconnects > before

            def merging_again(before: int = merged_at_up) -> bool:
                return merger.stats.frames_merged > before

            client_s, merger_s, merge_s = await asyncio.gather(
                since_up(client_back, "a client call after the restart"),
                since_up(merger_back, "the merger leading again"),
                since_up(merging_again, "a merge after the restart"),
            )
            report.reconnect_s.append(max(client_s, merger_s))
            per_restart.append(
                {
                    "mode": mode,
                    "down_s": round(up_at - down_at, 3),
                    "client_s": round(client_s, 3),
                    "merger_s": round(merger_s, 3),
                    "first_merge_s": round(merge_s, 3),
                }
            )
        done.set()

    try:
        async with asyncio.TaskGroup() as tg:
            for stream in names:
                tg.create_task(writer(stream))
            tg.create_task(prober())
            tg.create_task(inflight())
            tg.create_task(restarter())
        async with DeltaClient.connect(dsn, stream_id="closer", world=world) as dc:
            last = max(top.values())
            for frame in range(1, last + 1):
                await close_retrying(dc, frame)
            await dc.wait_merged(last, timeout=PATIENCE)
        # every in-flight insert that raised: retry it, same utc -- stored, or duplicate if it had committed
        async with DeltaClient.connect(dsn, stream_id="inflight", world=inflight_world) as dc:
            for utc, payload in inflight_lost:
                inflight_ledger.in_flight += 1
                await insert_acked(dc, inflight_ledger, 0, payload, utc, lost=True)
            await dc.close_frame(0)
        await merge_all(dsn, inflight_world)
    finally:
        stop_merger.set()
        await asyncio.wait_for(merger_task, 30)
    report.verdict = await verify(dsn, world, ledger, replay=replay)
    inflight_verdict = await verify(dsn, inflight_world, inflight_ledger, replay=False)
    report.verdict.problems += [f"in-flight inserts: {p}" for p in inflight_verdict.problems]
    report.notes = {
        "restarts": per_restart,
        "probe connection errors": probe["errors"],
        "merger reconnects": merger.stats.reconnects,
        "writer connection errors": ledger.connection_errors,
        "writer inserts retried": {
            "in flight": ledger.in_flight,
            "stored": ledger.in_flight_stored,
            "duplicate": ledger.in_flight_duplicate,
            "refused": ledger.in_flight_refused,
        },
        "in-flight inserts": {
            "acknowledged at once": len(inflight_ledger.acked) - len(inflight_lost),
            "raised ConnectionLostError": len(inflight_lost),
            "retry stored": inflight_ledger.in_flight_stored,
            "retry duplicate (had committed)": inflight_ledger.in_flight_duplicate,
        },
    }
    report.seconds = time.monotonic() - started
    return report
