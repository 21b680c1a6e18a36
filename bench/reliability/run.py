"""Running every scenario: the sizes, the table, the JSON line, the command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .late import late
from .merger_kill import merger_kill
from .pg_restart import pg_restart
from .report import Report, _faults_text, _secs, fault_counts
from .soak import soak
from .two_mergers import two_mergers
from .verdict import Verdict

# -- the run -------------------------------------------------------------------------------------

SCENARIOS = ("merger_kill", "two_mergers", "pg_restart", "soak", "late", "hostile", "fuzz")

#: CI-sized and --long sizes of each scenario.
SIZES: dict[bool, dict[str, dict[str, Any]]] = {
    False: {
        "merger_kill": {"streams": 8, "frames": 200, "kills": 20},
        "two_mergers": {"kills": 3},
        "pg_restart": {"restarts": 4},
        "soak": {"seconds": 20.0},
        "late": {},
    },
    True: {
        "merger_kill": {"streams": 8, "frames": 800, "kills": 100},
        "two_mergers": {"kills": 12},
        "pg_restart": {"restarts": 12},
        "soak": {"seconds": 300.0},
        "late": {},
    },
}

FuzzHook = Callable[..., Awaitable[int | tuple[int, list[str]]]]


def fuzz_hook() -> FuzzHook | None:
    """``bench.fuzz.run_fuzz(dsn, *, long) -> int``, when that module exists (issue 3, item 5)."""
    try:
        module = importlib.import_module("bench.fuzz")
    except ModuleNotFoundError as exc:
        if exc.name == "bench.fuzz":
            return None
        raise
    hook = getattr(module, "run_fuzz", None)
    return hook if callable(hook) else None


async def run_all(
    dsn: str, *, long: bool = False, only: Sequence[str] = SCENARIOS, seed: int | None = None
) -> list[Report]:
    """Run the chosen scenarios one after the other (each in its own worlds of ``dsn``)."""
    sizes = SIZES[long]
    reports: list[Report] = []
    runners: dict[str, Callable[[], Awaitable[Report]]] = {
        "merger_kill": lambda: merger_kill(dsn, seed=seed, **sizes["merger_kill"]),
        "two_mergers": lambda: two_mergers(dsn, seed=seed, **sizes["two_mergers"]),
        "pg_restart": lambda: pg_restart(seed=seed, **sizes["pg_restart"]),
        "soak": lambda: soak(dsn, seed=seed, **sizes["soak"]),
        "late": lambda: late(dsn),
        "hostile": lambda: _hostile(dsn),
    }
    for name in SCENARIOS:
        if name in only and name in runners:  # (fuzz: below, through its hook)
            print(f"reliability: running {name} ...", file=sys.stderr, flush=True)
            reports.append(await runners[name]())
    hook = fuzz_hook()
    if hook is not None and "fuzz" in only:
        print("reliability: running fuzz ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        result = await hook(dsn, long=long)
        fuzzed, problems = result if isinstance(result, tuple) else (result, list[str]())
        verdict = Verdict()
        for problem in problems:
            verdict.problem(problem)
        reports.append(Report("fuzz", verdict, fuzzed=fuzzed, seconds=time.monotonic() - started))
    return reports


async def _hostile(dsn: str) -> Report:
    from bench.hostile import hostile  # (it builds on this module)

    return await hostile(dsn)


COLUMNS = (
    "scenario",
    "faults injected",
    "inputs fuzzed",
    "acked",
    "refused",
    "merged",
    "lost",
    "doubled",
    "worlds stalled",
    "takeover s",
    "reconnect s",
    "time s",
    "ok",
)


def table_rows(reports: Sequence[Report]) -> list[list[str]]:
    rows = []
    for r in reports:
        v = r.verdict
        rows.append(
            [
                r.scenario,
                _faults_text(r.faults),
                "-" if r.fuzzed is None else str(r.fuzzed),
                str(v.acked),
                str(v.refused),
                str(v.merged),
                str(v.lost),
                str(v.doubled),
                "-" if r.stalled is None else str(r.stalled),
                _secs(r.takeover_s),
                _secs(r.reconnect_s),
                f"{r.seconds:.1f}",
                "ok" if r.ok else "FAIL",
            ]
        )
    faults: Counter[str] = Counter()
    for r in reports:
        faults.update(fault_counts(r.faults))
    fuzzed = [r.fuzzed for r in reports if r.fuzzed is not None]
    rows.append(
        [
            "total",
            _faults_text(dict(faults), details=False),
            str(sum(fuzzed)) if fuzzed else "-",
            *(str(sum(getattr(r.verdict, n) for r in reports)) for n in COLUMNS[3:8]),
            str(sum(r.stalled or 0 for r in reports)) if any(r.stalled is not None for r in reports) else "-",
            _secs([s for r in reports for s in r.takeover_s]),
            _secs([s for r in reports for s in r.reconnect_s]),
            f"{sum(r.seconds for r in reports):.1f}",
            "ok" if all(r.ok for r in reports) else "FAIL",
        ]
    )
    return rows


def render_table(reports: Sequence[Report]) -> str:
    rows = [list(COLUMNS), *table_rows(reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    lines.insert(-1, lines[1])
    return "\n".join(lines)


def json_line(reports: Sequence[Report], *, long: bool) -> str:
    doc = {
        "reliability": {r.scenario: r.to_json() for r in reports},
        "table": [dict(zip(COLUMNS, row, strict=True)) for row in table_rows(reports)],
        "long": long,
        "ok": all(r.ok for r in reports),
    }
    return json.dumps(doc, default=str)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", help="an existing server (a scratch database is created and dropped); default: embedded"
    )
    parser.add_argument(
        "--long", action="store_true", help="the long run (minutes of soak, hundreds of kills)"
    )
    parser.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed in the report)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also log warnings (reconnects, retries)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.verbose else logging.ERROR,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    only = [s.strip() for s in (args.only or ",".join(SCENARIOS)).split(",") if s.strip()]
    unknown = sorted(set(only) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    from bench.server import bench_server

    with bench_server(args.dsn) as server:
        reports = asyncio.run(run_all(server.dsn, long=args.long, only=only, seed=args.seed))
    print(render_table(reports))
    for r in reports:
        for problem in r.verdict.problems + list(r.notes.get("failures", [])):
            print(f"{r.scenario}: {problem}")
    print(json_line(reports, long=args.long))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
