"""Quoting for generated SQL: every name a rules file supplies enters SQL as a literal.

Generated functions are applied with ``standard_conforming_strings = on`` (the default since
PostgreSQL 9.1, and set by :mod:`.store` for the applying transaction), so a literal is the
text between single quotes with each quote doubled; NUL, which PostgreSQL text cannot hold,
is refused. Identifiers are never taken from a rules file: function names are made from the
rule set's content hash (hex digits).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_HEX = re.compile(r"^[0-9a-f]{16}$")


def lit(value: str) -> str:
    """``value`` as a SQL string literal."""
    if "\x00" in value:
        raise ValueError("a rules file may not contain NUL characters")
    return "'" + value.replace("'", "''") + "'"


def lit_array(values: Iterable[str]) -> str:
    """A ``text[]`` of literals."""
    return "ARRAY[" + ", ".join(lit(v) for v in values) + "]::text[]"


def int_list(values: Iterable[int]) -> str:
    return ", ".join(str(int(v)) for v in values)


def fn_name(tag: str, suffix: str) -> str:
    """The qualified name of a generated function of the rule set ``tag`` (16 hex digits)."""
    if not _HEX.match(tag) or not re.match(r"^[a-z0-9_]+$", suffix):
        raise ValueError(f"not a generated function name: {tag!r} {suffix!r}")
    return f"dreamcatcher.rules_{tag}_{suffix}"


def dollar_quote(body: str, tag: str) -> str:
    """``body`` between dollar quotes whose tag holds the rule set's hash."""
    quote = f"$dc_{tag}$"
    if quote in body:  # it would have to contain the hash of itself
        raise ValueError("a rules file may not contain its own dollar-quote tag")
    return f"{quote}{body}{quote}"


def as_list(expr: str) -> str:
    """``dreamcatcher.jlist(expr)`` written out: an array as it is, null as ``[]``, anything else
    as a one-element array. ``expr`` must be a column reference (it is read three times). As an
    argument of a set-returning function in FROM, the SQL function is not inlined by PostgreSQL:
    written out, the explode step of a 10,000-delta merge took 34-51 ms instead of 63-97."""
    return (
        f"CASE jsonb_typeof({expr}) WHEN 'array' THEN {expr} WHEN 'null' THEN '[]'::jsonb "
        f"ELSE jsonb_build_array({expr}) END"
    )
