"""The README's "Your own entity types" section, run as a user would: its commands, then its SQL."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import asyncpg

from dreamcatcher_pg.rules import parse_rules

ROOT = Path(__file__).resolve().parents[2]
SECTION = (
    (ROOT / "README.md").read_text(encoding="utf-8").split("## Your own entity types", 1)[1].split("\n## ")[0]
)


def _block(lang: str) -> str:
    found = re.findall(rf"```{lang}\n(.*?)```", SECTION, flags=re.DOTALL)
    assert len(found) == 1, lang
    return str(found[0])


def test_the_readme_example_is_the_shipped_file() -> None:
    shown = parse_rules(_block("toml"))
    shipped = parse_rules((ROOT / "examples" / "simulation" / "rules.toml").read_text())
    assert shown.id == shipped.id  # the same declaration, comments aside
    assert tomllib.loads(_block("toml"))["kinds"]["stock"]["merge"] == "sum"


async def test_readme_rules_commands_and_sql(dreamcatcher_dsn: str) -> None:
    env = {**os.environ, "DREAMCATCHER_DSN": dreamcatcher_dsn}
    outputs = []
    for line in _block("sh").splitlines():
        command = line.split("  #", 1)[0].strip()
        if not command:
            continue
        argv = shlex.split(command.replace('"$DREAMCATCHER_DSN"', dreamcatcher_dsn))
        argv = [sys.executable, "-m", "dreamcatcher_pg", *argv[1:]] if argv[0] == "dreamcatcher" else argv
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else argv
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, (command, err.decode())
        outputs.append(out.decode())
    assert ": ok, 3 kinds" in outputs[0]
    assert "merges frames from 0 on" in outputs[1]
    assert "from frame 0: rule set" in outputs[2] and "unit, event, stock" in outputs[2]

    statements = [s.strip() for s in re.sub(r"--[^\n]*", "", _block("sql")).split(";") if s.strip()]
    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        units = await conn.fetch(statements[0])
        assert sorted(r["key"] for r in units) == ["[1]", "[2]", "[3]", "[4]", "[5]"]
        stock = {r["key"]: r["qty"] for r in await conn.fetch(statements[1])}
        assert set(stock) == {'["north", "ore"]'} and int(stock['["north", "ore"]']) > 0
    finally:
        await conn.close()
