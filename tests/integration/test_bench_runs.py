"""``python -m bench`` runs end to end and prints its report; its speed is never asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Every row a run reports, whatever the size (the JSON contract of bench/).
ROW_NAMES = (
    "ingest_single",
    "pool_vs_dedicated",
    "ingest_batch",
    "notify_ceiling",
    "latency_p50",
    "latency_p99",
    "merge_throughput",
    "merge_flatness",
    "asof_posts",
    "asof_post_lookup",
    "merger_rss",
    "peer",
    "peer_batch",
)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _run_tiny_bench(dsn: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--dsn", dsn, "--size", "tiny", "--json-only", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.slow
def test_tiny_bench_reports_every_row_as_json(dreamcatcher_server_dsn: str) -> None:
    report = _run_tiny_bench(dreamcatcher_server_dsn)

    assert report["bench"] == "dreamcatcher"
    assert report["size"] == "tiny"
    assert report["errors"] == []
    assert _number(report["machine"]["cores"])
    assert report["machine"]["pg_version"]
    rows = {row["name"]: row for row in report["rows"]}
    assert set(ROW_NAMES) <= set(rows)
    for row in report["rows"]:
        assert set(row) >= {"name", "ours", "ceiling", "unit", "ratio", "target", "ok"}, row
        assert row["ok"] in (True, False, None), row
        if row["skipped"]:
            assert row["note"].startswith("skipped"), row
            continue
        for key in ("ours", "ceiling", "ratio"):
            assert _number(row[key]), (key, row)
        assert row["unit"], row

    # the ceilings are the real ones: raw on dedicated connections, the old pooled one as info
    assert "dedicated connections" in rows["ingest_single"]["note"], rows["ingest_single"]
    assert "dedicated connections" in rows["ingest_batch"]["note"], rows["ingest_batch"]
    assert rows["pool_vs_dedicated"]["target"] == "info", rows["pool_vs_dedicated"]
    assert _number(rows["pool_vs_dedicated"]["detail"]["raw_pool_no_reset"])
    assert "pipeline raw" in rows["latency_p99"]["note"], rows["latency_p99"]
    assert _number(rows["latency_p99"]["detail"]["notify_round_trip_p99_ms"])
    # the merge ceiling ran before and after ours; every ingest round of every side is reported
    assert len(rows["merge_throughput"]["detail"]["raw_us_per_delta_before_after"]) == 2
    assert set(rows["ingest_single"]["detail"]["rounds_deltas_per_s"]) >= {"raw", "ours"}

    # the run worked in a scratch database of its own, and dropped it
    assert report["database"].startswith("dc_bench_")
    with psycopg.connect(dreamcatcher_server_dsn) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (report["database"],)).fetchone()
    assert row is None


@pytest.mark.slow
def test_peer_rows_measure_eventsourcing_when_installed(dreamcatcher_server_dsn: str) -> None:
    """With the optional ``peer`` extra installed, the peer rows are measured, not skipped."""
    pytest.importorskip("eventsourcing")
    report = _run_tiny_bench(dreamcatcher_server_dsn, "--only", "peer")

    assert report["errors"] == []
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"peer", "peer_batch"}
    for row in rows.values():
        assert not row["skipped"], row
        assert row["note"].startswith("ceiling: eventsourcing"), row
        for key in ("ours", "ceiling", "ratio"):
            assert _number(row[key]) and row[key] > 0, (key, row)
        assert row["unit"] == "deltas/s", row
        assert row["target"] == "info", row
