"""How the throughput rows time their sides: dedicated connections, warm-up, alternating rounds.

A *side* is one way of doing a row's work (the raw ceiling, ours, a pool variant). Given the
world to write to, it opens what it needs, warms it up, and yields the coroutine to time; only
that coroutine is timed. Every side of a row runs once per round, and the order of the sides
turns by one each round (raw, ours in the first; ours, raw in the second ...), so neither side
always runs on the emptier index, the cooler cache or the quieter minute. The best round of
each side is kept: the machine is shared, and the best round is the least disturbed one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import asyncpg

from bench.context import Context, median, now

Run = Callable[[], Awaitable[None]]
Side = Callable[[str], contextlib.AbstractAsyncContextManager[Run]]


@contextlib.asynccontextmanager
async def dedicated(dsn: str, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """``count`` plain connections (no pool: no acquire/release, no reset query), closed after."""
    opened = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(count)), return_exceptions=True)
    conns = [c for c in opened if isinstance(c, asyncpg.Connection)]
    try:
        for result in opened:
            if isinstance(result, BaseException):
                raise result
        yield conns
    finally:
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """A pool reset that sends nothing (asyncpg still rolls back a transaction left open)."""


@contextlib.asynccontextmanager
async def raw_pool(dsn: str, count: int, *, reset: bool) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool of ``count`` connections: its default reset query after every call, or none."""
    pool = await asyncpg.create_pool(dsn, min_size=count, max_size=count, reset=None if reset else _no_reset)
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Rates:
    """Deltas/s of each side, every round (in running order)."""

    count: int
    samples: dict[str, list[float]] = field(default_factory=dict)

    def best(self, side: str) -> float:
        return max(self.samples[side])

    def detail(self) -> dict[str, object]:
        return {
            "rounds_deltas_per_s": {k: [round(v) for v in vs] for k, vs in self.samples.items()},
            "median_deltas_per_s": {k: round(median(vs)) for k, vs in self.samples.items()},
        }


async def timed(side: Side, world: str) -> float:
    """Seconds for one run of ``side`` writing into ``world`` (its set-up and warm-up not timed)."""
    async with side(world) as run:
        started = now()
        await run()
        return now() - started


async def alternate(
    ctx: Context, label: str, count: int, sides: Mapping[str, Side], rounds: int = 0
) -> Rates:
    """Time every side ``rounds`` times (default ``ctx.size.repeats``), turning the order each round.

    Each timed run writes ``count`` deltas into a world of its own, ``{label}_{side}_{round}``.
    """
    rates = Rates(count, {side: [] for side in sides})
    names = list(sides)
    for r in range(rounds or ctx.size.repeats):
        turn = r % len(names)
        for side in names[turn:] + names[:turn]:
            seconds = await timed(sides[side], f"{label}_{side}_{r}")
            rates.samples[side].append(count / seconds)
            ctx.say(f"{label} round {r + 1}: {side} {count / seconds:,.0f} deltas/s")
    return rates
