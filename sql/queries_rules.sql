-- Named queries of the rules (dreamcatcher_pg/rules/store.py). Each starts with "-- name: NAME".

-- name: rules_known
SELECT EXISTS (SELECT 1 FROM dreamcatcher.rule_sets WHERE id = $1);

-- name: rules_insert
INSERT INTO dreamcatcher.rule_sets (id, tag, source, normalized, builtin)
VALUES ($1, $2, $3, $4::jsonb, $5)
ON CONFLICT (id) DO NOTHING;

-- name: rules_set_default
INSERT INTO dreamcatcher.rule_defaults (only_row, rule_set) VALUES (true, $1)
ON CONFLICT (only_row) DO UPDATE SET rule_set = excluded.rule_set
WHERE dreamcatcher.rule_defaults.rule_set IS DISTINCT FROM excluded.rule_set;

-- name: rules_backfill_frames
-- Frames merged before rules were recorded were merged by the rules the default declares.
UPDATE dreamcatcher.frame_log SET rules = $1 WHERE status = 'merged' AND rules IS NULL;

-- name: rules_lock_world
SELECT pg_advisory_xact_lock(dreamcatcher.world_lock_key($1));

-- name: rules_world_horizon
-- The highest frame of the world that is merged or claimed for merging (NULL: none).
SELECT greatest((SELECT w.horizon FROM dreamcatcher.worlds w WHERE w.world = $1),
                (SELECT max(f.frame) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'merged'));

-- name: rules_at
SELECT dreamcatcher.rules_at($1, $2);

-- name: rules_put_world
INSERT INTO dreamcatcher.world_rules (world, from_frame, rule_set) VALUES ($1, $2, $3)
ON CONFLICT (world, from_frame) DO UPDATE SET rule_set = excluded.rule_set, applied_at = clock_timestamp();

-- name: rules_of_world
-- The world's rule versions, oldest first, and the default (from_frame NULL).
SELECT w.from_frame, w.rule_set, r.source, r.normalized::text AS normalized, r.builtin
FROM dreamcatcher.world_rules w JOIN dreamcatcher.rule_sets r ON r.id = w.rule_set
WHERE w.world = $1
UNION ALL
SELECT NULL, d.rule_set, r.source, r.normalized::text, r.builtin
FROM dreamcatcher.rule_defaults d JOIN dreamcatcher.rule_sets r ON r.id = d.rule_set
ORDER BY 1 NULLS FIRST;

-- name: rules_frames_count
-- How many merged frames of the world each rule set merged.
SELECT f.rules, count(*) AS frames, min(f.frame) AS first, max(f.frame) AS last
FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'merged'
GROUP BY f.rules ORDER BY min(f.frame);

-- name: merge_frame_as
-- Merge frame $2 of world $1 with the rule set that merged frame $2 of world $3 (replay).
SELECT dreamcatcher.merge_frame_with($1, $2, coalesce(
           (SELECT f.rules FROM dreamcatcher.frame_log f WHERE f.world = $3 AND f.frame = $2),
           dreamcatcher.rules_at($3, $2)))::text;

-- name: export_dir_rules
-- Where the rules of world $1 change, over its merged frames up to $2 (all when NULL) and
-- its rule versions beyond them; nothing when every one is the database's default.
WITH d AS (SELECT rule_set FROM dreamcatcher.rule_defaults),
f AS (
    SELECT x.frame, x.rs, lag(x.rs) OVER (ORDER BY x.frame) AS prev
    FROM (SELECT fl.frame, coalesce(fl.rules, (SELECT rule_set FROM d)) AS rs
          FROM dreamcatcher.frame_log fl
          WHERE fl.world = $1 AND fl.status = 'merged' AND ($2::bigint IS NULL OR fl.frame <= $2)) x
),
points AS (
    SELECT f.frame AS from_frame, f.rs FROM f WHERE f.prev IS DISTINCT FROM f.rs
    UNION ALL
    SELECT w.from_frame, w.rule_set FROM dreamcatcher.world_rules w
    WHERE w.world = $1 AND w.from_frame > coalesce((SELECT max(f.frame) FROM f), -1)
)
SELECT p.from_frame, r.source
FROM points p JOIN dreamcatcher.rule_sets r ON r.id = p.rs
WHERE EXISTS (SELECT 1 FROM points q WHERE q.rs IS DISTINCT FROM (SELECT rule_set FROM d))
ORDER BY p.from_frame;

-- name: snapshot_export_rules
-- The rule sets a snapshot of world $1 at frame $2 needs: those that merged its frames and
-- those of its rule versions; then its rule versions.
SELECT x.line FROM (
    SELECT 0 AS part, r.id AS k, jsonb_build_object('rule_set', r.id, 'source', r.source)::text AS line
    FROM dreamcatcher.rule_sets r
    WHERE r.id IN (SELECT f.rules FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.frame <= $2)
       OR r.id IN (SELECT w.rule_set FROM dreamcatcher.world_rules w WHERE w.world = $1)
    UNION ALL
    SELECT 1, lpad(w.from_frame::text, 20, '0'),
           jsonb_build_object('from_frame', w.from_frame, 'version', w.rule_set)::text
    FROM dreamcatcher.world_rules w WHERE w.world = $1) x
ORDER BY x.part, x.k;

-- name: rules_without_item_reader
-- Rule sets installed before item readers were compiled (their id, source).
SELECT r.id, r.source FROM dreamcatcher.rule_sets r
WHERE to_regprocedure(format('dreamcatcher.rules_%s_read_item(text, jsonb, bigint, text, timestamptz, bigint)', r.tag)) IS NULL;
