"""The inspector in a real browser: Playwright driving Chromium (Debian's package, offline).

Skipped, saying why, when Playwright or Chromium is missing, unless
``DREAMCATCHER_BROWSER_TESTS=require`` (what ``.ci/run`` sets): then they fail.
Chromium is ``$CHROMIUM_PATH``, else ``/usr/bin/chromium`` (Playwright cannot
download its own build here). Screenshots go to ``$DREAMCATCHER_ARTIFACTS/browser``
(default ``artifacts/browser`` in the repository), kept after the run.

``demo_web`` is ``dreamcatcher demo --web`` as a newcomer runs it, on a
database of its own: the demo world, its merger, and the inspector on it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from dreamcatcher_pg.testing import database_dsn
from tests.support.browserkit import CHROMIUM, REQUIRED, Demo, missing

DEMO = {"world": "demo", "streams": 3, "frames": 8}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one module. Not for the session: Playwright's sync API keeps an event loop
    running in this thread while it is open, and the async tests after it need the thread's."""
    reason = missing()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"DREAMCATCHER_BROWSER_TESTS=require, but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def demo_web(browser: Any, dreamcatcher_server_dsn: str, dreamcatcher_template_db: str) -> Iterator[Demo]:
    """``dreamcatcher demo --web`` on a database of its own, until the module's tests are done."""
    name = f"dc_browser_{os.getpid()}_{secrets.token_hex(4)}"
    admin = dreamcatcher_server_dsn
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(dreamcatcher_template_db)
            )
        )
    dsn = database_dsn(admin, name)
    argv = [
        sys.executable,
        "-m",
        "dreamcatcher_pg",
        "--dsn",
        dsn,
        "demo",
        "--world",
        str(DEMO["world"]),
        "--streams",
        str(DEMO["streams"]),
        "--frames",
        str(DEMO["frames"]),
        "--web",
        "--web-port",
        "0",
    ]
    try:
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            try:
                url = None
                for line in proc.stdout:
                    if line.startswith("inspector: "):
                        url = line.split()[1]
                        break
                assert url is not None, f"demo --web printed no URL: {proc.stderr.read()}"
                yield Demo(url, dsn, str(DEMO["world"]), 0, int(DEMO["frames"]) - 1)
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; a JavaScript error on it fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
