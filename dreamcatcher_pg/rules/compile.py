"""Compile a :class:`~.model.RuleSet` to SQL: its readers and its merge function.

:func:`compile_rules` returns one script of ``CREATE OR REPLACE FUNCTION`` statements, all named
after the rule set's hash, so installing a rule set twice, or two worlds sharing one, is a no-op.
The merge statement's steps are laid out as the hand-written merge had them (see
:mod:`.compile_merge` for the families); a step a rule set does not need is left out.
"""

from __future__ import annotations

from .compile_merge import accum_step, contents_step, derived_step, family_step, merge_name
from .compile_read import item_reader_sql, reader_name, reader_sql
from .model import Kind, RuleSet
from .sqltext import as_list, dollar_quote, int_list, lit

SETTINGS = (
    # JIT compiles for seconds on plans it cannot estimate; a merge never gains from it
    "SET jit = off\n"
    # sorts of a big frame stay in memory; memoizing per-item JSON functions never hits
    "SET work_mem = '64MB'\nSET enable_memoize = off\n"
    # the cost of a merge must follow the frame's changes, not the size of the state: look
    # entities up through their indexes even when the statistics are stale
    "SET enable_seqscan = off\n"
)


def _rank_case(rules: RuleSet) -> str:
    arms = " ".join(f"WHEN {lit(key)} THEN {i + 1}" for i, (key, _, _) in enumerate(rules.ranks()))
    return f"CASE kk.key {arms} END"


def _ranks_of(rules: RuleSet, kind: Kind, deletes: bool | None = None) -> list[int]:
    return [
        i + 1 for i, (_, k, d) in enumerate(rules.ranks()) if k is kind and (deletes is None or d == deletes)
    ]


def _items(rules: RuleSet, with_del: bool) -> str:
    arms = []
    for kind in rules.kinds:
        if kind.derived is not None:
            continue
        fn = reader_name(rules, kind)
        call = (
            f"{fn}(e.item, e.frame, e.stream_id, e.utc, e.pos)" if kind.merge == "append" else f"{fn}(e.item)"
        )
        dels = _ranks_of(rules, kind, True)
        del_col = (f", e.rank IN ({int_list(dels)}) AS del" if dels else ", false AS del") if with_del else ""
        arms.append(
            f"SELECT e.*, r.*{del_col} FROM e, {call} r WHERE e.rank IN ({int_list(_ranks_of(rules, kind))})"
        )
    arms.append(
        f"SELECT e.*, 'unmerged', e.key, NULL, NULL{', false' if with_del else ''} "
        "FROM e WHERE e.rank IS NULL"
    )
    return "\n              UNION ALL ".join(arms)


def _tally_count(rules: RuleSet) -> str:
    fields = {k.tally for k in rules.kinds if k.tally is not None}
    field = lit(fields.pop()) if len(fields) == 1 else None
    if field is None and fields:
        arms = " ".join(
            f"WHEN i.rank IN ({int_list(_ranks_of(rules, k))}) "
            f"THEN dreamcatcher.jint(i.item -> {lit(k.tally)})"
            for k in rules.kinds
            if k.tally is not None
        )
        other = f"CASE {arms} END"
    else:
        other = f"dreamcatcher.jint(i.item -> {field or lit('count')})"
    return f"CASE WHEN jsonb_typeof(i.item) = 'number' THEN dreamcatcher.jint(i.item) ELSE {other} END"


def _steps(rules: RuleSet) -> tuple[list[str], list[str]]:
    """The merge steps (CTEs) and the names of the ones whose rows are changes."""
    kinds = [k for k in rules.kinds if k.derived is None]
    sources = {k.derived.source for k in rules.kinds if k.derived is not None}
    step_of: dict[str, str] = {}
    steps: list[str] = []
    lww = [k for k in kinds if k.merge == "lww"]
    first = [k for k in kinds if k.merge == "first" and not k.content_key]
    content = [k for k in kinds if k.content_key]
    if lww:
        steps.append(
            family_step("upserted", lww, first=False, materialized=any(k.name in sources for k in lww))
        )
        step_of.update((k.name, "upserted") for k in lww)
    if first:
        steps.append(family_step("appended", first, first=True, materialized=True))
        step_of.update((k.name, "appended") for k in first)
    for n, k in enumerate((k for k in kinds if k.merge in ("sum", "set")), start=1):
        steps.append(accum_step(f"accum_{n}", k, materialized=k.name in sources))
        step_of[k.name] = f"accum_{n}"
    if content:
        steps.append(contents_step(content))
    names = [s.split(" AS ", 1)[0] for s in steps]
    for n, k in enumerate((k for k in rules.kinds if k.derived is not None), start=1):
        assert k.derived is not None
        source = rules.kind(k.derived.source)
        steps.append(derived_step(f"derived_{n}", k, step_of[source.name], bool(source.delete)))
        names.append(f"derived_{n}")
    return steps, names


