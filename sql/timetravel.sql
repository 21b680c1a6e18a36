-- dreamcatcher_pg time travel: the state at a frame, and an index-driven diff.
-- Applied after merge.sql and before views.sql; safe to run twice.
--
-- The state right after frame F is every version with
--   valid_from <= F AND (valid_to IS NULL OR valid_to > F)
-- A btree on (world, kind, valid_from) answers that by reading every version that
-- started at or before F and throwing away the ones closed since: the cost grows with F.
-- The versions alive at F are an interval "stabbing" query, which the GiST index
-- entity_versions_history over [valid_from, valid_to) (schema.sql) answers in time that
-- follows the result, not the history. Current versions (valid_to IS NULL) are read
-- through entity_versions_current.

-- The kinds a world has entities of: a loose index scan (one probe per kind).
CREATE OR REPLACE FUNCTION dreamcatcher.world_kinds(p_world text)
RETURNS TABLE (kind text)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE k(kind) AS (
        SELECT min(v.kind) FROM dreamcatcher.entity_versions v WHERE v.world = p_world
        UNION ALL
        SELECT (SELECT min(v.kind) FROM dreamcatcher.entity_versions v
                WHERE v.world = p_world AND v.kind > k.kind)
        FROM k WHERE k.kind IS NOT NULL
    )
    SELECT k.kind FROM k WHERE k.kind IS NOT NULL
$$;

-- All entities of one kind as they were right after `frame` merged: the current versions
-- that already existed then, plus the closed versions whose [valid_from, valid_to) holds the
-- frame (found through the GiST index entity_versions_history), so the cost follows the
-- size of the answer, not the length of the history. `key` is the entity's key values as a
-- JSON array in the order its rules declare them (NULL for an append kind); `ekey` is the
-- same key as the merge writes it.
DO $$
BEGIN
    IF to_regprocedure('dreamcatcher.entities_at(text, text, bigint)') IS NOT NULL
       AND pg_get_function_result(to_regprocedure('dreamcatcher.entities_at(text, text, bigint)')) NOT LIKE '%key jsonb%' THEN
        DROP FUNCTION dreamcatcher.entities_at(text, text, bigint);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION dreamcatcher.entities_at(p_world text, p_kind text, p_frame bigint)
