"""Prometheus metrics (``merger --metrics-port``) and the merger's JSON logs, scraped and read
as Prometheus and a log shipper would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dreamcatcher_pg import DeltaClient, FrameClosedError, Merger, configure_world
from dreamcatcher_pg.ops.metrics import DatabaseRefresher, build_registry, refresh_interval_for
from tests.support.helpers import at, connection, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def scrape(port: int) -> Samples:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    return parse(await asyncio.to_thread(get))


async def test_merger_serves_metrics_and_json_logs(dreamcatcher_dsn: str) -> None:
    port = free_port()
    merger = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamcatcher_pg",
        "--dsn",
        dreamcatcher_dsn,
        "--log-format",
        "json",
        "merger",
        "--world",
        "w",
        "--metrics-port",
        str(port),
        "--poll-interval",
        "0.1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s1", world="w") as dc:
            payload: dict[str, Any] = {
                "posts_created": [{"number": 1, "title": "one"}, {"title": "no number"}],  # one quarantined
                "comments_added": [{"id": "c1", "discussion": 1, "author": "a", "body": "hi"}],
            }
            await dc.insert_delta(1, payload, utc=at(1))
            await dc.insert_delta(1, {"observations": [{"id": "o"}]}, utc=at(2))
            await dc.close_frame(1)
            await dc.wait_merged(1, timeout=20)
            await dc.insert_delta(2, {"observations": [{"id": "p"}]}, utc=at(3))
            await dc.close_frame(2)
            await dc.wait_merged(2, timeout=20)
            with contextlib.suppress(FrameClosedError):
                await dc.insert_delta(1, {"observations": [{"id": "late"}]}, utc=at(4))
            await dc.insert_delta(3, {"observations": [{"id": "q"}]}, utc=at(5))  # open: not merged

        # the database-derived numbers follow within one refresh (1 s at this poll interval)
        samples: Samples = {}

        async def refreshed() -> bool:
            nonlocal samples
            samples = await scrape(port)
            return value(samples, "dreamcatcher_deltas_ingested_total", world="w") == 4.0

        await wait_until(refreshed, timeout=15, what="dreamcatcher_deltas_ingested_total == 4", interval=0.2)
    finally:
        merger.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(merger.communicate(), 30)
    assert merger.returncode == 0, err.decode()

    w = {"world": "w"}
    assert value(samples, "dreamcatcher_frames_merged_total", **w) == 2
    assert value(samples, "dreamcatcher_deltas_merged_total", **w) == 3
    assert value(samples, "dreamcatcher_leader", **w) == 1
    assert value(samples, "dreamcatcher_reconnects_total", **w) == 0
    assert value(samples, "dreamcatcher_last_merged_frame", **w) == 2
    assert value(samples, "dreamcatcher_merge_duration_seconds_count", **w) == 2
    assert value(samples, "dreamcatcher_close_to_merged_seconds_count", **w) == 2
    assert (value(samples, "dreamcatcher_merge_duration_seconds_bucket", le="+Inf", **w)) == 2
    assert (value(samples, "dreamcatcher_merge_duration_seconds_sum", **w) or 0) > 0
    assert value(samples, "dreamcatcher_late_deltas_total", **w) == 1
    assert value(samples, "dreamcatcher_quarantined_items_total", **w) == 1
    assert value(samples, "dreamcatcher_merge_lag_frames", **w) == 0
    assert value(samples, "dreamcatcher_open_frames", **w) == 1
    assert value(samples, "dreamcatcher_metrics_refresh_errors_total") == 0
    assert value(samples, "process_resident_memory_bytes") is not None

    # --log-format json: every stderr line is one JSON object; one line per merge with its facts
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(doc) for doc in lines)
    merges = [doc for doc in lines if doc["msg"].startswith("merged ")]
    assert [(m["world"], m["frame"], m["deltas"]) for m in merges] == [("w", 1, 2), ("w", 2, 1)]
    assert all(
        isinstance(m["duration_ms"], float) and m["logger"] == "dreamcatcher_pg.merger" for m in merges
    )
    assert any("serving Prometheus metrics" in doc["msg"] for doc in lines)


async def test_metrics_port_in_use_is_a_clear_error(dreamcatcher_dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dreamcatcher_pg",
            "--dsn",
            dreamcatcher_dsn,
            "merger",
            "--metrics-port",
            str(port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "dreamcatcher: error:" in err.decode() and "Traceback" not in err.decode()


async def test_collector_and_histograms_in_process(dreamcatcher_dsn: str) -> None:
    seen: list[int] = []
    merger = Merger(dreamcatcher_dsn, "w", on_merged=lambda r: seen.append(r.frame))
    refresher = DatabaseRefresher(dreamcatcher_dsn, ["w"], interval=60)
    registry: CollectorRegistry = build_registry([merger], refresher, process_metrics=False)
    get = registry.get_sample_value
    try:
        # before anything: the merger's series exist at zero; the database ones are absent
        assert get("dreamcatcher_frames_merged_total", {"world": "w"}) == 0
        assert get("dreamcatcher_leader", {"world": "w"}) == 0
        assert get("dreamcatcher_merge_duration_seconds_count", {"world": "w"}) == 0
        assert get("dreamcatcher_deltas_ingested_total", {"world": "w"}) is None
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
            for frame in (1, 2, 3):
                await dc.insert_delta(frame, {"observations": [{"n": frame}]}, utc=at(frame))
                await dc.close_frame(frame)
        await merger.run_until_idle()
        await refresher.refresh_once()
        assert seen == [1, 2, 3]  # the callback already set still runs
        assert get("dreamcatcher_frames_merged_total", {"world": "w"}) == 3
        assert get("dreamcatcher_leader", {"world": "w"}) == 1
        assert get("dreamcatcher_merge_duration_seconds_count", {"world": "w"}) == 3
        assert get("dreamcatcher_close_to_merged_seconds_count", {"world": "w"}) == 3
        assert get("dreamcatcher_deltas_ingested_total", {"world": "w"}) == 3
    finally:
        await merger.aclose()
        await refresher.aclose()
    assert get("dreamcatcher_leader", {"world": "w"}) == 0


async def log_count(conn: asyncpg.Connection, world: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1", world))


async def test_deltas_ingested_is_counted_incrementally_and_exactly(dreamcatcher_dsn: str) -> None:
    """The refresher sums merged frames once and counts only the unmerged tail; the total must
    equal the log's row count at every step: open frames, merges, deferred late deltas."""
    refresher = DatabaseRefresher(dreamcatcher_dsn, ["w", "empty"], interval=60)
    async with connection(dreamcatcher_dsn) as conn:
        await configure_world(conn, "w", late_policy="defer")

        async def check() -> None:
            await refresher.refresh_once()
            snapshot = refresher.snapshot()
            assert snapshot["w"].deltas_ingested == await log_count(conn, "w")
            assert snapshot["empty"].deltas_ingested == 0

        try:
            await check()
            async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
                utc = 0
                for frame in (1, 2, 5, 9):
                    for _ in range(3):
                        utc += 1
                        await dc.insert_delta(frame, {"observations": [{"n": utc}]}, utc=at(utc))
                await check()
                for frame in (1, 2):
                    await dc.close_frame(frame)
                merger = Merger(dreamcatcher_dsn, "w")
                try:
                    await merger.run_until_idle()
                    await check()
                    # late deltas under "defer": stored, waiting for the next merge
                    await dc.insert_delta(1, {"observations": [{"n": "late"}]}, utc=at(100))
                    await dc.insert_delta(2, {"observations": [{"n": "late2"}]}, utc=at(101))
                    await check()
                    await dc.close_frame(5)
                    await merger.run_until_idle()  # frame 5 takes the deferred ones
                    await check()
                    await dc.close_frame(9)
                    await merger.run_until_idle()
                    await check()
                    assert refresher.snapshot()["w"].merge_lag_frames == 0
                finally:
                    await merger.aclose()
        finally:
            await refresher.aclose()
    assert refresher.snapshot()["w"].deltas_ingested == 14
    assert refresher.snapshot()["w"].late_attempts == 2


def test_refresh_interval_follows_the_poll_interval() -> None:
    class M:
        def __init__(self, poll: float) -> None:
            self.poll_interval = poll

    assert refresh_interval_for([M(1.0)]) == 5.0
    assert refresh_interval_for([M(0.1)]) == 1.0
    assert refresh_interval_for([M(10.0), M(2.0)]) == 10.0
    assert refresh_interval_for([M(60.0)]) == 15.0
