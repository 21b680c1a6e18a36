"""A rule set's merge: one plpgsql function holding one statement of CTEs, set-based.

``rules_<tag>_merge(world, frame, deltas)`` reads the frame's deltas, explodes them into items,
reads every item with its kind's reader (one ``UNION ALL`` arm per kind, no per-item dispatch),
quarantines the unreadable ones, merges each family of kinds in one grouping pass, closes the
changed entities' current versions and writes the new ones, and returns the frame's stats and
the change of the state fingerprint. ``dreamcatcher.merge_frame`` calls it and does the rest
(frame status, late deltas, the running hash).

Every current-version lookup is a ``LATERAL ... LIMIT 1`` probe of ``entity_versions_current``:
the cost of a merge follows the frame, not the size of the state. An entity with more than 64
items in one frame is folded with ``jsonb_fold_many`` (linear) instead of ``jsonb_fold``.
"""

from __future__ import annotations

from .model import Kind, RuleSet
from .sqltext import as_list, fn_name, lit, lit_array

ORDER = "w.frame, w.utc, w.stream_id, w.rank, w.pos"
ORDER_DESC = "w.frame DESC, w.utc DESC, w.stream_id DESC, w.rank DESC, w.pos DESC"
CURRENT = (
    "LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c\n"
    "                       WHERE c.world = p_world AND c.kind = {kind} AND c.ekey = {ekey}\n"
    "                         AND c.valid_to IS NULL LIMIT 1) v ON true"
)


def merge_name(rules: RuleSet) -> str:
    return fn_name(rules.tag, "merge")


def _kinds_in(kinds: list[Kind]) -> str:
    return "(" + ", ".join(lit(k.name) for k in kinds) + ")"


def _has_deletes(kinds: list[Kind]) -> bool:
    return any(k.delete for k in kinds)


def _w(kinds: list[Kind], deletes: bool) -> str:
    """The family's readable items with n (their entity's live item count), and with deletions:
    live (after the entity's last deletion of the frame), last_del and last_seq."""
    where = f"i.kind IN {_kinds_in(kinds)} AND i.reason IS NULL"
    if not deletes:
        return f"(SELECT i.*, count(*) OVER (PARTITION BY i.kind, i.ekey) AS n FROM items i WHERE {where}) w"
    return (
        "(SELECT s.*, count(*) FILTER (WHERE s.live) OVER (PARTITION BY s.kind, s.ekey) AS n\n"
        "  FROM (SELECT r.*, NOT r.del AND r.seq > coalesce(r.last_del, 0) AS live\n"
        "        FROM (SELECT q.*,\n"
        "                     max(q.seq) FILTER (WHERE q.del)\n"
        "                         OVER (PARTITION BY q.kind, q.ekey) AS last_del,\n"
        "                     max(q.seq) OVER (PARTITION BY q.kind, q.ekey) AS last_seq\n"
        "              FROM (SELECT i.*, row_number() OVER (\n"
        "                        PARTITION BY i.kind, i.ekey\n"
        "                        ORDER BY i.frame, i.utc, i.stream_id, i.rank, i.pos) AS seq\n"
        f"                    FROM items i WHERE {where}) q) r) s) w"
    )


def _folds(order: str, deletes: bool, strip: list[str]) -> str:
    data = f"w.data - {lit_array(strip)}" if strip else "w.data"
    live = "w.live AND " if deletes else ""
    head = (
        "max(w.n) AS n, bool_or(w.last_del IS NOT NULL) AS reset,\n"
        "       bool_or(coalesce(w.last_del = w.last_seq, false)) AS ended"
        if deletes
        else "count(*) AS n, false AS reset, false AS ended"
    )
    return (
        f"{head},\n"
        f"       dreamcatcher.jsonb_fold({data} ORDER BY {order}) FILTER (WHERE {live}w.n <= 64) AS small,\n"
        f"       jsonb_agg({data} ORDER BY {order}) FILTER (WHERE {live}w.n > 64) AS many"
    )


def _patch() -> str:
    return (
        "CASE WHEN g.n <= 64 THEN coalesce(g.small, '{}'::jsonb) "
        "ELSE dreamcatcher.jsonb_fold_many(g.many) END"
    )


