"""Health: ``dreamcatcher healthcheck`` (and ``status``'s exit code), ``/healthz``, ``/readyz``,
the metrics port's routes, ``--metrics-address``, and the structured fields of the JSON logs.

Everything runs against a real PostgreSQL; the stalled merge loop is a real one (a session
holding a lock the merger's next query needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from dreamcatcher_pg import DeltaClient, Merger, SchemaVersionError, configure_world
from dreamcatcher_pg.cli import main
from dreamcatcher_pg.ops.health import HealthCode, check_health, liveness, readiness
from dreamcatcher_pg.ops.metrics_server import MetricsServer, start_metrics_server
from dreamcatcher_pg.probe import probe
from dreamcatcher_pg.testing import database_dsn
from tests.support.helpers import at, connection, wait_until

pytestmark = pytest.mark.usefixtures("restore_logging")

UNREACHABLE = "postgresql://nobody:wrong@127.0.0.1:1/nothing"


async def cli(*argv: str) -> int:
    """``cli.main`` in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(main, list(argv))


async def healthcheck(capsys: pytest.CaptureFixture[str], dsn: str, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await cli("--dsn", dsn, "healthcheck", *extra)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out  # one line saying why
    return code, out.strip()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def aget(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


async def leads(merger: Merger) -> bool:
    return merger.stats.is_leader


async def ready(port: int, role: str) -> bool:
    """/readyz answers 200 and the world w's merger has this role."""
    status, body = await aget(port, "/readyz")
    return status == 200 and json.loads(body)["worlds"]["w"]["role"] == role


@contextlib.asynccontextmanager
async def serving(merger: Merger) -> AsyncIterator[tuple[Merger, MetricsServer]]:
    """``merger`` running in this loop, with its metrics port on 127.0.0.1 (any free port)."""
    server = start_metrics_server(0, [merger], addr="127.0.0.1", refresh_interval=1.0)
    stop = asyncio.Event()
    task = asyncio.create_task(merger.run(stop))
    try:
        yield merger, server
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 30)
        finally:
            server.close()


async def test_healthcheck_exit_codes(dreamcatcher_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = dreamcatcher_dsn
    # 3: the database cannot be reached (one line, no traceback)
    code, line = await healthcheck(capsys, UNREACHABLE)
    assert code == HealthCode.DATABASE == 3, line
    assert line.startswith("unhealthy: cannot connect to the database")

    # 3: the server answers but refuses us (here: a database that does not exist)
    code, line = await healthcheck(capsys, database_dsn(dsn, "no_such_database"))
    assert code == 3 and "cannot connect to the database: InvalidCatalogNameError" in line, line

    # no worlds yet: healthy
    code, line = await healthcheck(capsys, dsn)
    assert (code, line) == (0, "healthy: database and schema ok, no worlds yet")

    # 5: a world nobody merges; an unknown --world
    async with connection(dsn) as conn:
        await configure_world(conn, "w")
    code, line = await healthcheck(capsys, dsn)
    assert code == HealthCode.NO_LEADER == 5 and "world 'w' has no leader" in line, line
    code, line = await healthcheck(capsys, dsn, "--world", "nope")
    assert code == 5 and "'nope' does not exist" in line, line

    # 0: a merger runs for it
    async with serving(Merger(dsn, "w", poll_interval=0.05)) as (merger, _):
        await wait_until(lambda: leads(merger), timeout=10, what="the merger leads")
        code, line = await healthcheck(capsys, dsn, "--world", "w", "--max-lag", "30")
        assert code == 0 and line.startswith("healthy: 1 world (w) with a live leader"), line

        # 6: a leader that does not merge (it took the lock and sent one heartbeat), a closed frame waiting
        idle = Merger(dsn, "lagging", leader_timeout=60)
        try:
            assert await idle.try_lead()
            async with DeltaClient.connect(dsn, stream_id="s", world="lagging") as dc:
                await dc.insert_delta(1, {"observations": [{"id": "o"}]}, utc=at(1))
                assert await dc.close_frame(1) == "closed"
            await asyncio.sleep(0.6)
            code, line = await healthcheck(capsys, dsn, "--world", "lagging", "--max-lag", "0.5")
            assert code == HealthCode.LAG == 6, line
            assert "world 'lagging': merge lag" in line and "1 closed frames waiting" in line
            code, line = await healthcheck(capsys, dsn, "--max-lag", "300")  # every world: w and lagging
            assert code == 0 and line.startswith("healthy: 2 worlds (lagging, w)"), line
            code, _ = await healthcheck(capsys, dsn, "--world", "lagging")  # no --max-lag: not checked
            assert code == 0

            # status: the same rules; its output is unchanged (one JSON document on stdout)
            capsys.readouterr()
            assert await cli("--dsn", dsn, "status", "--json", "--world", "lagging", "--max-lag", "0.5") == 6
            out, err = capsys.readouterr()
            assert [w["world"] for w in json.loads(out)] == ["lagging"]
            assert "merge lag" in err
            assert await cli("--dsn", dsn, "status", "--json") == 0
            capsys.readouterr()
        finally:
            await idle.aclose()

    # 5: a leader whose heartbeat is older than its own leader timeout (a hung process)
    hung = Merger(dsn, "w", leader_timeout=2.0)
    try:
        assert await hung.try_lead()  # one heartbeat, then silence while it keeps the lock
        assert (await check_health(dsn, "w")).code == 0
        await asyncio.sleep(2.3)
        code, line = await healthcheck(capsys, dsn, "--world", "w")
        assert code == 5 and "has sent no heartbeat for" in line and "leader timeout: 2s" in line, line
    finally:
        await hung.aclose()
    code, line = await healthcheck(capsys, dsn, "--world", "w")
    assert code == 5 and "no merger holds its lock (last leader" in line, line

    # status exits like healthcheck (5 here) and keeps its output
    capsys.readouterr()
    assert await cli("--dsn", dsn, "status", "--json", "--world", "w") == 5
    out, err = capsys.readouterr()
    assert [w["world"] for w in json.loads(out)] == ["w"] and "has no leader" in err

    # several problems: the lowest code wins, the line says how many more
    report = await check_health(dsn, max_lag=0.1)
    assert report.code == 5 and "(and 1 more problem)" in report.message, report

    # 4: the schema is gone
    async with connection(dsn) as conn:
        await conn.execute("DROP SCHEMA dreamcatcher CASCADE")
    code, line = await healthcheck(capsys, dsn)
    assert code == HealthCode.SCHEMA == 4, line
    assert line.startswith("unhealthy: database has no dreamcatcher schema"), line
    assert line.endswith("run `dreamcatcher init`"), line
    capsys.readouterr()
    assert await cli("--dsn", dsn, "status") == 4
    assert "database has no dreamcatcher schema" in capsys.readouterr().err


async def test_healthcheck_without_a_dsn_starts_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DREAMCATCHER_", "PG"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamcatcher_pg",
        "healthcheck",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, err.decode()  # no server configured: a usage error, like every command
    assert "no PostgreSQL server configured" in err.decode(), err


async def test_schema_missing_objects_are_named(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        await conn.execute("DROP VIEW dreamcatcher.frames CASCADE")
    report = await check_health(dreamcatcher_dsn)
    assert report.code == 4
    assert "lacks frames" in report.message and "changed by hand" in report.message, report


async def test_healthz_and_readyz_leader_standby_and_a_stalled_loop(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with connection(dsn) as conn:
        await configure_world(conn, "w")
    leader = Merger(dsn, "w", poll_interval=0.05, leader_timeout=3.0, name="leader")
    async with serving(leader) as (_, lserver):
        await wait_until(lambda: leads(leader), timeout=10, what="the first merger leads")
        standby = Merger(dsn, "w", poll_interval=0.05, leader_timeout=3.0, name="standby")
        async with serving(standby) as (_, sserver):
            await wait_until(
                lambda: ready(lserver.port, "leader"), timeout=15, what="leader ready", interval=0.1
            )
            await wait_until(
                lambda: ready(sserver.port, "standby"), timeout=15, what="standby ready", interval=0.1
            )
            status, body = await aget(sserver.port, "/readyz")
            doc = json.loads(body)
            assert doc["status"] == "ready" and doc["schema"]["ok"] is True, doc
            for port in (lserver.port, sserver.port):
                status, body = await aget(port, "/healthz")
                assert status == 200 and json.loads(body)["status"] == "ok", body

            # other paths are not the metrics
            for path in ("/", "/metric", "/metrics/x", "/favicon.ico"):
                status, body = await aget(lserver.port, path)
                assert status == 404 and "/metrics, /healthz, /readyz" in body, (path, status, body)

            # the merge loop stalls: a session holds the frames' table; the leader's next query
            # waits on it while its heartbeats (another connection) go on, so no standby ends it
            async with connection(dsn) as blocker:
                tx = blocker.transaction()
                await tx.start()
                try:
                    await blocker.execute("LOCK TABLE dreamcatcher.frame_log IN ACCESS EXCLUSIVE MODE")

                    async def stalled() -> bool:
                        return (await aget(lserver.port, "/healthz"))[0] == 503

                    await wait_until(
                        stalled, timeout=15, what="/healthz 503 for the stalled leader", interval=0.1
                    )
                    status, body = await aget(lserver.port, "/healthz")
                    doc = json.loads(body)
                    assert doc["status"] == "stalled" and "world 'w'" in doc["reason"], doc
                    assert doc["worlds"]["w"]["alive"] is False
                    assert doc["worlds"]["w"]["loop_age_seconds"] > doc["worlds"]["w"]["stale_after_seconds"]
                    status, body = await aget(lserver.port, "/readyz")
                    assert status == 503 and "merge loop stalled" in json.loads(body)["reason"], body
                    assert (await aget(sserver.port, "/healthz"))[0] == 200  # the standby is fine
                    assert leader.stats.is_leader  # and nobody took over
                finally:
                    await tx.rollback()
            await wait_until(
                lambda: ready(lserver.port, "leader"), timeout=15, what="the leader ready again", interval=0.1
            )
            assert (await aget(lserver.port, "/healthz"))[0] == 200

    # both stopped: their loops no longer run, and the checks say so (no merger running: 503)
    assert leader.loop_state()["role"] == "stopped" and leader.loop_state()["alive"] is False
    ok, doc = liveness([leader])
    assert not ok and doc["reason"] == "merge loop stalled: world 'w' (its loop is not running)", doc
    ok, doc = readiness([leader], None)
    assert not ok and "world 'w': merger stopped" in doc["reason"], doc
    assert "schema not checked yet" in doc["reason"], doc


async def test_readyz_says_the_schema_is_missing(dreamcatcher_dsn: str) -> None:
    async with connection(dreamcatcher_dsn) as conn:
        await conn.execute("DROP SCHEMA dreamcatcher CASCADE")
    # the merger refuses a database without its schema version (it stops); the probes say why
    with pytest.raises(SchemaVersionError):
        async with serving(Merger(dreamcatcher_dsn, "w", poll_interval=0.05)) as (_, server):

            async def schema_reported() -> bool:
                status, body = await aget(server.port, "/readyz")
                doc = json.loads(body)
                stopped = doc["worlds"]["w"]["role"] == "stopped"
                return status == 503 and stopped and "no dreamcatcher schema" in doc["reason"]

            await wait_until(
                schema_reported, timeout=15, what="/readyz names the missing schema", interval=0.1
            )
            _, body = await aget(server.port, "/readyz")
            doc = json.loads(body)
            assert doc["schema"]["ok"] is False and "run `dreamcatcher init`" in doc["schema"]["reason"], doc
            assert "world 'w': merger stopped" in doc["reason"], doc
            status, body = await aget(server.port, "/healthz")
            assert status == 503 and "its loop is not running" in json.loads(body)["reason"], body

            # the container probe (the image's HEALTHCHECK): 0 for 200, 1 for 503 or no answer
            base = f"http://127.0.0.1:{server.port}"
            assert await asyncio.to_thread(probe, f"{base}/healthz") == 1
            assert await asyncio.to_thread(probe, f"{base}/readyz") == 1
            assert await asyncio.to_thread(probe, f"http://127.0.0.1:{free_port()}/healthz", timeout=2) == 1
            assert await asyncio.to_thread(probe, f"http://127.0.0.1:{server.port}/metrics") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_merger_cli_metrics_address_build_info_and_json_log_fields(dreamcatcher_dsn: str) -> None:
    dsn = dreamcatcher_dsn
    async with connection(dsn) as conn:
        await configure_world(conn, "w", expected_streams=["s1"])  # the merger closes each frame
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamcatcher_pg",
        "--dsn",
        dsn,
        "--log-format",
        "json",
        "merger",
        "--world",
        "w",
        "--metrics-port",
        str(port),
        "--metrics-address",
        "127.0.0.1",
        "--poll-interval",
        "0.1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        async with DeltaClient.connect(dsn, stream_id="s1", world="w") as dc:
            await dc.insert_delta(1, {"observations": [{"id": "o"}]}, utc=at(1))
            await dc.wait_merged(1, timeout=20)

        text = ""

        async def refreshed() -> bool:
            nonlocal text
            status, text = await aget(port, "/metrics")
            return status == 200 and "dreamcatcher_metrics_refresh_timestamp_seconds " in text

        await wait_until(refreshed, timeout=15, what="a refresh timestamp", interval=0.2)
        # ready once its loop has completed an iteration (the merge above may be in its first)
        await wait_until(lambda: ready(port, "leader"), timeout=15, what="/readyz 200", interval=0.1)
        _, body = await aget(port, "/readyz")
        assert json.loads(body)["worlds"]["w"]["holder"].endswith(f":{proc.pid}"), body
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()

    import platform

    from dreamcatcher_pg import __version__

    info = f'dreamcatcher_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
    assert info in text, text
    prefix = "dreamcatcher_metrics_refresh_timestamp_seconds "
    (stamp,) = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert float(stamp.split()[1]) > 1.7e9

    lines = [json.loads(line) for line in err.decode().splitlines()]
    serving_line = next(d for d in lines if "serving Prometheus metrics" in d["msg"])
    assert f"http://127.0.0.1:{port}/metrics" in serving_line["msg"]
    leads = next(d for d in lines if " leads world " in d["msg"])
    assert leads["world"] == "w" and leads["holder"]
    closed = next(d for d in lines if " closed (" in d["msg"])
    assert (closed["world"], closed["frame"], closed["reason"]) == ("w", 1, "streams")
    merged = next(d for d in lines if d["msg"].startswith("merged "))
    assert (merged["world"], merged["frame"], merged["deltas"]) == ("w", 1, 1)
    assert isinstance(merged["duration_ms"], float) and isinstance(merged["hash"], str)
    # every line the merger writes about its world carries the world as a field
    about_w = [d for d in lines if d["logger"] == "dreamcatcher_pg.merger"]
    assert about_w and all(d.get("world") == "w" for d in about_w), about_w
