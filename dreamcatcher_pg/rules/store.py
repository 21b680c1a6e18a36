"""Install rule sets in a database and give them to worlds from a frame on.

* :func:`install_rule_set` compiles a rule set and creates its functions (once: they are named
  after its hash) and its ``rule_sets`` row, in the caller's transaction.
* :func:`install_default` does it for the package's ``default.toml`` and makes it the default
  (``dreamcatcher init`` calls it).
* :func:`apply_rules` gives a world a rule set from a frame on: never at or below a frame that
  is merged or claimed (merged history is never rewritten); the same rules as those already in
  effect are a no-op.
* :func:`show_rules` lists a world's rule versions.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from ..db.connect import ConnOrDsn, connected, transaction
from ..db.queries import query
from ..errors import DreamcatcherError
from .compile import compile_rules
from .compile_read import item_reader_sql
from .model import RuleSet
from .parse import RulesError, parse_rules


class RulesApplyError(DreamcatcherError):
    """Rules that cannot take effect where they were asked to (a frame already merged)."""


def default_source() -> str:
    """The text of the package's default rules file."""
    return resources.files("dreamcatcher_pg.rules").joinpath("default.toml").read_text(encoding="utf-8")


def default_rules() -> RuleSet:
    return parse_rules(default_source(), "default.toml")


async def install_rule_set(conn: asyncpg.Connection, rules: RuleSet, *, builtin: bool = False) -> bool:
    """Create the rule set's functions and row unless it is there; True when it was new."""
    if await conn.fetchval(query("rules_known"), rules.id):
        return False
    await conn.execute("SET LOCAL standard_conforming_strings = on")  # what sqltext.lit relies on
    await conn.execute(compile_rules(rules))
    await conn.execute(
        query("rules_insert"), rules.id, rules.tag, rules.source, rules.normalized_json(), builtin
    )
    return True


async def install_default(conn: asyncpg.Connection) -> str:
    """Install the default rule set, make it the default; returns its id. In a transaction."""
    rules = default_rules()
    await install_rule_set(conn, rules, builtin=True)
    await install_item_readers(conn)
    await conn.execute(query("rules_set_default"), rules.id)
    await conn.execute(query("rules_backfill_frames"), rules.id)
    return rules.id


async def install_item_readers(conn: asyncpg.Connection) -> int:
    """Give every rule set installed before item readers existed its item reader (blame reads
    the log with it); returns how many. A source that no longer compiles to its id is left."""
    made = 0
    for row in await conn.fetch(query("rules_without_item_reader")):
        try:
            rules = parse_rules(row["source"], "rule_sets")
        except RulesError:
            continue
        if rules.id == row["id"]:
            await conn.execute("SET LOCAL standard_conforming_strings = on")
            await conn.execute(item_reader_sql(rules))
            made += 1
    return made


@dataclass(frozen=True)
class ApplyResult:
    world: str
    rule_set: str
    from_frame: int
    changed: bool  # False: these rules were already in effect there

    def to_dict(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "rule_set": self.rule_set,
            "from_frame": self.from_frame,
            "changed": self.changed,
        }


async def apply_rules(
    conn_or_dsn: ConnOrDsn, world: str, rules: RuleSet, *, from_frame: int | None = None
) -> ApplyResult:
    """Merge ``world``'s frames from ``from_frame`` on (default: the first not yet merged or
    claimed) with ``rules``. One transaction; the world's merges wait for it."""
    async with connected(conn_or_dsn) as conn, transaction(conn, isolation="read_committed"):
        await conn.execute(query("rules_lock_world"), world)
        horizon = await conn.fetchval(query("rules_world_horizon"), world)
        first_free = 0 if horizon is None else int(horizon) + 1
        if from_frame is None:
            from_frame = first_free
        elif await conn.fetchval(query("rules_at"), world, from_frame) == rules.id:
            return ApplyResult(world, rules.id, from_frame, changed=False)
        elif from_frame < first_free:
            raise RulesApplyError(
                f"world {world!r}: frame {from_frame} is already merged (or being merged); rules never "
                f"rewrite merged history: use --from-frame {first_free} or later, "
                "or replay the log into a new world"
            )
        if from_frame < 0:
            raise RulesApplyError("from_frame must be 0 or more")
        if await conn.fetchval(query("rules_at"), world, from_frame) == rules.id:
            return ApplyResult(world, rules.id, from_frame, changed=False)
        await install_rule_set(conn, rules)
        await conn.execute(query("rules_put_world"), world, from_frame, rules.id)
    return ApplyResult(world, rules.id, from_frame, changed=True)


#: The rules files ``export-dir`` writes beside the delta files, and ``ingest`` applies.
RULES_FILE = re.compile(r"^rules-from-frame-(\d+)\.toml$")


def rules_file_name(from_frame: int) -> str:
    return f"rules-from-frame-{from_frame}.toml"


def _rules_files(directory: Path) -> list[tuple[int, RuleSet]]:
    found = sorted(
        (int(m.group(1)), p) for p in directory.iterdir() if (m := RULES_FILE.match(p.name)) and p.is_file()
    )
    return [(n, parse_rules(p.read_text(encoding="utf-8"), str(p))) for n, p in found]


async def apply_directory_rules(conn: asyncpg.Connection, world: str, directory: Path) -> list[ApplyResult]:
    """Apply the ``rules-from-frame-N.toml`` files of a delta directory to ``world``, in frame order."""
    found = await asyncio.to_thread(_rules_files, directory)
    return [await apply_rules(conn, world, rules, from_frame=n) for n, rules in found]


async def export_directory_rules(
    conn: asyncpg.Connection, world: str, to_frame: int | None
) -> dict[str, str]:
    """The rules files of ``world`` for ``export-dir`` (file name -> TOML): one per frame from which
    other rules merged (or will merge) it; none when every frame is the database's default's."""
    rows = await conn.fetch(query("export_dir_rules"), world, to_frame)
    return {rules_file_name(int(r["from_frame"])): str(r["source"]) for r in rows}


@dataclass(frozen=True)
class RuleVersion:
    from_frame: int | None  # None: the database's default, for frames before any version
    rule_set: str
    source: str
    kinds: list[str]
    builtin: bool


async def show_rules(conn_or_dsn: ConnOrDsn, world: str) -> list[RuleVersion]:
    """The default rule set, then the world's rule versions by frame."""
    async with connected(conn_or_dsn) as conn:
        rows = await conn.fetch(query("rules_of_world"), world)
    return [
        RuleVersion(
            r["from_frame"],
            r["rule_set"],
            r["source"],
            [k["name"] for k in orjson.loads(r["normalized"])["kinds"]],
            r["builtin"],
        )
        for r in rows
    ]