def family_step(name: str, kinds: list[Kind], first: bool, materialized: bool) -> str:
    """lww (each field: the last write wins) or first (the first write of each field wins, a
    later one may only add fields still missing) over the current version."""
    deletes = _has_deletes(kinds)
    folds = _folds(ORDER_DESC if first else ORDER, deletes, [])
    base = (
        "CASE WHEN p.reset THEN '{}'::jsonb ELSE coalesce(v.data, '{}'::jsonb) END"
        if deletes
        else "coalesce(v.data, '{}'::jsonb)"
    )
    new = f"p.patch || {base}" if first else f"{base} || p.patch"
    if deletes:
        new_col = f"CASE WHEN p.ended THEN NULL ELSE {new} END"
        first_frame = "CASE WHEN p.reset THEN p_frame ELSE coalesce(v.first_frame, p_frame) END"
        where = f"(p.ended AND v.data IS NOT NULL) OR (NOT p.ended AND (v.data IS NULL OR {new} <> v.data))"
    else:
        new_col, first_frame = new, "coalesce(v.first_frame, p_frame)"
        where = f"v.data IS NULL OR {'p.patch || v.data' if first else 'v.data || p.patch'} <> v.data"
    return (
        f"{name} AS {'MATERIALIZED ' if materialized else ''}(\n"
        f"    SELECT p.kind, p.ekey, v.data AS old, {new_col} AS new,\n"
        f"           {first_frame} AS first_frame, v.ctid AS old_ctid\n"
        f"    FROM (SELECT g.kind, g.ekey, g.reset, g.ended, {_patch()} AS patch\n"
        f"          FROM (SELECT w.kind, w.ekey, {folds}\n"
        f"                FROM {_w(kinds, deletes)}\n"
        "                GROUP BY w.kind, w.ekey) g) p\n"
        f"    {CURRENT.format(kind='p.kind', ekey='p.ekey')}\n"
        f"    WHERE {where}\n"
        ")"
    )


def accum_step(name: str, kind: Kind, materialized: bool) -> str:
    """sum / set: the listed fields add up / are unioned; the other fields last-write-wins."""
    deletes = _has_deletes([kind])
    live = "w.live" if deletes else "true"
    aggs = [_folds(ORDER, deletes, list(kind.fields))]
    parts = []
    for j, f in enumerate(kind.fields, start=1):
        q = lit(f)
        aggs.append(f"bool_or(w.data ? {q}) FILTER (WHERE {live}) AS h{j}")
        if kind.merge == "sum":
            aggs.append(f"sum((w.data ->> {q})::numeric) FILTER (WHERE {live}) AS s{j}")
            value = f"coalesce((b.base ->> {q})::numeric, 0) + coalesce(p.s{j}, 0)"
        else:
            aggs.append(f"jsonb_agg(w.data -> {q}) FILTER (WHERE {live} AND w.data ? {q}) AS s{j}")
            value = (
                "(SELECT coalesce(jsonb_agg(u.t::jsonb ORDER BY u.t COLLATE \"C\"), '[]'::jsonb)\n"
                "              FROM (SELECT DISTINCT x.e::text AS t\n"
                f"                    FROM jsonb_array_elements(jsonb_build_array(b.base -> {q})"
                f" || coalesce(p.s{j}, '[]'::jsonb)) AS r(v)\n"
                "                    CROSS JOIN LATERAL\n"
                f"                        jsonb_array_elements({as_list('r.v')}) AS x(e)) u)"
            )
        parts.append(
            f"CASE WHEN coalesce(p.h{j}, false) OR b.base ? {q} THEN jsonb_build_object({q}, {value}) "
            "ELSE '{}'::jsonb END"
        )
    base = "CASE WHEN p.reset THEN '{}'::jsonb ELSE coalesce(v.data, '{}'::jsonb) END"
    new = " || ".join(["(b.base || p.patch)", *parts])
    if deletes:
        where = "(p.ended AND v.data IS NOT NULL) OR (NOT p.ended AND n.data IS DISTINCT FROM v.data)"
        first_frame = "CASE WHEN p.reset THEN p_frame ELSE coalesce(v.first_frame, p_frame) END"
    else:
        where, first_frame = "n.data IS DISTINCT FROM v.data", "coalesce(v.first_frame, p_frame)"
    aggs_sql = ",\n                       ".join(aggs)
    return (
        f"{name} AS {'MATERIALIZED ' if materialized else ''}(\n"
        "    SELECT p.kind, p.ekey, v.data AS old, n.data AS new,\n"
        f"           {first_frame} AS first_frame, v.ctid AS old_ctid\n"
        f"    FROM (SELECT g.*, {_patch()} AS patch\n"
        f"          FROM (SELECT w.kind, w.ekey, {aggs_sql}\n"
        f"                FROM {_w([kind], deletes)}\n"
        "                GROUP BY w.kind, w.ekey) g) p\n"
        f"    {CURRENT.format(kind='p.kind', ekey='p.ekey')}\n"
        f"    CROSS JOIN LATERAL (SELECT {base} AS base OFFSET 0) b\n"
        f"    CROSS JOIN LATERAL (SELECT CASE WHEN p.ended THEN NULL ELSE {new} END AS data) n\n"
        f"    WHERE {where}\n"
        ")"
    )


