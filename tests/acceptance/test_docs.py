"""docs/*.md, executed: every command runs, the example test passes, the tables match the code.

Every line of a ```sh block is either a ``dreamcatcher`` command, run here against a
fresh database (one per document, in document order), or carries a
``# not run by tests: <reason>`` comment (docker, long-running services). Any other
line fails the test: a command in the docs is run, or says why not.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dreamcatcher_pg import Merger, configure_world
from dreamcatcher_pg.ops.metrics import DatabaseRefresher, WorldCounts, build_registry
from dreamcatcher_pg.ops.status import collect_status

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
DOC_FILES = sorted(DOCS.glob("*.md"))
NOT_RUN = re.compile(r"#\s*not run by tests:\s*\S")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.M)


def sh_lines(path: Path) -> list[str]:
    """The command lines of the doc's ```sh blocks (continuations joined, comments-only lines dropped)."""
    lines: list[str] = []
    for block in blocks(path, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def command_word(line: str) -> str:
    words = shlex.split(line, comments=True)
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words[0] if words else ""


def test_the_docs_exist_and_link_to_files_that_exist() -> None:
    names = {p.name for p in DOC_FILES}
    assert {"concepts.md", "guarantees.md", "operations.md", "tuning.md", "rules.md", "testing.md"} <= names
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_every_sh_line_is_run_or_says_why_not() -> None:
    unmarked = [
        f"{path.name}: {line}"
        for path in DOC_FILES
        for line in sh_lines(path)
        if not NOT_RUN.search(line) and command_word(line) != "dreamcatcher"
    ]
    assert unmarked == [], "commands in docs that no test runs (mark them '# not run by tests: why')"


@pytest.mark.parametrize(
    "doc", [p.name for p in DOC_FILES if any(not NOT_RUN.search(line) for line in sh_lines(p))]
)
def test_doc_commands_run(doc: str, dreamcatcher_dsn: str) -> None:
    env = {
        **os.environ,
        "DREAMCATCHER_DSN": dreamcatcher_dsn,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("DREAMCATCHER_LOG_FORMAT", None)
    ran = 0
    for line in sh_lines(DOCS / doc):
        if NOT_RUN.search(line):
            continue
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", line],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, f"{doc}: `{line}` exited {result.returncode}:\n{result.stderr}"
        ran += 1
    assert ran > 0


def test_the_testing_example_passes(tmp_path: Path, dreamcatcher_server_dsn: str) -> None:
    """docs/testing.md's example files, written out and run with pytest as a user would."""
    written = []
    for lang in ("ini", "python"):
        for block in blocks(DOCS / "testing.md", lang):
            first, _, rest = block.partition("\n")
            match = re.fullmatch(r"# ([\w.]+)", first.strip())
            if match:
                (tmp_path / match.group(1)).write_text(rest, encoding="utf-8")
                written.append(match.group(1))
    assert sorted(written) == ["conftest.py", "pytest.ini", "test_fleet.py"]
    env = {
        **os.environ,
        "DREAMCATCHER_TEST_BACKEND": "dsn",
        "DREAMCATCHER_TEST_DSN": dreamcatcher_server_dsn,
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_guarantees_mirror_the_readme_table() -> None:
    def rows(text: str) -> list[str]:
        return [
            line
            for line in text.splitlines()
            if line.startswith("| ") and "design.md §2" not in line and re.match(r"\| \d+\. ", line)
        ]

    readme = rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(readme) == 9
    assert rows((DOCS / "guarantees.md").read_text(encoding="utf-8")) == readme


def documented_metrics() -> set[str]:
    text = (
        (DOCS / "operations.md").read_text(encoding="utf-8").split("## 4. Metrics", 1)[1].split("\n## ", 1)[0]
    )
    return set(re.findall(r"^\| `(dreamcatcher_\w+)` \|", text, flags=re.M))


def test_operations_lists_exactly_the_metrics_the_merger_serves() -> None:
    merger = Merger("postgresql://unused", "w")
    refresher = DatabaseRefresher("postgresql://unused", ["w"])
    refresher._snapshot["w"] = WorldCounts(1, 0, 0, 0, 0, 0.0)
    registry = build_registry([merger], refresher, process_metrics=False)
    served = set()
    for family in registry.collect():
        name = family.name
        served.add(name + "_total" if family.type == "counter" else name)
    assert documented_metrics() == served


async def test_operations_lists_every_status_key(dreamcatcher_dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dreamcatcher_dsn)
    try:
        await configure_world(conn, "w", expected_streams=["a"])
    finally:
        await conn.close()
    (world,) = await collect_status(dreamcatcher_dsn)
    text = (DOCS / "operations.md").read_text(encoding="utf-8").split("The keys:", 1)[1].split("\n\n", 2)[1]
    documented = {
        name for row in re.findall(r"^\| (.+?) \|", text, flags=re.M) for name in re.findall(r"`(\w+)`", row)
    }
    assert set(world.to_dict()) == documented


def test_operations_keeps_a_roles_section() -> None:
    assert re.search(r"^## \d+\. Roles$", (DOCS / "operations.md").read_text(encoding="utf-8"), flags=re.M)


def test_doc_python_blocks_compile() -> None:
    for path in DOC_FILES:
        for block in blocks(path, "python"):
            compile(block, str(path), "exec")
