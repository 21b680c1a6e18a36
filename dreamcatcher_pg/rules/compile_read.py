"""A kind's reader: one item of one delta key -> (kind, ekey, data, reason), as one SQL SELECT.

Each reader is a ``LANGUAGE sql IMMUTABLE`` function that the planner inlines into the merge
(no function call per item). Every value used more than once sits in an ``OFFSET 0`` subquery,
so it is computed once per item. What the declaration options mean here:

* key fields are read from their name, else from the first alias holding a readable value
  (``jtext``: a string or a number, as text; ``jint``: an integer or a string of digits);
* ``bare``: a bare string (text key) or integer / digit string (int key) is that key field;
* ``patterns``: a string matching a pattern gives the key fields of its groups (first match);
* ``tally``: an item that lacks its key and is a bare number or carries the tally field is
  counted, not stored (kind ``tally``);
* ``fallback = "content"``: an object without its key is keyed by its exact content;
* the data is the item with its aliases renamed (``jrename``: only when the canonical name
  holds nothing) or dropped (``drop_aliases``), then, unless ``key_in_data = false``, the key
  fields as read written over it.
"""

from __future__ import annotations

from .model import Kind, RuleSet
from .sqltext import dollar_quote, fn_name, lit, lit_array

_ENTITY = "TABLE (kind text, ekey text, data jsonb, reason text)"


def reader_name(rules: RuleSet, kind: Kind) -> str:
    return fn_name(rules.tag, f"read_{rules.kinds.index(kind) + 1}")


def _typed(kind: Kind, field: str, expr: str) -> str:
    return f"dreamcatcher.{'jint' if kind.key_type(field) == 'int' else 'jtext'}({expr})"


def _bare_cond(kind: Kind) -> str | None:
    if kind.bare is None:
        return None
    return "ty.t IN ('number', 'string')" if kind.key_type(kind.bare) == "int" else "ty.t = 'string'"


def _field_expr(kind: Kind, field: str) -> str:
    names = [field, *kind.aliases.get(field, ())]
    reads = [_typed(kind, field, f"p_item -> {lit(n)}") for n in names]
    obj = reads[0] if len(reads) == 1 else f"coalesce({', '.join(reads)})"
    arms = [f"WHEN ty.t = 'object' THEN {obj}"]
    for j, p in enumerate(kind.patterns, start=1):
        if field in p.fields:
            group = f"mx.m{j}[{p.fields.index(field) + 1}]"
            conv = (
                f"dreamcatcher.jint(to_jsonb({group}))"
                if kind.key_type(field) == "int"
                else f"nullif(btrim({group}), '')"
            )
            arms.append(f"WHEN mx.m{j} IS NOT NULL THEN {conv}")
        elif kind.bare == field:
            arms.append(f"WHEN mx.m{j} IS NOT NULL THEN NULL")  # the pattern, not the bare form
    bare = _bare_cond(kind)
    if bare is not None and kind.bare == field:
        arms.append(f"WHEN {bare} THEN {_typed(kind, field, 'p_item')}")
    return "CASE " + " ".join(arms) + " END"


def _renamed(kind: Kind) -> str:
    all_aliases = [a for names in kind.aliases.values() for a in names]
    if not all_aliases:
        return "p_item"
    if kind.drop_aliases:
        return f"(p_item - {lit_array(all_aliases)})"
    expr = "p_item"
    for field, names in kind.aliases.items():
        expr = f"dreamcatcher.jrename({expr}, {lit(field)}, {lit_array(names)})"
    # the usual shape, with no alias to fold, is read as it is
    return f"CASE WHEN p_item ?| {lit_array(all_aliases)} THEN {expr} ELSE p_item END"


def _base_data(kind: Kind) -> str:
    arms = [f"WHEN ty.t = 'object' THEN {_renamed(kind)}"]
    bare = _bare_cond(kind)
    if bare is not None and kind.bare is not None:
        arms.append(
            f"WHEN {bare} THEN jsonb_build_object({lit(kind.bare)}, {_typed(kind, kind.bare, 'p_item')})"
        )
    if kind.content_key:
        return f"CASE WHEN ty.t = 'object' THEN {_renamed(kind)} ELSE p_item END"
    return "CASE " + " ".join(arms) + " ELSE '{}'::jsonb END"