RETURNS TABLE (world text, kind text, ekey text, key jsonb, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT v.world, v.kind, v.ekey, dreamcatcher.decode_key(enc.e, v.ekey), v.data, v.first_frame, v.valid_from
    FROM (SELECT dreamcatcher.key_encoding(p_world, p_kind, p_frame) AS e) enc,
         LATERAL (SELECT c.* FROM dreamcatcher.entity_versions c
                  WHERE c.world = p_world AND c.kind = p_kind AND c.valid_to IS NULL AND c.valid_from <= p_frame
                  UNION ALL
                  SELECT c.* FROM dreamcatcher.entity_versions c
                  WHERE c.world = p_world AND c.kind = p_kind AND c.valid_to IS NOT NULL
                    AND int8range(c.valid_from, c.valid_to) @> p_frame) v
$$;

-- The current entities of one kind (same columns as entities_at).
CREATE OR REPLACE FUNCTION dreamcatcher.entities(p_world text, p_kind text)
RETURNS TABLE (world text, kind text, ekey text, key jsonb, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT v.world, v.kind, v.ekey, dreamcatcher.decode_key(enc.e, v.ekey), v.data, v.first_frame, v.valid_from
    FROM (SELECT dreamcatcher.key_encoding(p_world, p_kind, 9223372036854775807) AS e) enc,
         LATERAL (SELECT c.* FROM dreamcatcher.entity_versions c
                  WHERE c.world = p_world AND c.kind = p_kind AND c.valid_to IS NULL) v
$$;

-- One entity (kind, ekey) as it was right after `frame` merged: an index probe, whatever the history.
CREATE OR REPLACE FUNCTION dreamcatcher.entity_at(p_world text, p_kind text, p_ekey text, p_frame bigint)
RETURNS TABLE (world text, kind text, ekey text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT v.world, v.kind, v.ekey, v.data, v.first_frame, v.valid_from
    FROM dreamcatcher.entity_versions v
    WHERE v.world = p_world AND v.kind = p_kind AND v.ekey = p_ekey AND v.valid_from <= p_frame
      AND (v.valid_to IS NULL OR v.valid_to > p_frame)
    ORDER BY v.valid_from DESC
    LIMIT 1
$$;

-- The whole state of a world right after `frame`: every kind (or one, when
-- p_kind is given). Columns: kind, ekey, data, first_frame, last_frame.
CREATE OR REPLACE FUNCTION dreamcatcher.state_at(p_world text, p_frame bigint, p_kind text DEFAULT NULL)
RETURNS TABLE (kind text, ekey text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.kind, e.ekey, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.world_kinds(p_world) k
    CROSS JOIN LATERAL dreamcatcher.entities_at(p_world, k.kind, p_frame) e
    WHERE p_kind IS NULL OR k.kind = p_kind
$$;

-- Same rows as dreamcatcher.diff(world, a, b), in the same order, but it reads
-- only the entities that changed between the two frames: those with a version
-- that started after the earlier frame and at or before the later one, or that a
-- deletion ended then (entity_ends: otherwise a version closes only when its
-- successor starts in the same frame). Then one index probe per entity and side.
CREATE OR REPLACE FUNCTION dreamcatcher.entity_changes(p_world text, p_frame_a bigint, p_frame_b bigint)
RETURNS TABLE (kind text, ekey text, change text, before jsonb, after jsonb, fields text[])
LANGUAGE sql STABLE AS $$
    WITH touched AS (
        SELECT DISTINCT v.kind, v.ekey
        FROM dreamcatcher.world_kinds(p_world) k
        JOIN dreamcatcher.entity_versions v
          ON v.world = p_world AND v.kind = k.kind
         AND v.valid_from > least(p_frame_a, p_frame_b) AND v.valid_from <= greatest(p_frame_a, p_frame_b)
        UNION
        SELECT x.kind, x.ekey FROM dreamcatcher.entity_ends x
        WHERE x.world = p_world AND x.frame > least(p_frame_a, p_frame_b) AND x.frame <= greatest(p_frame_a, p_frame_b)
    ),
    sides AS (
        -- the version alive right after each frame: the latest that started at or before it,
        -- unless it had ended by then
        SELECT t.kind, t.ekey, xa.data AS a, xb.data AS b
        FROM touched t
        LEFT JOIN LATERAL (
            SELECT CASE WHEN x.valid_to IS NULL OR x.valid_to > p_frame_a THEN x.data END AS data
            FROM dreamcatcher.entity_versions x
            WHERE x.world = p_world AND x.kind = t.kind AND x.ekey = t.ekey AND x.valid_from <= p_frame_a
            ORDER BY x.valid_from DESC LIMIT 1) xa ON true
        LEFT JOIN LATERAL (
            SELECT CASE WHEN x.valid_to IS NULL OR x.valid_to > p_frame_b THEN x.data END AS data
            FROM dreamcatcher.entity_versions x
            WHERE x.world = p_world AND x.kind = t.kind AND x.ekey = t.ekey AND x.valid_from <= p_frame_b
            ORDER BY x.valid_from DESC LIMIT 1) xb ON true
    )
    SELECT s.kind, s.ekey,
           CASE WHEN s.a IS NULL THEN 'added' WHEN s.b IS NULL THEN 'removed' ELSE 'changed' END,
           s.a, s.b,
           CASE WHEN s.a IS NOT NULL AND s.b IS NOT NULL AND jsonb_typeof(s.a) = 'object'
                     AND jsonb_typeof(s.b) = 'object' THEN
               ARRAY(SELECT f FROM (SELECT jsonb_object_keys(s.a) UNION SELECT jsonb_object_keys(s.b)) u(f)
                     WHERE (s.a -> f) IS DISTINCT FROM (s.b -> f) ORDER BY f)
           END
    FROM sides s
    WHERE s.a IS DISTINCT FROM s.b
    ORDER BY 1, 2
$$;
