"""The command line as an operator meets it: every ``--help``, and progress output that
shows on a terminal and stays out of pipes and log files."""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from dreamcatcher_pg.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "corpus"


def subparsers_action() -> argparse._SubParsersAction[argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return dict(subparsers_action().choices)


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dreamcatcher_pg", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        env=dict(os.environ) if env is None else env,
    )


def test_top_level_help_lists_every_command_and_the_environment() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for name in subcommands():
        assert f"    {name} " in result.stdout or f"    {name}\n" in result.stdout, name
    for variable in ("DREAMCATCHER_DSN", "DREAMCATCHER_LOG_FORMAT", "DREAMCATCHER_DATA_DIR"):
        assert variable in result.stdout
    assert "--log-format" in result.stdout and "json" in result.stdout


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_each_command_help_runs_and_documents_every_option(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dreamcatcher {command}")
    parser = subcommands()[command]
    (choice,) = [a for a in subparsers_action()._choices_actions if a.dest == command]
    assert choice.help, f"`dreamcatcher {command}` has no one-line help in `dreamcatcher --help`"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"`dreamcatcher {command}`: {action.option_strings or action.dest} has no help"
        for option in action.option_strings:
            assert option in result.stdout


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("dreamcatcher ")


# -- progress -------------------------------------------------------------------------


def assert_plain(text: str) -> None:
    """No progress bar, no cursor movement, no colour: what a log file or a pipe wants."""
    assert "\r" not in text and "\x1b" not in text, repr(text[:400])
    assert "━" not in text


def test_demo_and_ingest_are_quiet_when_not_a_tty(dreamcatcher_dsn: str) -> None:
    demo = run("--dsn", dreamcatcher_dsn, "demo", "--streams", "2", "--frames", "3")
    assert demo.returncode == 0, demo.stderr
    assert_plain(demo.stdout)
    assert_plain(demo.stderr)
    assert "frames merged" in demo.stdout.lower() or "merged" in demo.stdout.lower()
    assert demo.stderr == ""

    ingest = run("--dsn", dreamcatcher_dsn, "ingest", str(CORPUS), "--world", "corpus")
    assert ingest.returncode == 0, ingest.stderr
    assert_plain(ingest.stdout)
    assert_plain(ingest.stderr)
    assert ingest.stderr == ""


def run_on_a_terminal(*argv: str, timeout: float = 120) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as stdout and stderr; return (status, output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dreamcatcher_pg", *argv],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # the terminal closed: the process is gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return status, b"".join(chunks).decode(errors="replace")


def test_demo_shows_progress_on_a_terminal(dreamcatcher_dsn: str) -> None:
    status, output = run_on_a_terminal("--dsn", dreamcatcher_dsn, "demo", "--streams", "2", "--frames", "3")
    assert status == 0, output
    assert "\x1b[" in output  # drawn live: a terminal gets the progress display
    assert "/s" in output  # with a rate


# -- which server, exit status, one-line errors ----------------------------------------------------


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without any server configured (no DREAMCATCHER_* nor PG* variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DREAMCATCHER_", "PG"))}
    return {**env, **extra}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dreamcatcher: error: "), lines[0]
    return lines[0]


def test_no_server_configured_is_an_error_not_an_embedded_server(tmp_path: Path) -> None:
    result = run("status", env=bare_env(HOME=str(tmp_path)))
    assert result.returncode == 2
    line = one_line_error(result)
    for hint in ("--dsn", "DREAMCATCHER_DSN", "PGHOST", "--embedded"):
        assert hint in line
    assert not (tmp_path / ".local").exists()  # no embedded server was started behind the user's back


def test_an_unreachable_server_is_exit_3_in_one_line() -> None:
    result = run("--dsn", "postgresql://postgres@127.0.0.1:1/postgres", "status", env=bare_env())
    assert result.returncode == 3
    assert "connect" in one_line_error(result)


def test_a_missing_database_is_exit_3_in_one_line(dreamcatcher_dsn: str) -> None:
    missing = urlunsplit(urlsplit(dreamcatcher_dsn)._replace(path="/no_such_database_here"))
    result = run("status", "--dsn", missing, env=bare_env())
    assert result.returncode == 3
    assert "no_such_database_here" in one_line_error(result)


def pg_variables(dsn: str) -> dict[str, str]:
    """The PG* variables that name the server of a ``postgresql://`` DSN (host or socket directory
    in the authority or in the query, as the test servers' DSNs have them)."""
    url = urlsplit(dsn)
    query = dict(parse_qsl(url.query))
    return {
        "PGHOST": query.get("host") or url.hostname or "localhost",
        "PGPORT": query.get("port") or str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        "PGDATABASE": url.path.lstrip("/"),
    }


def test_the_libpq_variables_name_the_server(dreamcatcher_dsn: str) -> None:
    result = run("status", "--json", env=bare_env(**pg_variables(dreamcatcher_dsn)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[")


def test_global_options_work_after_the_command(dreamcatcher_dsn: str) -> None:
    result = run("status", "--dsn", dreamcatcher_dsn, "--json", "--log-format", "json", "-v", env=bare_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[")
    before = run("--dsn", dreamcatcher_dsn, "status", "--json", env=bare_env())
    assert before.returncode == 0 and before.stdout == result.stdout


def test_embedded_only_when_asked_for(tmp_path: Path) -> None:
    result = run("--embedded", "--data-dir", str(tmp_path / "pgdata"), "dsn", env=bare_env(), timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("postgresql://")
    assert (tmp_path / "pgdata").is_dir()
    both = run("--embedded", "--dsn", "postgresql://x@127.0.0.1/x", "dsn", env=bare_env())
    assert both.returncode == 2 and "--embedded" in one_line_error(both)
