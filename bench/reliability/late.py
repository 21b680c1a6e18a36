"""Scenario: late deltas under reject and defer, as `dreamcatcher status` counts them."""

from __future__ import annotations

import time
from datetime import timedelta

from dreamcatcher_pg import (
    DeltaClient,
)

from .common import T0, Ledger, connection, insert_acked, marker
from .report import Report
from .verdict import Verdict, install_merge_audit, merge_all, verify

# -- scenario: late deltas ------------------------------------------------------------------


async def late(dsn: str, *, prefix: str = "late") -> Report:
    """Late deltas under ``reject`` (2 attempts, refused) and ``defer`` (3, merged into frame 2).

    A retry of a deferred delta is a duplicate, not a new attempt. ``notes["status"]`` holds
    what ``dreamcatcher status --json`` reports (late_attempts, late_deferred) per world.
    """
    from dreamcatcher_pg.ops.status import collect_status

    started = time.monotonic()
    report = Report("late", Verdict(), faults={"late delta/rejected": 0, "late delta/deferred": 0})
    ledgers: dict[str, Ledger] = {}
    async with connection(dsn) as conn:
        await install_merge_audit(conn)
    for policy in ("reject", "defer"):
        world = f"{prefix}-{policy}"
        ledger = ledgers[policy] = Ledger()
        async with DeltaClient.connect(dsn, stream_id="on-time", world=world) as dc:
            await dc.configure_world(late_policy=policy)
            utc = T0 + timedelta(seconds=1)
            await insert_acked(
                dc, ledger, 1, {"observations": [{"id": marker(world, "on-time", 1, utc)}]}, utc
            )
            await dc.close_frame(1)
        await merge_all(dsn, world)
        async with DeltaClient.connect(dsn, stream_id="slow", world=world) as slow:
            for n in range(2 if policy == "reject" else 3):
                utc = T0 + timedelta(seconds=1, microseconds=n)
                payload = {"observations": [{"id": marker(world, "slow", 1, utc)}]}
                accepted = await insert_acked(slow, ledger, 1, payload, utc)
                report.faults[f"late delta/{'deferred' if accepted else 'rejected'}"] += 1
                if accepted:
                    again = await slow.insert_delta(1, payload, utc=utc)  # a retry: not a new attempt
                    if again.status != "duplicate":
                        ledger.unexpected.append(f"retry of a deferred delta answered {again.status!r}")
            utc = T0 + timedelta(seconds=2)
            await insert_acked(
                slow, ledger, 2, {"observations": [{"id": marker(world, "slow", 2, utc)}]}, utc
            )
            await slow.close_frame(2)
        await merge_all(dsn, world)
    status = {w.world: w for w in await collect_status(dsn)}
    report.notes["status"] = {
        world: {
            "late_attempts": status[world].late_attempts,
            "late_deferred": status[world].late_deferred,
        }
        for world in (f"{prefix}-reject", f"{prefix}-defer")
    }
    expected = {f"{prefix}-reject": (2, 0), f"{prefix}-defer": (3, 3)}
    for world, (attempts, deferred) in expected.items():
        got = report.notes["status"][world]
        if (got["late_attempts"], got["late_deferred"]) != (attempts, deferred):
            report.verdict.problem(
                f"status of {world}: {got}, expected {attempts} attempts, {deferred} deferred"
            )
    async with connection(dsn) as conn:
        deferred_into = await conn.fetch(
            "SELECT first_frame, frame FROM dreamcatcher.observations"
            " WHERE world = $1 AND stream_id = 'slow'",
            f"{prefix}-defer",
        )
    if sorted((r["frame"], r["first_frame"]) for r in deferred_into) != [(1, 2)] * 3 + [(2, 2)]:
        report.verdict.problem("deferred deltas were not merged into frame 2", deferred_into)
    merged = Ledger()
    for policy, ledger in ledgers.items():
        verdict = await verify(dsn, f"{prefix}-{policy}", ledger, replay=False)
        report.verdict.problems += [f"{policy}: {p}" for p in verdict.problems]
        merged.merge(ledger)
        for name in ("acked", "refused", "logged", "merged", "lost", "doubled", "phantom", "frames"):
            setattr(report.verdict, name, getattr(report.verdict, name) + getattr(verdict, name))
    report.seconds = time.monotonic() - started
    return report
