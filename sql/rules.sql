-- dreamcatcher_pg rules: the merge rules of a world are data, versioned by frame.
-- Applied after merge.sql; safe to run twice.
--
-- A rule set is a declaration (a TOML file, dreamcatcher_pg/rules/) compiled to SQL
-- functions named after its content hash: rules_<tag>_read_<n> (one reader per kind) and
-- rules_<tag>_merge (the whole frame in one statement). A world's rules take effect from a
-- frame on (world_rules); a world with none uses the default rule set (rule_defaults, the
-- package's default.toml, installed by `dreamcatcher init`). merge_frame runs the rule set
-- in effect at the frame it merges and records it in frame_log.rules, so a replay, an
-- import or an export can merge every frame again with the rules that merged it.

CREATE TABLE IF NOT EXISTS dreamcatcher.rule_sets (
    id         text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    tag        text        NOT NULL UNIQUE CHECK (tag ~ '^[0-9a-f]{16}$' AND tag = left(id, 16)),
    source     text        NOT NULL,   -- the TOML as it was applied
    normalized jsonb       NOT NULL,   -- the declaration with every default filled in
    builtin    boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS dreamcatcher.world_rules (
    world      text        NOT NULL,
    from_frame bigint      NOT NULL CHECK (from_frame >= 0),
    rule_set   text        NOT NULL REFERENCES dreamcatcher.rule_sets (id) DEFERRABLE INITIALLY DEFERRED,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (world, from_frame)
);

-- The rule set of worlds that have none: one row.
CREATE TABLE IF NOT EXISTS dreamcatcher.rule_defaults (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    rule_set text    NOT NULL REFERENCES dreamcatcher.rule_sets (id)
);

-- Which rule set merged each frame.
ALTER TABLE dreamcatcher.frame_log ADD COLUMN IF NOT EXISTS rules text;

-- Entities a deletion ended, by frame (a diff finds them here: an ended version has no successor).
CREATE TABLE IF NOT EXISTS dreamcatcher.entity_ends (
    world text   NOT NULL,
    frame bigint NOT NULL,
    kind  text   NOT NULL,
    ekey  text   NOT NULL,
    PRIMARY KEY (world, frame, kind, ekey)
);

-- The rule set in effect for `frame` of `world`.
CREATE OR REPLACE FUNCTION dreamcatcher.rules_at(p_world text, p_frame bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT w.rule_set FROM dreamcatcher.world_rules w
                     WHERE w.world = p_world AND w.from_frame <= p_frame
                     ORDER BY w.from_frame DESC LIMIT 1),
                    (SELECT d.rule_set FROM dreamcatcher.rule_defaults d))
$$;

-- How a kind's entity keys are written (int, text, array, tagged, content, position), per the
-- rule set in effect at `frame` (the default's when the kind is not in it).
CREATE OR REPLACE FUNCTION dreamcatcher.key_encoding(p_world text, p_kind text, p_frame bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT k ->> 'encoding' FROM dreamcatcher.rule_sets r,
                jsonb_array_elements(r.normalized -> 'kinds') k
         WHERE r.id = dreamcatcher.rules_at(p_world, p_frame) AND k ->> 'name' = p_kind),
        (SELECT k ->> 'encoding' FROM dreamcatcher.rule_defaults d
                JOIN dreamcatcher.rule_sets r ON r.id = d.rule_set,
                jsonb_array_elements(r.normalized -> 'kinds') k
         WHERE k ->> 'name' = p_kind),
        'text')
$$;

-- An entity key as the JSON array of its key values in declared order (NULL for append kinds;
-- ["content:<md5>"] for an entity keyed by its content).
CREATE OR REPLACE FUNCTION dreamcatcher.decode_key(p_encoding text, p_ekey text) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_encoding
               WHEN 'int' THEN jsonb_build_array(p_ekey::numeric)
               WHEN 'array' THEN p_ekey::jsonb
               WHEN 'position' THEN NULL
               WHEN 'tagged' THEN CASE WHEN p_ekey LIKE 'content:%' THEN jsonb_build_array(p_ekey)
                                       WHEN p_ekey LIKE 'key:%' THEN substr(p_ekey, 5)::jsonb
                                       ELSE jsonb_build_array(substr(p_ekey, strpos(p_ekey, ':') + 1)) END
               ELSE jsonb_build_array(p_ekey)
           END
$$;

-- ---------------------------------------------------------------------------
-- Merge one closed frame with a given rule set, in the caller's transaction. Returns the
-- frame's stats, or NULL when the frame is not closed (already merged, or open).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.merge_frame_with(p_world text, p_frame bigint, p_rules text)
RETURNS jsonb
LANGUAGE plpgsql
SET jit = off
SET work_mem = '64MB'
SET enable_memoize = off
SET enable_seqscan = off
AS $$
DECLARE
    v_status   text;
    v_tag      text;
    v_prev_acc numeric;
    v_acc      numeric;
    v_stats    jsonb;
    v_deltas   bigint;
    v_started  timestamptz := clock_timestamp();
BEGIN
    SELECT status INTO v_status FROM dreamcatcher.frame_log
     WHERE world = p_world AND frame = p_frame FOR UPDATE;
    IF NOT FOUND OR v_status <> 'closed' THEN
        RETURN NULL;
    END IF;
    SELECT r.tag INTO v_tag FROM dreamcatcher.rule_sets r WHERE r.id = p_rules;
    IF v_tag IS NULL THEN
        RAISE EXCEPTION 'no rule set % in this database (has `dreamcatcher init` run?)', coalesce(p_rules, 'at all')
            USING ERRCODE = 'DCR01';
    END IF;

    -- late deltas waiting for a merge (policy defer) go into this one
    INSERT INTO dreamcatcher.deferred_log (world, frame, stream_id, utc, merged_in)
    SELECT d.world, d.frame, d.stream_id, d.utc, p_frame
    FROM dreamcatcher.delta_log d
    WHERE d.world = p_world AND d.late
      AND NOT EXISTS (SELECT 1 FROM dreamcatcher.deferred_log x
                      WHERE x.world = d.world AND x.frame = d.frame
                        AND x.stream_id = d.stream_id AND x.utc = d.utc);

    SELECT count(*) INTO v_deltas FROM dreamcatcher.frame_deltas(p_world, p_frame);

    -- the rule set's compiled merge: the whole frame in one statement
    EXECUTE format('SELECT m.stats, m.acc FROM dreamcatcher.%I($1, $2, $3) m', 'rules_' || v_tag || '_merge')
       INTO v_stats, v_acc USING p_world, p_frame, v_deltas;

    -- the state fingerprint, incrementally: previous sum + this frame's change, mod 2^64
    SELECT f.state_acc INTO v_prev_acc FROM dreamcatcher.frame_log f
     WHERE f.world = p_world AND f.status = 'merged' AND f.frame < p_frame
     ORDER BY f.frame DESC LIMIT 1;
    v_acc := coalesce(v_prev_acc, 0) + v_acc;
    v_acc := mod(mod(v_acc, 18446744073709551616) + 18446744073709551616, 18446744073709551616);

    UPDATE dreamcatcher.frame_log
       SET status = 'merged', merge_started_at = v_started, merged_at = clock_timestamp(), delta_count = v_deltas,
           state_acc = v_acc, state_hash = dreamcatcher.state_hash_text(v_acc), stats = v_stats,
           rules = p_rules
     WHERE world = p_world AND frame = p_frame;
    RETURN v_stats || jsonb_build_object(
        'state_hash', dreamcatcher.state_hash_text(v_acc),
        'close_to_merged', (SELECT extract(epoch FROM f.merged_at - f.closed_at)::float8
                            FROM dreamcatcher.frame_log f WHERE f.world = p_world AND f.frame = p_frame));
END $$;

-- Merge one closed frame with the rules in effect for it: what the merger calls.
CREATE OR REPLACE FUNCTION dreamcatcher.merge_frame(p_world text, p_frame bigint) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT dreamcatcher.merge_frame_with(p_world, p_frame, dreamcatcher.rules_at(p_world, p_frame))
$$;

-- ---------------------------------------------------------------------------
-- The items of frames' merges that the rules read as one entity (blame, in the inspector):
-- every item of the delta keys p_keys of the deltas merged into the frames p_frames, read by the
-- item reader (rules_<tag>_read_item) of the rule set that merged each frame, kept when it is
-- entity (p_kind, p_ekey) and has no reason to be quarantined. Only items whose JSON text holds
-- every text of p_parts are read (a cheap test that spares the readers other entities' items;
-- empty: no such test). Unordered: the caller sorts in the merge's apply order
-- (into_frame, frame, utc, stream_id in "C", rank, pos).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.entity_items(
    p_world text, p_kind text, p_ekey text, p_frames bigint[], p_keys text[], p_parts text[])
RETURNS TABLE (into_frame bigint, frame bigint, stream_id text, utc timestamptz, key text,
               rank integer, pos bigint, data jsonb)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT s.tag, array_agg(f.frame) AS frames
             FROM dreamcatcher.frames f
             JOIN dreamcatcher.rule_sets s ON s.id = coalesce(f.rules, dreamcatcher.rules_at(f.world, f.frame))
             WHERE f.world = p_world AND f.frame = ANY (p_frames)
             GROUP BY s.tag LOOP
        RETURN QUERY EXECUTE format($q$
            SELECT d.into_frame, d.frame, d.stream_id, d.utc, k.key, i.rank, x.pos, i.data
            FROM dreamcatcher.frame_inputs d
            CROSS JOIN LATERAL jsonb_object_keys(d.payload) AS k(key)
            CROSS JOIN LATERAL jsonb_array_elements(dreamcatcher.jlist(d.payload -> k.key))
                       WITH ORDINALITY AS x(item, pos)
            CROSS JOIN LATERAL dreamcatcher.%I(k.key, x.item, d.frame, d.stream_id, d.utc, x.pos) i
            WHERE d.world = $1 AND d.into_frame = ANY ($2) AND k.key = ANY ($3)
              AND NOT dreamcatcher.is_meta_key(k.key)
              AND NOT EXISTS (SELECT 1 FROM unnest($4) AS n(part) WHERE strpos(x.item::text, n.part) = 0)
              AND i.kind = $5 AND i.ekey = $6 AND i.reason IS NULL$q$,
            'rules_' || r.tag || '_read_item')
        USING p_world, r.frames, p_keys, p_parts, p_kind, p_ekey;
    END LOOP;
END $$;
