"""The README's inspector section, run as a user would: each command of its ```sh block (on a
free port instead of 8765, which a developer's own inspector may hold)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from dreamcatcher_pg import DeltaClient

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("\n## Inspector\n", 1)[1].split("\n## ", 1)[0]
FREE_PORT = {"demo": ["--web-port", "0"], "web": ["--port", "0"]}


def commands() -> list[list[str]]:
    """The section's commands, as argv for ``python -m dreamcatcher_pg`` (comments dropped)."""
    (block,) = re.findall(r"```sh\n(.*?)```", SECTION, flags=re.DOTALL)
    argvs = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        assert words[0] == ".venv/bin/dreamcatcher", line
        argvs.append(words[1:])
    return argvs


@contextlib.contextmanager
def serving(argv: list[str], dsn: str) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    """Run the command until it prints the inspector's URL: the process, the URL, what it printed."""
    env = {**os.environ, "DREAMCATCHER_DSN": dsn}
    with subprocess.Popen(
        [sys.executable, "-m", "dreamcatcher_pg", *argv, *FREE_PORT[argv[0]]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        printed = []
        try:
            for line in proc.stdout:
                printed.append(line)
                if line.startswith("inspector: "):
                    break
            assert printed and printed[-1].startswith("inspector: "), (printed, proc.stderr.read())
            yield proc, printed[-1].split()[1], printed
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            assert proc.returncode == 0, proc.returncode


def test_the_section_shows_a_screenshot_that_exists() -> None:
    images = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", SECTION)
    assert images, "the inspector section shows no screenshot"
    for image in images:
        data = (ROOT / image).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, image


def test_the_section_runs_the_demo_then_the_inspector(dreamcatcher_dsn: str) -> None:
    demo, web = commands()
    assert demo[:2] == ["demo", "--web"] and web[0] == "web"

    with serving(demo, dreamcatcher_dsn) as (_, url, printed):
        assert any("stays up, with a merger" in line for line in printed)
        with httpx.Client(base_url=url, timeout=30) as http:
            world = http.get("/api/meta").json()["default_world"]
            assert world.startswith("demo-")
            summary = http.get("/api/world", params={"world": world}).json()
            assert summary["frames"]["merged"] == 20 and summary["last_merged"] == 19
            assert "post" in summary["kinds"] and summary["quarantined"] > 0
            assert "dreamcatcher inspector" in http.get("/").text

            async def write() -> None:  # a worker writes on: the demo's merger merges it
                async with DeltaClient.connect(dreamcatcher_dsn, stream_id="newcomer", world=world) as dc:
                    await dc.insert_delta(20, {"posts_created": [{"number": 1, "title": "mine"}]})
                    await dc.close_frame(20)
                    await dc.wait_merged(20, timeout=30)

            asyncio.run(write())
            post = http.get("/api/entity", params={"world": world, "kind": "post", "key": "1"}).json()
            assert post["version"]["data"]["title"] == "mine" and post["frame"] == 20

    async def default_world() -> None:
        async with DeltaClient.connect(dreamcatcher_dsn, stream_id="stream-1") as dc:
            await dc.insert_delta(515, {"posts_created": [{"number": 42, "title": "Hello"}]})
            await dc.close_frame(515)
        from dreamcatcher_pg.testing import running_merger

        async with (
            running_merger(dreamcatcher_dsn),
            DeltaClient.connect(dreamcatcher_dsn, stream_id="s") as dc,
        ):
            await dc.wait_merged(515, timeout=30)

    asyncio.run(default_world())
    with serving(web, dreamcatcher_dsn) as (_, url, _printed):
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as http:
            meta = http.get("/api/meta").json()
            assert meta["default_world"] == "default" and meta["read_only"] is True
            state = http.get("/api/state", params={"world": "default", "kind": "post"}).json()
            assert [i["data"]["title"] for i in state["items"]] == ["Hello"] and state["frame"] == 515
