"""``python -m bench [--dsn DSN] [--size tiny|small|full] [--only NAME,...] [--json-only]``.

Prints the table, then ONE JSON line (always the last line of stdout). Exits 1
when a benchmark failed to run (an error, not a missed target: targets are
reported in the rows, never asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import traceback
from collections.abc import Awaitable, Callable, Sequence

from bench.asof import bench_asof
from bench.context import Context
from bench.ingest import bench_ingest_batch, bench_ingest_single, bench_notify_ceiling
from bench.latency import bench_latency
from bench.merge import bench_merge
from bench.merge_ab import bench_merge_ab
from bench.peer import bench_peer
from bench.report import Row, print_report
from bench.rss import bench_merger_rss
from bench.server import bench_server, machine_info
from bench.sizes import SIZES
from bench.web import ROW_NAMES as WEB_ROWS
from bench.web import bench_web

Benchmark = Callable[[Context], Awaitable[list[Row]]]

#: name → (benchmark, the rows it always reports), in running order
BENCHMARKS: dict[str, tuple[Benchmark, tuple[str, ...]]] = {
    "ingest_single": (bench_ingest_single, ("ingest_single", "pool_vs_dedicated")),
    "ingest_batch": (bench_ingest_batch, ("ingest_batch",)),
    "notify_ceiling": (bench_notify_ceiling, ("notify_ceiling",)),
    "latency": (bench_latency, ("latency_p50", "latency_p99")),
    "merge_throughput": (bench_merge, ("merge_throughput", "merge_flatness")),
    "merge_ab": (bench_merge_ab, ()),
    "asof": (bench_asof, ("asof_posts", "asof_post_lookup")),
    "merger_rss": (bench_merger_rss, ("merger_rss",)),
    "peer": (bench_peer, ("peer", "peer_batch")),
    "web": (bench_web, WEB_ROWS),
}

#: Every row name a full run reports (whatever the size).
ROW_NAMES: tuple[str, ...] = tuple(name for _, rows in BENCHMARKS.values() for name in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", help="an existing server (a scratch database is created and dropped); default: embedded"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="default: small")
    parser.add_argument("--only", help="comma-separated benchmarks: " + ",".join(BENCHMARKS))
    parser.add_argument("--json-only", action="store_true", help="print only the JSON line")
    return parser


def selected(only: str | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    return [n for n in BENCHMARKS if n in names]  # running order, not argument order


async def run_all(ctx: Context, names: Sequence[str]) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    errors: list[str] = []
    for name in names:
        func, expected = BENCHMARKS[name]
        ctx.say(f"— {name}")
        try:
            rows += await func(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others
            errors.append(f"{name}: {exc!r}")
            ctx.say(traceback.format_exc())
            rows += [Row(row, None, None, "", note=f"error: {exc!r}"[:200]) for row in expected]
    return rows, errors


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = selected(args.only)
    size = SIZES[args.size]
    with bench_server(args.dsn) as server:
        ctx = Context(server.dsn, size, quiet=args.json_only)
        machine = machine_info(server)
        ctx.say(f"server {server.kind}, PostgreSQL {machine['pg_version']}, database {server.database}")
        rows, errors = asyncio.run(run_all(ctx, names))
    machine["load_1m_at_end"] = round(os.getloadavg()[0], 2)
    report = {
        "bench": "dreamcatcher",
        "machine": machine,
        "size": size.name,
        "database": server.database,
        "rows": [row.as_json() for row in rows],
        "errors": errors,
    }
    print_report(rows, report, json_only=args.json_only)
    return 1 if errors else 0
