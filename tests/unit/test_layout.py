"""The layout's promises that import-linter cannot check (docs/design.md §8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )


def test_a_worker_importing_the_package_loads_neither_the_merger_nor_rich() -> None:
    result = run_python(
        "import sys, dreamcatcher_pg\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m == 'rich' or m.startswith(('rich.', 'dreamcatcher_pg.merger'))))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_merger_is_still_a_public_name() -> None:
    import dreamcatcher_pg
    from dreamcatcher_pg import Merger, MergeResult
    from dreamcatcher_pg.merger import Merger as Direct

    assert Merger is Direct and MergeResult.__name__ == "MergeResult"
    assert set(dreamcatcher_pg.__all__) >= {
        "DeltaClient",
        "Merger",
        "MergeResult",
        "Receipt",
        "configure_world",
    }


def test_the_pytest_plugin_without_pytest_says_what_is_missing() -> None:
    result = run_python("import sys\nsys.modules['pytest'] = None\nimport dreamcatcher_pg.testing")
    assert result.returncode != 0
    assert "needs pytest" in result.stderr


def test_nothing_points_outside_the_repository() -> None:
    suffixes = {".py", ".md", ".toml", ".sh", ".yml", ".sql"}
    skip = {".git", ".venv", "artifacts", "build", "dist"}
    offenders = []
    for path in [*ROOT.rglob("*"), ROOT / ".ci" / "run"]:
        parts = path.relative_to(ROOT).parts
        if skip.intersection(parts) or parts[0].endswith(".egg-info") or path == Path(__file__):
            continue
        if (path.suffix in suffixes or parts == (".ci", "run")) and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            offenders += [f"{path}: {n}" for n in ("../shared", "DESIGN.md", "STYLE.md") if n in text]
    assert offenders == []


#: The command line: the cli package, the console script's guard in front of it (entry.py
#: checks the cli extra is installed before anything imports rich, so it cannot live in cli/),
#: and the container health check's probe (probe.py: the standard library only, kept cheap).
COMMAND_LINE = ("cli", "entry.py", "probe.py")


def library_modules() -> list[Path]:
    package = ROOT / "dreamcatcher_pg"
    return [p for p in package.rglob("*.py") if not set(COMMAND_LINE) & set(p.relative_to(package).parts)]


def test_nothing_outside_the_command_line_prints() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in library_modules()
        if any(word in p.read_text(encoding="utf-8") for word in ("print(", "sys.stdout", "sys.stderr"))
    ]
    assert offenders == []


def test_every_module_has_one_job_and_stays_short() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in (ROOT / "dreamcatcher_pg").rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert long == {}
