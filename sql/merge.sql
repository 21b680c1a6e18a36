-- dreamcatcher_pg merge: the helpers every compiled rule set merges with.
--
-- A frame is merged by dreamcatcher.merge_frame(world, frame) (sql/rules.sql) in the
-- caller's transaction, with the rule set in effect for the frame. Deltas apply in
-- ascending (frame, utc, stream_id, rule, position) order; stream_id compares in the
-- "C" collation so the order is the same in every database. Nothing here depends on insert ids, arrival order or time.

-- ---------------------------------------------------------------------------
-- Tolerant readers for messy JSON.
-- ---------------------------------------------------------------------------

-- A scalar as text: strings as themselves, numbers and booleans as written.
CREATE OR REPLACE FUNCTION dreamcatcher.jtext(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
               WHEN 'string' THEN nullif(btrim(j #>> '{}'), '')
               WHEN 'number' THEN j::text
               ELSE NULL
           END
$$;

-- An integer (a JSON integer or a string of digits) that fits a bigint, else NULL.
CREATE OR REPLACE FUNCTION dreamcatcher.jint(j jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
               -- an integral number of at most 18 digits (1.0 is not an integer here, 1e3 is)
               WHEN jsonb_typeof(j) = 'number'
                   THEN CASE WHEN scale(j::numeric) = 0 AND abs(j::numeric) < 1e18 THEN j::numeric::bigint END
               WHEN jsonb_typeof(j) = 'string' AND btrim(j #>> '{}') ~ '^-?[0-9]{1,18}$'
                   THEN (btrim(j #>> '{}'))::bigint
               ELSE NULL
           END
$$;

-- Rename the first alias present (and not null) to its canonical name, unless the
-- canonical name already holds a value (then nothing is renamed and nothing is lost).
CREATE OR REPLACE FUNCTION dreamcatcher.jrename(j jsonb, canon text, aliases text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    a text;
BEGIN
    IF jsonb_typeof(j) <> 'object' OR NOT (j ?| aliases)
       OR (j ? canon AND jsonb_typeof(j -> canon) <> 'null') THEN
        RETURN j;
    END IF;
    FOREACH a IN ARRAY aliases LOOP
        IF jsonb_typeof(j -> a) <> 'null' THEN
            RETURN (j - a) || jsonb_build_object(canon, j -> a);
        END IF;
    END LOOP;
    RETURN j;
END $$;

-- The 64-bit content hash of one entity version (kind, key, data).
CREATE OR REPLACE FUNCTION dreamcatcher.entity_hash(p_kind text, p_ekey text, p_data jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (('x' || left(md5(p_kind || E'\x1f' || p_ekey || E'\x1f' || p_data::text), 16))::bit(64)::bigint)::numeric
$$;

-- The printable state hash for an accumulator (a sum of entity hashes mod 2^64).
CREATE OR REPLACE FUNCTION dreamcatcher.state_hash_text(p_acc numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lpad(to_hex((CASE WHEN m >= 9223372036854775808 THEN m - 18446744073709551616 ELSE m END)::bigint), 16, '0')
    FROM (SELECT mod(mod(p_acc, 18446744073709551616) + 18446744073709551616, 18446744073709551616) AS m) s
$$;

-- Fold JSON objects left to right with ||: a later object's top-level fields win. Ordered by
-- apply order this is "each field last-write-wins"; ordered backwards, "first write wins".
DO $$
BEGIN
    IF to_regprocedure('dreamcatcher.jsonb_fold(jsonb)') IS NULL THEN
        CREATE AGGREGATE dreamcatcher.jsonb_fold(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb, INITCOND = '{}');
    END IF;
END $$;

-- The fold of a JSON array of objects, for an entity with many items in one frame: the same
-- result as jsonb_fold over the elements in order (a later element's top-level fields win), in
-- time linear in the fields. jsonb_fold copies its growing result at every step: for one entity
-- given thousands of distinct fields in one frame that is quadratic (minutes for one delta).
-- jsonb_object_agg keeps the last value of a key given twice.
CREATE OR REPLACE FUNCTION dreamcatcher.jsonb_fold_many(p_objects jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(f.key, f.value ORDER BY a.o), '{}'::jsonb)
    FROM jsonb_array_elements(p_objects) WITH ORDINALITY AS a(d, o)
    CROSS JOIN LATERAL jsonb_each(a.d) AS f
$$;

-- ---------------------------------------------------------------------------
-- What every rule set's compiled merge (sql/rules.sql, dreamcatcher_pg/rules) reads with.
-- ---------------------------------------------------------------------------

-- Keys that describe the delta itself (its envelope: docs/design.md §6), not state: neither
-- merged nor counted.
CREATE OR REPLACE FUNCTION dreamcatcher.is_meta_key(p_key text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_key IN ('frame', 'stream_id', 'utc', '_meta', 'completed_at')
$$;

-- A rule key's value as a list of items: an array as itself, null as empty, anything else as
-- a list of one.
CREATE OR REPLACE FUNCTION dreamcatcher.jlist(j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j) WHEN 'array' THEN j WHEN 'null' THEN '[]'::jsonb ELSE jsonb_build_array(j) END
$$;

-- An entity key longer than an index entry can hold (~2.7 kB) would fail the whole frame,
-- forever: such an item is unreadable.
CREATE OR REPLACE FUNCTION dreamcatcher.long_key_reason(p_ekey text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length(p_ekey) > 1024 THEN 'entity key is longer than 1024 bytes' END
$$;

-- The deltas that a merge of `frame` takes: the frame's own (not late), plus
-- the late ones deferred into it.
CREATE OR REPLACE FUNCTION dreamcatcher.frame_deltas(p_world text, p_frame bigint)
RETURNS TABLE (frame bigint, stream_id text, utc timestamptz, payload jsonb)
LANGUAGE sql STABLE AS $$
    SELECT d.frame, d.stream_id, d.utc, d.payload
    FROM dreamcatcher.delta_log d
    WHERE d.world = p_world AND d.frame = p_frame AND NOT d.late
    UNION ALL
    SELECT d.frame, d.stream_id, d.utc, d.payload
    FROM dreamcatcher.deferred_log x
    JOIN dreamcatcher.delta_log d USING (world, frame, stream_id, utc)
    WHERE x.world = p_world AND x.merged_in = p_frame
$$;

-- The readers of the rules that were written by hand before rules were a declaration.
DROP FUNCTION IF EXISTS dreamcatcher.read_item(text, jsonb, bigint, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS dreamcatcher.read_post(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_agent(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_comment(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_reaction(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_chapter(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_observation(jsonb, bigint, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS dreamcatcher.rule_rank(text);
