"""``dreamcatcher web`` as a user runs it: the URL it prints, the bind rules, a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from dreamcatcher_pg.cli import main

pytestmark = pytest.mark.usefixtures("restore_logging")


def test_a_public_address_without_a_token_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", "postgresql://nobody@127.0.0.1:1/none", "web", "--address", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0" in err and "--token" in err


def test_a_token_too_short_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", "postgresql://nobody@127.0.0.1:1/none", "web", "--token", "abc"]) == 1
    assert "a token must be 8 to 256 characters" in capsys.readouterr().err


@contextlib.contextmanager
def web_process(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m dreamcatcher_pg ARGS`` until it prints its URL; killed (if still running) after."""
    with subprocess.Popen(
        [sys.executable, "-m", "dreamcatcher_pg", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            line = proc.stdout.readline()
            assert line.startswith("inspector: "), (
                line,
                proc.stderr.read() if proc.poll() is not None else "",
            )
            yield proc, line.split()[1]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_web_prints_its_url_serves_and_stops_cleanly(web_world: str, sig: signal.Signals) -> None:
    with web_process("--dsn", web_world, "web", "--world", "many", "--port", "0") as (proc, url):
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/api/meta").json()["default_world"] == "many"
            assert "dreamcatcher inspector" in http.get("/").text
            with http.stream("GET", "/api/events", params={"world": "many"}) as events:
                assert next(events.iter_lines()) == "retry: 1000"
                started = time.monotonic()
                proc.send_signal(sig)  # with an event stream open
                assert proc.wait(timeout=20) == 0
                assert time.monotonic() - started < 10


def test_the_token_can_come_from_the_environment(web_world: str) -> None:
    env = {**os.environ, "DREAMCATCHER_WEB_TOKEN": "sesame-sesame"}
    with web_process("--dsn", web_world, "web", "--port", "0", env=env) as (proc, url):
        assert url.endswith("/?token=sesame-sesame")
        base = url.split("?")[0]
        assert httpx.get(base + "api/meta", timeout=30).status_code == 401
        assert httpx.get(url, timeout=30).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
