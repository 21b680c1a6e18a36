"""What the browser tests share: where Chromium is, where screenshots go, small helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
REQUIRED = os.environ.get("DREAMCATCHER_BROWSER_TESTS", "") == "require"
ARTIFACTS = Path(os.environ.get("DREAMCATCHER_ARTIFACTS", ROOT / "artifacts")) / "browser"

T = TypeVar("T")


def missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    return None


@dataclass
class Demo:
    url: str
    dsn: str
    world: str
    first_frame: int
    last_frame: int


def shot(page: Any, name: str) -> Path:
    """Keep a screenshot as an artifact of the run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop of its own thread (Playwright's sync API holds this one)."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


def query(dsn: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn, contextlib.closing(conn.cursor()) as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())
