"""docker-compose.yml, run for real: PostgreSQL, init, the merger with its metrics, 3 workers.

The health checks too: postgres and the merger become ``healthy`` (the Dockerfile's
HEALTHCHECK, overridden by the compose file to probe the merger's ``/readyz``), the workers
(which start only once the merger is healthy) have none, ``/healthz`` and ``/readyz`` answer
200 on the published port, other paths 404, and ``dreamcatcher healthcheck`` exits 0 inside
the merger's container.

Needs a Docker engine and the images, which no registry gives us here: .ci/run's
docker stage makes both (docker/setup-engine.sh, docker/build-local-images.sh),
then runs this file with ``DREAMCATCHER_COMPOSE_TEST=1``. With that variable set,
anything missing (engine, docker-compose, an image) FAILS the test with what to
do; without it the test is skipped, saying how to run it.

Images: ``DREAMCATCHER_PG_IMAGE``, ``DREAMCATCHER_BASE_IMAGE`` and ``DREAMCATCHER_IMAGE``
from the environment, else from docker/local-images.env (written by the build script).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ENABLE = "DREAMCATCHER_COMPOSE_TEST"
IMAGE_VARS = ("DREAMCATCHER_PG_IMAGE", "DREAMCATCHER_BASE_IMAGE", "DREAMCATCHER_IMAGE")
WORKERS = 3
HOW = (
    "run docker/setup-engine.sh, `. <state>/env`, docker/build-local-images.sh, then "
    f"{ENABLE}=1 pytest tests/acceptance/test_compose.py (.ci/run's docker stage does all of it)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def compose_env() -> dict[str, str]:
    env = dict(os.environ)
    env_file = ROOT / "docker" / "local-images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, _, value = line.partition("=")
            if name in IMAGE_VARS:
                env.setdefault(name, value)
    return env


def preflight(env: dict[str, str]) -> str | None:
    """What is missing to run the stack, or None."""

    def ok(*argv: str) -> bool:
        try:
            return subprocess.run(argv, env=env, capture_output=True, timeout=30, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    if not ok("docker", "info"):
        return f"no Docker engine answers (DOCKER_HOST={env.get('DOCKER_HOST', '<unset>')})"
    if not ok("docker-compose", "version"):
        return "docker-compose (v1) is not installed"
    missing = [name for name in IMAGE_VARS if not env.get(name)]
    if missing:
        return f"{', '.join(missing)} not set and no docker/local-images.env"
    absent = [env[name] for name in IMAGE_VARS if not ok("docker", "image", "inspect", env[name])]
    if absent:
        return f"image(s) not built: {', '.join(absent)}"
    return None


class Stack(NamedTuple):
    compose: list[str]  #: the docker-compose argv prefix (project, file)
    env: dict[str, str]
    pg_port: int
    metrics_port: int


@pytest.fixture
def stack() -> Iterator[Stack]:
    """The compose stack up with 3 workers: (compose argv prefix, env, PostgreSQL port, metrics port)."""
    if os.environ.get(ENABLE) != "1":
        pytest.skip(f"docker-compose stack not requested: {HOW}")
    env = compose_env()
    problem = preflight(env)
    if problem is not None:
        pytest.fail(f"{ENABLE}=1 but the compose stack cannot run: {problem}. To fix: {HOW}", pytrace=False)
    pg_port, metrics_port = free_port(), free_port()
    env.update(DREAMCATCHER_PG_PORT=str(pg_port), DREAMCATCHER_METRICS_PORT=str(metrics_port))
    project = f"dctest{os.getpid()}"
    compose = [
        "docker-compose",
        "--project-directory",
        str(ROOT),
        "-f",
        str(ROOT / "docker-compose.yml"),
        "-p",
        project,
    ]
    up = subprocess.run(
        [*compose, "up", "-d", "--no-build", "--scale", f"worker={WORKERS}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    try:
        assert up.returncode == 0, f"docker-compose up failed:\n{up.stdout}\n{up.stderr}"
        yield Stack(compose, env, pg_port, metrics_port)
    except BaseException:
        logs = subprocess.run(
            [*compose, "logs", "--no-color", "--tail", "40"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(f"docker-compose logs:\n{logs.stdout}\n{logs.stderr}")
        raise
    finally:
        down = subprocess.run(
            [*compose, "down", "-v", "--remove-orphans", "--timeout", "5"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert down.returncode == 0, f"docker-compose down failed:\n{down.stdout}\n{down.stderr}"


def wait_for(what: str, timeout: float, probe: object) -> object:
    """Call ``probe()`` until it returns something truthy (exceptions count as not yet)."""
    assert callable(probe)
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def health(compose: list[str], env: dict[str, str], service: str) -> list[str]:
    """The Docker health status of each container of ``service`` ("" when it has no health check)."""
    ids = subprocess.run(
        [*compose, "ps", "-q", service], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert ids, f"no container for the service {service}"
    statuses = []
    for cid in ids:
        out = subprocess.run(
            ["docker", "inspect", "--format", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", cid],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        statuses.append(out.strip())
    return statuses


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_compose_stack_merges_frames_and_serves_metrics(
    stack: tuple[list[str], dict[str, str], int, int],
) -> None:
    compose, env, pg_port, metrics_port = stack
    dsn = f"postgresql://postgres:dreamcatcher@127.0.0.1:{pg_port}/dreamcatcher"

    def merged_with_every_worker() -> tuple[int, int] | None:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM dreamcatcher.frames"
                "        WHERE world = 'fleet' AND status = 'merged'),"
                " (SELECT count(DISTINCT stream_id) FROM dreamcatcher.deltas WHERE world = 'fleet')"
            ).fetchone()
        assert row is not None
        merged, streams = int(row[0]), int(row[1])
        return (merged, streams) if merged >= 3 and streams == WORKERS else None

    wait_for("3 merged frames written by 3 workers", 180, merged_with_every_worker)

    # health: postgres and the merger healthy (the workers waited for the merger), the rest none
    def healthy() -> bool:
        return all(health(compose, env, s) == ["healthy"] for s in ("postgres", "merger"))

    wait_for("postgres and the merger healthy", 120, healthy)
    assert health(compose, env, "worker") == [""] * WORKERS
    base = f"http://127.0.0.1:{metrics_port}"
    assert http_status(f"{base}/healthz") == 200
    assert http_status(f"{base}/readyz") == 200
    assert http_status(f"{base}/nothing-here") == 404
    # the image's own HEALTHCHECK command (the compose file probes /readyz instead): /healthz
    probe = subprocess.run(
        [*compose, "exec", "-T", "merger", "python3", "-m", "dreamcatcher_pg.probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0 and '"status":"ok"' in probe.stdout, (probe.stdout, probe.stderr)
    argv = ["dreamcatcher", "healthcheck", "--world", "fleet", "--max-lag", "60"]
    check = subprocess.run(
        [*compose, "exec", "-T", "merger", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, (check.stdout, check.stderr)
    assert check.stdout.startswith("healthy: 1 world (fleet)"), check.stdout

    def scrape() -> dict[str, float] | None:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        values = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.labels.get("world") == "fleet" and "le" not in s.labels
        }
        # the world metrics refresh on their own clock: wait until they have seen every worker
        return values if values.get("dreamcatcher_deltas_ingested_total", 0) >= WORKERS else None

    metrics = wait_for("the merger's metrics", 60, scrape)
    assert isinstance(metrics, dict)
    assert metrics["dreamcatcher_leader"] == 1
    assert metrics["dreamcatcher_frames_merged_total"] >= 1
    assert metrics["dreamcatcher_merge_duration_seconds_count"] >= 1
    assert metrics["dreamcatcher_close_to_merged_seconds_count"] >= 1
    assert metrics["dreamcatcher_deltas_ingested_total"] >= WORKERS

    status = subprocess.run(
        [*compose, "exec", "-T", "merger", "dreamcatcher", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    (fleet,) = [w for w in json.loads(status.stdout) if w["world"] == "fleet"]
    assert fleet["leader_alive"] is True
    assert fleet["frames_merged"] >= 3
    assert fleet["close_after"] == 2.0
