"""``dreamcatcher rules apply | show | check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ..rules.parse import RulesError, load_rules


def _load(path: str) -> Any:
    try:
        return load_rules(path)
    except RulesError as exc:
        for problem in exc.problems:
            print(problem.format(exc.name), file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s); nothing was applied", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"{path}: {exc.strerror or exc}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace, dsn: str) -> int:
    rules = _load(args.file)
    if rules is None:
        return 1
    kinds = ", ".join(f"{k.name} ({k.merge or 'derived'})" for k in rules.kinds)
    print(f"{args.file}: ok, {len(rules.kinds)} kinds: {kinds}; rule set {rules.id[:16]}")
    return 0


def cmd_apply(args: argparse.Namespace, dsn: str) -> int:
    from ..rules.store import apply_rules

    rules = _load(args.file)
    if rules is None:
        return 1
    result = asyncio.run(apply_rules(dsn, args.world, rules, from_frame=args.from_frame))
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.changed:
        print(
            f"world {args.world}: rule set {result.rule_set[:16]} merges frames from {result.from_frame} on"
        )
    else:
        print(
            f"world {args.world}: these rules are already in effect from frame {result.from_frame}; "
            "nothing changed"
        )
    return 0


def cmd_show(args: argparse.Namespace, dsn: str) -> int:
    from ..rules.store import show_rules

    versions = asyncio.run(show_rules(dsn, args.world))
    if args.json:
        print(json.dumps([v.__dict__ for v in versions]))
        return 0
    for v in versions:
        where = (
            "default (frames before any version)" if v.from_frame is None else f"from frame {v.from_frame}"
        )
        print(
            f"{where}: rule set {v.rule_set[:16]}{' (built in)' if v.builtin else ''}: {', '.join(v.kinds)}"
        )
    current = versions[-1]
    print(f"\n# the rules of world {args.world} now ({current.rule_set[:16]}):\n{current.source.rstrip()}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rules",
        help="declare a world's entity types and merge rules (a TOML file)",
        description="Merge rules are data: a TOML file with one [kinds.NAME] table per entity kind "
        "(docs/rules.md). A world without rules uses the built-in default rule set.",
    )
    rsub = p.add_subparsers(
        dest="rules_command",
        required=True,
        metavar="SUBCOMMAND",
        help="check FILE | apply FILE --world W [--from-frame N] | show --world W",
    )
    a = rsub.add_parser("apply", help="merge a world's frames with these rules from a frame on")
    a.add_argument("file", help="the rules file (TOML)")
    a.add_argument("--world", required=True, help="the world whose frames these rules merge")
    a.add_argument(
        "--from-frame",
        type=int,
        default=None,
        metavar="N",
        help="the first frame they merge (default: the first frame not merged yet); never a merged one",
    )
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=cmd_apply)
    s = rsub.add_parser("show", help="a world's rule versions, and the rules it merges with now")
    s.add_argument("--world", required=True, help="the world")
    s.add_argument("--json", action="store_true", help="print the versions as JSON")
    s.set_defaults(func=cmd_show)
    c = rsub.add_parser("check", help="check a rules file: errors with their line, exit 1")
    c.add_argument("file", type=lambda v: str(Path(v)), help="the rules file (TOML)")
    c.set_defaults(func=cmd_check, needs_dsn=False)
