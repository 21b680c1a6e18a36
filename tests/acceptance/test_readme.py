"""The README's commands, run as a user would (the install step is what CI itself runs)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_test_command_is_the_one_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r'^README_TEST_COMMAND="(.+)"$', ci, flags=re.MULTILINE)
    assert match is not None
    assert match.group(1) in _blocks("sh")[1]


def test_readme_gives_exactly_two_setup_commands() -> None:
    setup = README.split("## Set up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = [b.strip() for b in re.findall(r"```sh\n(.*?)```", setup, flags=re.DOTALL)]
    assert len(commands) == 2
    assert commands[0].endswith("dreamcatcher demo")
    assert commands[1].endswith(".venv/bin/pytest")


async def test_tour_merger_worker_and_time_travel(dreamcatcher_dsn: str) -> None:
    env = {**os.environ, "DREAMCATCHER_DSN": dreamcatcher_dsn}
    merger = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dreamcatcher_pg",
        "merger",
        "--poll-interval",
        "0.2",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        worker = next(b for b in _blocks("python") if "DeltaClient.connect" in b)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _, worker_err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, worker_err.decode()
    finally:
        merger.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(merger.communicate(), 30)
    assert merger.returncode == 0, err.decode()

    sql = re.sub(r"--[^\n]*", "", _blocks("sql")[0])
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        posts = await conn.fetch(statements[0])
        assert [(r["number"], r["title"], r["first_frame"]) for r in posts] == [(42, "Hello", 515)]
        diff = await conn.fetch(statements[1])
        assert {(r["kind"], r["change"]) for r in diff} == {("post", "added"), ("comment", "added")}
        frames = await conn.fetch(statements[2])
        assert [(r["frame"], r["status"], r["delta_count"]) for r in frames] == [(515, "merged", 1)]
        assert re.fullmatch(r"[0-9a-f]{16}", frames[0]["state_hash"])
    finally:
        await conn.close()
