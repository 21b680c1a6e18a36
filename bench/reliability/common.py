"""What the writers of every scenario share: markers, the ledger of acknowledged deltas, waits."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from bench.mergerproc import PATIENCE as PATIENCE  # one patience for every wait of a scenario, re-exported
from dreamcatcher_pg import (
    ConnectionLostError,
    DeltaClient,
    FrameClosedError,
)

#: Writer clocks start here (fixed, so a run can be replayed with the same keys).
T0 = datetime(2030, 1, 1, tzinfo=UTC)

Key = tuple[int, str, datetime]  # (frame, stream_id, utc): a delta's identity within its world


def micros(utc: datetime) -> int:
    return (utc - T0) // timedelta(microseconds=1)


def marker(world: str, stream: str, frame: int, utc: datetime) -> str:
    return f"{world}/{stream}/{frame}/{micros(utc)}"


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def poll_until(
    predicate: Callable[[], Awaitable[bool]], *, what: str, timeout: float = PATIENCE, interval: float = 0.01
) -> float:
    """Await ``predicate`` until true; return the seconds it took. RuntimeError when stuck."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"stuck: no {what} after {timeout:.0f}s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


# -- what the writers were told ------------------------------------------------


@dataclass
class Ledger:
    """Every answer the writers got. The verdict compares it with the database."""

    #: acknowledged deltas (stored or duplicate): key -> (marker, observations in the payload)
    acked: dict[Key, tuple[str, int]] = field(default_factory=dict)
    refused: set[Key] = field(default_factory=set)  # FrameClosedError
    connection_errors: int = 0  # ConnectionLostError raised to a writer (each one retried)
    in_flight: int = 0  # inserts that raised ConnectionLostError at least once ...
    in_flight_stored: int = 0  # ... and whose retry stored the delta (the lost call had not committed)
    in_flight_duplicate: int = 0  # ... and whose retry found it stored (the lost call HAD committed)
    in_flight_refused: int = 0  # ... and whose retry was refused (frame closed meanwhile)
    unexpected: list[str] = field(default_factory=list)  # any other error: a bug

    def merge(self, other: Ledger) -> None:
        self.acked.update(other.acked)
        self.refused |= other.refused
        for name in ("connection_errors", "in_flight", "in_flight_stored", "in_flight_duplicate"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.in_flight_refused += other.in_flight_refused
        self.unexpected += other.unexpected


async def insert_acked(
    dc: DeltaClient,
    ledger: Ledger,
    frame: int,
    payload: dict[str, Any],
    utc: datetime,
    *,
    lost: bool = False,
) -> bool:
    """Insert one delta until it is acknowledged (True) or refused (False).

    A ``ConnectionLostError`` is retried with the SAME utc after a backoff: the retry
    must answer ``stored`` or ``duplicate`` (or ``FrameClosedError`` if the frame closed
    meanwhile and the lost call had not committed). Any other error is recorded as unexpected.
    ``lost``: this call retries an insert that already raised ``ConnectionLostError``.
    """
    key: Key = (frame, dc.stream_id, utc)
    give_up = time.monotonic() + PATIENCE
    delay = 0.05
    while True:
        try:
            receipt = await dc.insert_delta(frame, payload, utc=utc)
        except ConnectionLostError:
            ledger.connection_errors += 1
            ledger.in_flight += not lost
            lost = True
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
            continue
        except FrameClosedError:
            ledger.refused.add(key)
            ledger.in_flight_refused += lost
            return False
        except Exception as exc:
            ledger.unexpected.append(f"insert {key}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
            return False
        break
    if receipt.status == "duplicate" and not lost:
        ledger.unexpected.append(f"insert {key}: a first attempt answered 'duplicate'")
    if lost:
        ledger.in_flight_stored += receipt.status == "stored"
        ledger.in_flight_duplicate += receipt.status == "duplicate"
    ledger.acked[key] = (str(payload["observations"][0]["id"]), len(payload["observations"]))
    return True


async def close_retrying(dc: DeltaClient, frame: int) -> str:
    """``close_frame`` (idempotent), retried across a lost connection."""
    delay = 0.05
    give_up = time.monotonic() + PATIENCE
    while True:
        try:
            return await dc.close_frame(frame)
        except ConnectionLostError:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def fleet_payload(
    rng: random.Random, world: str, stream: str, frame: int, utc: datetime, ballast: int
) -> dict[str, Any]:
    """One delta: its marker, ``ballast`` more observations (merge work), and some of every rule."""
    posts = [rng.randrange(40), rng.randrange(40)]
    return {
        "observations": [{"id": marker(world, stream, frame, utc)}]
        + [{"n": k, "v": rng.randrange(10**6)} for k in range(ballast)],
        "posts_created": [
            {"number": n, "title": f"{stream}@{frame}", "score": rng.randrange(999)} for n in posts
        ],
        "comments_added": [
            {
                "id": f"c{rng.randrange(300)}",
                "discussion": posts[0],
                "author": stream,
                "body": f"{stream}@{frame}",
            }
        ],
        "reactions_added": [
            {"target": str(posts[1]), "type": rng.choice(("+1", "heart", "eyes")), "author": stream}
        ],
        "chapters": [{"book": f"b{rng.randrange(4)}", "agent": stream, "chapter": rng.randrange(12)}],
        "agents_updated": [{"id": stream, "last_frame": frame}],
    }
