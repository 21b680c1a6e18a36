"""Issue 3.5, as a reliability scenario: ``bench.fuzz`` throws seeded hostile input at the
client and the merge, and ``python -m bench.reliability`` reports how many inputs it tried.

The property tests (tests/property) explore the same edges with hypothesis; this run is the
one the reliability table counts, and it must find nothing: every call answered with a
receipt or one of our errors, every frame merged, the messy items quarantined.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from bench.fuzz import SIZES, WORLD, _call, run_fuzz
from bench.reliability import COLUMNS, render_table, run_all, table_rows
from dreamcatcher_pg import InvalidDeltaError


async def test_fuzzing_finds_nothing_and_reaches_the_readers(dreamcatcher_dsn: str, long_run: bool) -> None:
    tried, problems = await run_fuzz(dreamcatcher_dsn, long=long_run)
    assert problems == []
    assert tried == SIZES[long_run]
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        reasons = {
            r["reason"]
            for r in await conn.fetch(
                "SELECT DISTINCT reason FROM dreamcatcher.quarantine_log WHERE world = $1", WORLD
            )
        }
        statuses = await conn.fetch("SELECT status FROM dreamcatcher.frame_log WHERE world = $1", WORLD)
        stored = await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", WORLD)
    finally:
        await conn.close()
    # the fuzzer got past the client into every kind of reader, and the merge survived it
    assert len(reasons) >= 8, reasons
    assert "entity key is longer than 1024 bytes" in reasons
    assert {r["status"] for r in statuses} == {"merged"}
    assert stored > tried // 4


async def test_the_reliability_table_counts_the_fuzzed_inputs(dreamcatcher_dsn: str) -> None:
    [report] = await run_all(dreamcatcher_dsn, only=["fuzz"])
    assert report.scenario == "fuzz"
    assert report.fuzzed == SIZES[False]
    assert report.verdict.ok, report.verdict.problems
    [row, total] = table_rows([report])
    column = COLUMNS.index("inputs fuzzed")
    assert row[0] == "fuzz" and row[column] == total[column] == str(SIZES[False])
    assert row[-1] == "ok"
    print("\n" + render_table([report]))


async def _raise(exc: BaseException) -> Any:
    raise exc


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (InvalidDeltaError("payload is not JSON", field="payload"), None),  # ours: the contract holds
        (ValueError("boom"), "insert_delta raised ValueError: boom"),  # anything else breaks it
        (asyncpg.DataError("bad"), "insert_delta raised DataError: bad"),
    ],
)
async def test_the_fuzzer_counts_any_error_but_ours_as_a_problem(
    exc: BaseException, problem: str | None
) -> None:
    problems: list[str] = []
    got = await _call(problems, "insert_delta", _raise(exc))
    assert got is exc
    assert problems == ([] if problem is None else [problem])