def contents_step(kinds: list[Kind]) -> str:
    """key = "content": every copy is identical, so an entity is written once, when new."""
    return (
        "contents AS (\n"
        "    SELECT g.kind, g.ekey, NULL::jsonb AS old, g.data AS new,\n"
        "           p_frame AS first_frame, NULL::tid AS old_ctid\n"
        "    FROM (SELECT DISTINCT ON (i.kind, i.ekey) i.kind, i.ekey, i.data FROM items i\n"
        f"          WHERE i.kind IN {_kinds_in(kinds)} AND i.reason IS NULL ORDER BY i.kind, i.ekey) g\n"
        "    WHERE NOT EXISTS (SELECT 1 FROM dreamcatcher.entity_versions c\n"
        "                      WHERE c.world = p_world AND c.kind = g.kind AND c.ekey = g.ekey\n"
        "                        AND c.valid_to IS NULL)\n"
        ")"
    )


def derived_step(name: str, kind: Kind, source_step: str, deletes: bool) -> str:
    """Per group value: the count of source entities created, the target (last write wins
    among the frame's items, else the stored one, else the default) and the frame it compiled."""
    d = kind.derived
    assert d is not None
    grp, src, count, me = lit(d.group), lit(d.source), lit(d.count), lit(kind.name)
    target_name = lit(d.target or "target")
    not_del = " AND NOT i.del" if deletes else ""
    target_item = f"dreamcatcher.jint(i.data -> {lit(d.target)})" if d.target else "NULL::bigint"
    return (
        f"{name} AS (\n"
        f"    SELECT {me}::text AS kind, b.grp AS ekey, v.data AS old, n.data AS new,\n"
        "           coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid\n"
        "    FROM (SELECT u.grp, sum(u.new_one) AS new_count,\n"
        f"                 (array_agg(u.target ORDER BY {ORDER_DESC.replace('w.', 'u.')})\n"
        "                      FILTER (WHERE u.target IS NOT NULL))[1] AS target\n"
        f"          FROM (SELECT c.new ->> {grp} AS grp, 1 AS new_one, NULL::bigint AS target,\n"
        "                       NULL::bigint AS frame, NULL::timestamptz AS utc,\n"
        '                       NULL::text COLLATE "C" AS stream_id,\n'
        "                       NULL::integer AS rank, NULL::bigint AS pos\n"
        f"                FROM {source_step} c WHERE c.kind = {src} AND c.old IS NULL"
        f"{' AND c.new IS NOT NULL' if deletes else ''}\n"
        "                UNION ALL\n"
        f"                SELECT i.data ->> {grp}, 0, {target_item},\n"
        "                       i.frame, i.utc, i.stream_id, i.rank, i.pos\n"
        f"                FROM items i WHERE i.kind = {src} AND i.reason IS NULL{not_del}) u\n"
        "          GROUP BY u.grp) b\n"
        f"    {CURRENT.format(kind=me, ekey='b.grp')}\n"
        "    CROSS JOIN LATERAL (\n"
        f"        SELECT coalesce(b.target, (v.data ->> {target_name})::bigint,\n"
        f"                        {int(d.target_default)}) AS target,\n"
        f"               coalesce((v.data ->> {count})::bigint, 0) + b.new_count AS n\n"
        "    ) t\n"
        "    CROSS JOIN LATERAL (\n"
        f"        SELECT jsonb_build_object({grp}, b.grp, {target_name}, t.target, {count}, t.n,\n"
        "                   'compiled_frame', coalesce((v.data ->> 'compiled_frame')::bigint,\n"
        "                                              CASE WHEN t.n >= t.target THEN p_frame END)) AS data\n"
        "    ) n\n"
        "    WHERE v.data IS DISTINCT FROM n.data\n"
        ")"
    )
