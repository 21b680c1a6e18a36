"""Merge rules as data: a TOML declaration per world, compiled to set-based SQL.

A rules file has one ``[kinds.NAME]`` table per entity kind (docs/rules.md)::

    from dreamcatcher_pg.rules import apply_rules, load_rules

    rules = load_rules("sim.toml")            # RulesError lists every problem with its line
    await apply_rules(dsn, "sim", rules)      # from the first frame not merged yet
    await show_rules(dsn, "sim")              # the world's rule versions

A world without rules merges with :func:`default_rules` (``default.toml`` in this package).
"""

from .compile import compile_rules
from .model import Kind, RuleSet
from .parse import Problem, RulesError, load_rules, parse_rules
from .store import (
    ApplyResult,
    RulesApplyError,
    RuleVersion,
    apply_rules,
    default_rules,
    default_source,
    install_rule_set,
    show_rules,
)

__all__ = [
    "ApplyResult",
    "Kind",
    "Problem",
    "RuleSet",
    "RuleVersion",
    "RulesApplyError",
    "RulesError",
    "apply_rules",
    "compile_rules",
    "default_rules",
    "default_source",
    "install_rule_set",
    "load_rules",
    "parse_rules",
    "show_rules",
]