def merge_sql(rules: RuleSet) -> str:
    """The CREATE FUNCTION of the rule set's merge."""
    with_del = any(k.delete for k in rules.kinds)
    append = [k for k in rules.kinds if k.merge == "append"]
    steps, names = _steps(rules)
    unions = [f"SELECT * FROM {n}" for n in names]
    if append:
        kinds = "(" + ", ".join(lit(k.name) for k in append) + ")"
        unions.append(
            "SELECT i.kind, i.ekey, NULL::jsonb AS old, i.data AS new, p_frame AS first_frame, "
            "NULL::tid AS old_ctid "
            "FROM items i "
            f"WHERE i.kind IN {kinds}"
        )
    changes = "\n        UNION ALL ".join(unions)
    ends = (
        "    ended AS (\n"
        "        INSERT INTO dreamcatcher.entity_ends (world, frame, kind, ekey)\n"
        "        SELECT p_world, p_frame, c.kind, c.ekey FROM changes c WHERE c.new IS NULL\n"
        "        RETURNING 1\n"
        "    ),\n"
        if with_del
        else ""
    )
    ended_stat = "\n               'ended', (SELECT count(*) FROM ended)," if with_del else ""
    body = f"""
BEGIN
    WITH
    e AS MATERIALIZED (
        SELECT d.frame, d.utc, d.stream_id COLLATE "C" AS stream_id, k.rank, x.pos, k.key, x.item
        FROM dreamcatcher.frame_deltas(p_world, p_frame) d
        CROSS JOIN LATERAL (
            SELECT kk.key, r.rank,
                   CASE WHEN r.rank IS NULL THEN '[null]'::jsonb ELSE d.payload -> kk.key END AS v
            FROM jsonb_object_keys(d.payload) AS kk(key)
            CROSS JOIN LATERAL (SELECT {_rank_case(rules)} AS rank OFFSET 0) r
            WHERE NOT dreamcatcher.is_meta_key(kk.key)
            OFFSET 0) k
        CROSS JOIN LATERAL jsonb_array_elements({as_list("k.v")}) WITH ORDINALITY AS x(item, pos)
    ),
    items AS MATERIALIZED (
        SELECT x.frame, x.utc, x.stream_id, x.rank, x.pos, x.key,
               CASE WHEN x.reason IS NOT NULL OR x.kind = 'tally' THEN x.item END AS item,
               x.kind, x.ekey, x.data, x.reason{", x.del" if with_del else ""}
        FROM ({_items(rules, with_del)}) x
    ),
    quarantined AS (
        INSERT INTO dreamcatcher.quarantine_log
            (world, frame, stream_id, utc, key, position, reason, item, merged_in)
        SELECT p_world, q.frame, q.stream_id, q.utc, q.key, q.pos,
               CASE WHEN q.n <= 100 THEN q.reason
                    ELSE format('%s more unreadable items of this delta are not listed one by one '
                                '(the first of them: key %s, position %s: %s); the delta is in the log',
                                q.total - 100, q.key, q.pos, q.reason) END,
               CASE WHEN q.n <= 100 THEN q.item END, p_frame
        FROM (SELECT i.frame, i.utc, i.stream_id, i.rank, i.pos, i.key, i.reason, i.item,
                     row_number() OVER (PARTITION BY i.frame, i.utc, i.stream_id ORDER BY i.rank, i.pos) AS n,
                     count(*) OVER (PARTITION BY i.frame, i.utc, i.stream_id) AS total
              FROM items i WHERE i.reason IS NOT NULL) q
        WHERE q.n <= 101
        ORDER BY q.frame, q.utc, q.stream_id, q.rank, q.pos
    ),
    {"".join(step + "," + chr(10) + "    " for step in steps)}changes AS MATERIALIZED (
        {changes}
    ),
    closed AS (
        UPDATE dreamcatcher.entity_versions SET valid_to = p_frame
         WHERE ctid = ANY (ARRAY(SELECT c.old_ctid FROM changes c WHERE c.old_ctid IS NOT NULL))
        RETURNING 1
    ),
{ends}    written AS (
        INSERT INTO dreamcatcher.entity_versions (world, kind, ekey, data, first_frame, valid_from)
        SELECT p_world, c.kind, c.ekey, c.new, c.first_frame, p_frame FROM changes c
        WHERE (SELECT count(*) FROM closed) >= 0{" AND c.new IS NOT NULL" if with_del else ""}
        RETURNING 1
    )
    SELECT jsonb_build_object(
               'deltas', p_deltas,
               'items', (SELECT count(*) FROM items i WHERE i.kind <> 'unmerged'),
               'quarantined', (SELECT count(*) FROM items i WHERE i.reason IS NOT NULL),
               'changes', (SELECT count(*) FROM written),{ended_stat}
               'tallies', (SELECT count(*) FROM items i WHERE i.kind = 'tally'),
               'tally_count', (SELECT coalesce(sum({_tally_count(rules)}), 0)
                               FROM items i WHERE i.kind = 'tally'),
               'deferred', (SELECT count(*) FROM dreamcatcher.deferred_log x
                            WHERE x.world = p_world AND x.merged_in = p_frame),
               'unmerged_keys', coalesce((SELECT jsonb_object_agg(k.key, k.n)
                                          FROM (SELECT i.key, count(*) AS n FROM items i
                                                WHERE i.kind = 'unmerged' GROUP BY i.key) k), '{{}}'::jsonb)),
           (SELECT coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.new)), 0)
                   - coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.old))
                                  FILTER (WHERE c.old IS NOT NULL), 0)
            FROM changes c)
      INTO stats, acc;
END
"""
    return (
        f"CREATE OR REPLACE FUNCTION {merge_name(rules)}(\n"
        "    p_world text, p_frame bigint, p_deltas bigint, OUT stats jsonb, OUT acc numeric)\n"
        f"LANGUAGE plpgsql\n{SETTINGS}AS {dollar_quote(body, rules.tag)};\n"
    )


def compile_rules(rules: RuleSet) -> str:
    """Every function of the rule set, as one script."""
    readers = [reader_sql(rules, k) for k in rules.kinds if k.derived is None]
    return "\n".join([*readers, item_reader_sql(rules), merge_sql(rules)])