def _key_complete(kind: Kind) -> str:
    return " AND ".join(f"z.f{kind.key.index(f) + 1} IS NOT NULL" for f in kind.required) or "true"


def _key_text(kind: Kind) -> str:
    if len(kind.key) == 1:
        return "z.f1::text" if kind.key_type(kind.key[0]) == "int" else "z.f1"
    return "jsonb_build_array(" + ", ".join(f"z.f{i + 1}" for i in range(len(kind.key))) + ")::text"


def _ekey(kind: Kind) -> str:
    if kind.content_key:
        return "'content:' || md5(z.d::text)"
    if kind.fallback == "content":
        tag = f"{kind.key[0]}:" if len(kind.key) == 1 else "key:"
        return (
            f"CASE WHEN {_key_complete(kind)} THEN {lit(tag)} || {_key_text(kind)} "
            "ELSE 'content:' || md5(z.d::text) END"
        )
    return _key_text(kind)


def _data(kind: Kind) -> str:
    if not kind.key_in_data or kind.content_key:
        return "z.d"
    written = "jsonb_build_object(" + ", ".join(f"{lit(f)}, z.f{i + 1}" for i, f in enumerate(kind.key)) + ")"
    if kind.fallback == "content":
        return f"CASE WHEN {_key_complete(kind)} THEN z.d || {written} ELSE z.d END"
    return f"z.d || {written}"


def _checks(rules: RuleSet, kind: Kind) -> list[tuple[str, str]]:
    """(condition, reason) checked on an item whose key was read."""
    out: list[tuple[str, str]] = []
    if kind.merge == "sum":
        for f in kind.fields:
            out.append(
                (
                    f"jsonb_typeof(dd.data -> {lit(f)}) NOT IN ('number', 'null')",
                    f"{kind.name} {f} is not a number",
                )
            )
    for d in (k.derived for k in rules.kinds):
        if d is not None and d.source == kind.name and d.target is not None:
            t = lit(d.target)
            out.append(
                (
                    f"p_item ? {t} AND coalesce(dreamcatcher.jint(p_item -> {t}) < 1, true)",
                    f"{kind.name} {d.target} is not a positive integer",
                )
            )
    return out


def _reason(rules: RuleSet, kind: Kind) -> str:
    checks = " ".join(f"WHEN {c} THEN {lit(r)}" for c, r in _checks(rules, kind))
    single_int = len(kind.key) == 1 and kind.key_type(kind.key[0]) == "int"
    last = "NULL" if single_int or kind.content_key else "dreamcatcher.long_key_reason(k.ekey)"
    ok = f"CASE {checks} ELSE {last} END" if checks else last
    if kind.content_key:
        return f"CASE WHEN ty.t <> 'null' THEN {ok} ELSE {lit(kind.name + ' item is null')} END"
    arms = [f"WHEN {_key_complete(kind)} THEN {ok}"]
    if kind.fallback == "content":
        arms.append(f"WHEN ty.t = 'object' AND z.d <> '{{}}'::jsonb THEN {ok}")
    if kind.tally is not None:
        arms.append(f"WHEN ty.t = 'number' OR (ty.t = 'object' AND p_item ? {lit(kind.tally)}) THEN NULL")
    shape = ["ty.t <> 'object'"]
    what = "an object"
    bare = _bare_cond(kind)
    if bare is not None:
        shape.append(f"NOT ({bare})")
        what += f" or a bare {kind.bare}"
    if kind.patterns:
        shape.append("ty.t <> 'string'")
        what += " or a string of a known pattern"
    arms.append(f"WHEN {' AND '.join(shape)} THEN {lit(f'{kind.name} item is not {what}')}")
    if kind.fallback == "content":
        arms.append(f"ELSE {lit(f'{kind.name} has no readable {kind.key[0]} and no content')}")
    else:
        missing = ", ".join(
            f"CASE WHEN z.f{kind.key.index(f) + 1} IS NULL THEN {lit(f)} END" for f in kind.required
        )
        arms.append(f"ELSE {lit(f'{kind.name} has no readable ')} || concat_ws(', ', {missing})")
    return "CASE " + " ".join(arms) + " END"


