"""Hostile input, as a reliability scenario: ``bench.reliability`` runs :func:`run_fuzz`.

Seeded random inputs (not hypothesis: this runs outside pytest and prints how many it
tried), aimed at the edges the client and the merge promise to hold (issue 3, item 5):

* ``insert_delta`` / ``insert_deltas`` with wild frames, clocks and payloads (wrong types,
  NaN and infinities, NUL characters, lone surrogates, huge integers, deep and wide values,
  non-string keys, SQL-looking text): every call answers with a receipt or raises one of
  our own errors (a ``DreamcatcherError``), never a driver, pydantic or Python error, and
  a refused call writes nothing;
* accepted payloads whose rule keys hold messy items (wrong types, missing keys, aliases,
  bare strings and numbers): every frame still merges, the merger never raises, and the
  unreadable items land in the quarantine with a reason.

:func:`run_fuzz` returns the number of inputs tried and the problems found; the
reliability table shows the first in its "inputs fuzzed" column and fails on the second.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg

from dreamcatcher_pg import DeltaClient, DreamcatcherError, Merger

WORLD = "fuzz"
RULE_KEYS = (
    "posts_created",
    "posts_updated",
    "agents_updated",
    "comments_added",
    "reactions_added",
    "chapters",
    "observations",
)
ODD_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udcffy",
    "\u202eevil\u202c",
    "👨‍👩‍👧",
    "e\u0301",
    "\ufeff",
    "'); DROP TABLE dreamcatcher.delta_log; --",
    "$$; DELETE FROM dreamcatcher.entity_versions; $$",
    "$1",
    "\\",
    '"; --',
    "%s%n",
    "null",
    "{}",
    "a" * 300,
)
SIZES = {False: 2_000, True: 20_000}  # calls per run: CI-sized, long


class _Opaque:
    """A value no JSON encoder knows."""


def _scalar(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            2**63,
            -(2**70),
            1.5,
            math.nan,
            math.inf,
            -math.inf,
            rng.choice(ODD_TEXT),
            b"\x00\xff",
            {1, 2},
            (1, 2),
            _Opaque(),
            datetime(2026, 1, 1),
            rng.randrange(-1000, 1000),
            rng.random(),
            "".join(rng.choice("ab:on 1") for _ in range(6)),
        ]
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 70 or roll < 0.45:
        return _scalar(rng)
    if roll < 0.7:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if roll < 0.75:  # deep: beyond the client's depth limit, sometimes
        node: Any = "leaf"
        for _ in range(rng.choice([5, 40, 80])):
            node = [node]
        return node
    keys = [rng.choice([*RULE_KEYS, *ODD_TEXT, "number", "id", "target", "book", "chapter", 3, None])]
    return {k: _value(rng, depth + 1) for k in keys * rng.randrange(1, 4)}


def _messy_item(rng: random.Random, key: str) -> Any:
    """An item a rule may or may not be able to read (only JSON types: the client accepts it)."""
    pick = rng.random()
    if pick < 0.2:
        return rng.choice([None, 7, "7", "c-1", "TYPE on NODE", "node:like", 1.25, [], {}, True])
    item: dict[str, Any] = {}
    for field in rng.sample(
        [
            "number",
            "id",
            "comment_id",
            "agent_id",
            "agent",
            "author",
            "target",
            "node",
            "type",
            "reaction",
            "book",
            "chapter",
            "count",
            "body",
            "content",
            "replied_to",
            "title",
        ],
        k=rng.randrange(0, 5),
    ):
        item[field] = rng.choice([1, 2, -3, "4", " 5 ", "x", None, 2.5, [1], {"a": 1}, "", "b" * 2000])
    return item


def _messy_payload(rng: random.Random, n: int) -> dict[str, Any]:
    keys = rng.sample(RULE_KEYS, k=rng.randrange(1, 4))
    payload: dict[str, Any] = {k: [_messy_item(rng, k) for _ in range(rng.randrange(0, 4))] for k in keys}
    if rng.random() < 0.3:
        payload[rng.choice(keys)] = _messy_item(rng, "any")  # a lone item instead of a list
    payload["observations"] = [{"fuzz": n}]
    return payload


def _frame(rng: random.Random, good: int) -> Any:
    return good if rng.random() < 0.6 else rng.choice([-1, 2**63, 2**70, 1.5, "3", None, True, [1]])


def _utc(rng: random.Random, n: int) -> Any:
    base = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=n)
    return rng.choice(
        [
            None,
            base,
            base.replace(tzinfo=None),
            base.astimezone(timezone(timedelta(hours=-11))),
            datetime.min,
            datetime.max,
            "2026-01-01",
            0,
        ]
    )


async def _call(problems: list[str], what: str, coro: Any) -> Any:
    """Await a client call: a receipt or a DreamcatcherError is fine, anything else a problem."""
    try:
        return await coro
    except DreamcatcherError as exc:
        return exc
    except Exception as exc:  # the contract says: never anything else
        problems.append(f"{what} raised {type(exc).__name__}: {exc}"[:300])
        return exc


async def run_fuzz(dsn: str, *, long: bool = False, seed: int = 20261126) -> tuple[int, list[str]]:
    """Fuzz the client and the merge on ``dsn``; return (inputs tried, problems found)."""
    rng = random.Random(seed)
    problems: list[str] = []
    tried = 0
    frames = 4
    async with DeltaClient.connect(dsn, stream_id="fuzz", world=WORLD, max_payload_bytes=4096) as dc:
        calls = SIZES[long]
        for n in range(calls):
            frame = n * frames // calls
            if rng.random() < 0.5:  # wild input: a receipt for what is valid, our error for the rest
                wild = dc.insert_delta(_frame(rng, frame), _value(rng), _utc(rng, n))
                await _call(problems, "insert_delta", wild)
            elif rng.random() < 0.8:  # valid envelope, messy rule items: must be stored
                got = await _call(problems, "insert_delta", dc.insert_delta(frame, _messy_payload(rng, n)))
                if isinstance(got, Exception) and not isinstance(got, DreamcatcherError):
                    continue
                if isinstance(got, DreamcatcherError) and "bytes" not in str(got):
                    problems.append(f"a JSON-only payload was refused: {got}"[:300])
            else:  # a batch mixing both: all-or-nothing validation, never a foreign error
                batch = [
                    {
                        "frame": _frame(rng, frame),
                        "payload": _value(rng) if rng.random() < 0.5 else _messy_payload(rng, n),
                    }
                    for _ in range(rng.randrange(1, 5))
                ]
                await _call(problems, "insert_deltas", dc.insert_deltas(batch))
            tried += 1
        for frame in range(frames):
            await _call(problems, "close_frame", dc.close_frame(frame))
    merger = Merger(dsn, WORLD, leader_timeout=None, name="fuzz")
    try:
        await merger.run_until_idle()
    except Exception as exc:
        problems.append(f"the merger raised {type(exc).__name__}: {exc}"[:300])
    finally:
        await merger.aclose()
    conn = await asyncpg.connect(dsn)
    try:
        unmerged = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.frame_log WHERE world = $1 AND status <> 'merged'", WORLD
        )
        quarantined = await conn.fetchval(
            "SELECT count(*) FROM dreamcatcher.quarantine_log WHERE world = $1 AND reason <> ''", WORLD
        )
    finally:
        await conn.close()
    if unmerged:
        problems.append(f"{unmerged} frame(s) of the fuzzed world did not merge")
    if not quarantined:
        problems.append("no messy item was quarantined: the fuzzer did not reach the readers")
    return tried, problems