def _keyed_reader(rules: RuleSet, kind: Kind) -> str:
    fields = [f"{_field_expr(kind, f)} AS f{i + 1}" for i, f in enumerate(kind.key)]
    ty = "SELECT jsonb_typeof(p_item) AS t"
    mx = ""
    if kind.patterns:
        ty += ", CASE WHEN jsonb_typeof(p_item) = 'string' THEN p_item #>> '{}' END AS s"
        ms = ", ".join(
            f"regexp_match(ty.s, {lit(p.match)}) AS m{j}" for j, p in enumerate(kind.patterns, start=1)
        )
        mx = f" CROSS JOIN LATERAL (SELECT {ms} OFFSET 0) mx"
    z = ", ".join(["ty.t", *fields, f"{_base_data(kind)} AS d"])
    kind_col = lit(kind.name) + "::text"
    if kind.tally is not None:
        kind_col = (
            f"CASE WHEN {_key_complete(kind)} THEN {lit(kind.name)} "
            f"WHEN ty.t = 'number' OR (ty.t = 'object' AND p_item ? {lit(kind.tally)}) THEN 'tally' "
            f"ELSE {lit(kind.name)} END"
        )
    data = "dd.data" if kind.merge == "sum" else _data(kind)
    dd = f" CROSS JOIN LATERAL (SELECT {_data(kind)} AS data OFFSET 0) dd" if kind.merge == "sum" else ""
    outer = f"{kind_col}, k.ekey, {data}, {_reason(rules, kind)}".replace("ty.t", "z.t")
    return (
        f"SELECT {outer}\n"
        f"    FROM (SELECT {z}\n"
        f"          FROM ({ty} OFFSET 0) ty{mx}\n"
        f"          OFFSET 0) z\n"
        f"    CROSS JOIN LATERAL (SELECT {_ekey(kind)} AS ekey OFFSET 0) k{dd}"
    )


def reader_sql(rules: RuleSet, kind: Kind) -> str:
    """The CREATE FUNCTION of ``kind``'s reader."""
    name = reader_name(rules, kind)
    if kind.merge == "append":
        # every item is kept, keyed by where it sits in the log
        # (trunc, not ::bigint: the same text for every utc, and no overflow whatever the utc)
        body = (
            f"SELECT {lit(kind.name)}::text, jsonb_build_array(p_frame, p_stream, "
            "trunc(extract(epoch FROM p_utc) * 1000000), p_pos)::text, p_item, NULL::text"
        )
        args = "p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint"
    else:
        body = _keyed_reader(rules, kind)
        args = "p_item jsonb"
    quoted = "\n    " + body + "\n"
    return (
        f"CREATE OR REPLACE FUNCTION {name}({args})\nRETURNS {_ENTITY}\n"
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE AS {dollar_quote(quoted, rules.tag)};\n"
    )


def item_reader_name(rules: RuleSet) -> str:
    return fn_name(rules.tag, "read_item")


def item_reader_sql(rules: RuleSet) -> str:
    """The CREATE FUNCTION of the rule set's item reader: one item of delta key ``p_key`` read as
    the merge reads it (the kind's reader), with the key's rank in the merge's apply order; no row
    for a key the rules do not read. Blame (the inspector) reads the log with it."""
    arms = []
    for rank, (key, kind, deletes) in enumerate(rules.ranks(), start=1):
        if deletes or kind.derived is not None:
            continue
        fn = reader_name(rules, kind)
        call = f"{fn}(p_item, p_frame, p_stream, p_utc, p_pos)" if kind.merge == "append" else f"{fn}(p_item)"
        arms.append(f"SELECT {rank}, r.* FROM {call} r WHERE p_key = {lit(key)}")
    body = (
        "\n    UNION ALL ".join(arms)
        or "SELECT NULL::integer, NULL::text, NULL::text, NULL::jsonb, NULL::text WHERE false"
    )
    quoted = "\n    " + body + "\n"
    return (
        f"CREATE OR REPLACE FUNCTION {item_reader_name(rules)}(\n"
        "    p_key text, p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)\n"
        "RETURNS TABLE (rank integer, kind text, ekey text, data jsonb, reason text)\n"
        f"LANGUAGE sql IMMUTABLE PARALLEL SAFE AS {dollar_quote(quoted, rules.tag)};\n"
    )
