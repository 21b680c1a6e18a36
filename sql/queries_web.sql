-- Named queries of the inspector (`dreamcatcher web`, dreamcatcher_pg/web/). Each starts with
-- "-- name: NAME".
--
-- Everything here is read-only and reads only what the reader role of `init --roles` may read:
-- the views and entity_versions, and the functions every role may call. Every listing is
-- paged on the server (a key or an id as the cursor, never OFFSET), so a view's cost follows
-- the page, not the world: a world of a million entities and ten thousand frames is the case
-- bench/web.py measures.

-- name: web_session
-- Who the inspector reads as, and whether its transactions are read-only.
SELECT current_user::text AS role, current_setting('transaction_read_only') = 'on' AS read_only;

-- name: web_reader_role
-- $1 a role name: itself when it exists, the session's login may SET ROLE to it, and it may read
-- the dreamcatcher schema of THIS database (roles are cluster-wide, their grants per database:
-- `init --roles` may have run in another database only); else no row.
SELECT r.rolname::text FROM pg_catalog.pg_roles r
WHERE r.rolname = $1 AND pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER')
  AND pg_catalog.has_schema_privilege(r.oid, to_regnamespace('dreamcatcher'), 'USAGE')
  AND pg_catalog.has_table_privilege(r.oid, to_regclass('dreamcatcher.entity_versions'), 'SELECT')
  AND pg_catalog.has_table_privilege(r.oid, to_regclass('dreamcatcher.frame_inputs'), 'SELECT');

-- name: web_set_role
SELECT set_config('role', $1, false);

-- name: web_world_names
-- Every world with a frame: a loose index scan over the frames' primary key (one probe per world).
WITH RECURSIVE w(world) AS (
    SELECT min(f.world) FROM dreamcatcher.frames f
    UNION ALL
    SELECT (SELECT min(f.world) FROM dreamcatcher.frames f WHERE f.world > w.world)
    FROM w WHERE w.world IS NOT NULL
)
SELECT w.world FROM w WHERE w.world IS NOT NULL ORDER BY w.world LIMIT $1;

-- name: web_world_summaries
-- $1 world names: for each, its frames by status, the merge lag (closed frames waiting, and the
-- age of the oldest), the leader merger, quarantined items and late attempts.
SELECT w.world, s.frames_open, s.frames_closed, s.frames_merged, s.first_frame, s.last_frame,
       s.last_merged, s.last_merged_at,
       coalesce(extract(epoch FROM clock_timestamp() - s.oldest_closed_at)::float8, 0) AS merge_lag_seconds,
       l.holder AS leader, l.holds_lock AS leader_holds_lock, l.heartbeat_at AS leader_heartbeat,
       extract(epoch FROM clock_timestamp() - l.heartbeat_at)::float8 AS leader_heartbeat_age,
       (SELECT count(*) FROM dreamcatcher.quarantine q WHERE q.world = w.world) AS quarantined,
       (SELECT count(*) FROM dreamcatcher.late_attempts a WHERE a.world = w.world) AS late_attempts
FROM unnest($1::text[]) WITH ORDINALITY AS w(world, n)
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE f.status = 'open') AS frames_open,
           count(*) FILTER (WHERE f.status = 'closed') AS frames_closed,
           count(*) FILTER (WHERE f.status = 'merged') AS frames_merged,
           min(f.frame) AS first_frame, max(f.frame) AS last_frame,
           max(f.frame) FILTER (WHERE f.status = 'merged') AS last_merged,
           max(f.merged_at) AS last_merged_at,
           min(f.closed_at) FILTER (WHERE f.status = 'closed') AS oldest_closed_at
    FROM dreamcatcher.frames f WHERE f.world = w.world
) s
LEFT JOIN dreamcatcher.leaders l ON l.world = w.world
ORDER BY w.n;

-- name: web_world_bounds
-- $1 world: is it known (a frame or an entity), its first and last frames, the last merged.
SELECT EXISTS (SELECT 1 FROM dreamcatcher.frames f WHERE f.world = $1)
       OR EXISTS (SELECT 1 FROM dreamcatcher.entity_versions v WHERE v.world = $1) AS known,
       (SELECT min(f.frame) FROM dreamcatcher.frames f WHERE f.world = $1) AS first_frame,
       (SELECT max(f.frame) FROM dreamcatcher.frames f WHERE f.world = $1) AS last_frame,
       (SELECT max(f.frame) FROM dreamcatcher.frames f WHERE f.world = $1 AND f.status = 'merged') AS last_merged;

-- name: web_kinds
SELECT k.kind FROM dreamcatcher.world_kinds($1) k ORDER BY k.kind;

-- name: web_timeline
-- $1 world, frames $2..$3, at most $4 points: one row per frame, or per bucket of consecutive
-- frames when there are more frames than points. Latencies in milliseconds.
WITH f AS (
    SELECT f.frame, f.status, f.delta_count,
           extract(epoch FROM f.merged_at - f.closed_at)::float8 * 1000 AS close_ms,
           extract(epoch FROM f.merged_at - f.merge_started_at)::float8 * 1000 AS merge_ms,
           row_number() OVER (ORDER BY f.frame) - 1 AS i,
           count(*) OVER () AS n
    FROM dreamcatcher.frames f
    WHERE f.world = $1 AND f.frame BETWEEN $2 AND $3
)
SELECT min(f.frame) AS frame_from, max(f.frame) AS frame_to, count(*) AS frames,
       coalesce(sum(f.delta_count), 0)::bigint AS deltas,
       count(*) FILTER (WHERE f.status = 'open') AS open,
       count(*) FILTER (WHERE f.status = 'closed') AS closed,
       count(*) FILTER (WHERE f.status = 'merged') AS merged,
       max(f.close_ms) AS close_ms_max, avg(f.close_ms) AS close_ms_avg,
       max(f.merge_ms) AS merge_ms_max, avg(f.merge_ms) AS merge_ms_avg
FROM f
GROUP BY f.i / ceil(f.n::numeric / $4)::bigint
ORDER BY 1;

-- name: web_frame
-- $1 world, $2 frame: the frame's row (NULLs when there is none) and the merged frames around it.
SELECT f.frame, f.status, f.delta_count, f.state_hash, f.opened_at, f.closed_at, f.close_reason,
       f.merge_started_at, f.merged_at, f.stats::text AS stats,
       (SELECT max(p.frame) FROM dreamcatcher.frames p
        WHERE p.world = $1 AND p.frame < $2 AND p.status = 'merged') AS prev_merged,
       (SELECT min(n.frame) FROM dreamcatcher.frames n
        WHERE n.world = $1 AND n.frame > $2 AND n.status = 'merged') AS next_merged
FROM (SELECT 1) one
LEFT JOIN dreamcatcher.frames f ON f.world = $1 AND f.frame = $2;

-- name: web_state_page
-- $1 world, $2 kind, $3 frame: the entities alive right after the frame, by key after $4 (NULL:
-- from the first), at most $5. Walks the primary key in key order; the version alive at the frame
-- is the one with valid_from <= frame < valid_to.
SELECT v.ekey, v.data::text AS data, v.first_frame, v.valid_from AS last_frame
FROM dreamcatcher.entity_versions v
WHERE v.world = $1 AND v.kind = $2 AND ($4::text IS NULL OR v.ekey > $4)
  AND v.valid_from <= $3 AND (v.valid_to IS NULL OR v.valid_to > $3)
ORDER BY v.ekey
LIMIT $5;

-- name: web_state_search
-- Like web_state_page, filtered, with a bounded cost: it looks at no more than $6 entities (in
-- key order after $4) and returns the first $5 of them that match, then one 'scan' row: the last
-- key looked at and how many were. Filters (NULL: none), all case-insensitive "contains":
-- $7 the key (lowercase), $9 a field's value (lowercase): field $8, or any top-level field when
-- $8 is NULL (for an entity that is not an object, its whole value).
WITH scan AS MATERIALIZED (
    SELECT v.ekey, v.data, v.first_frame, v.valid_from
    FROM dreamcatcher.entity_versions v
    WHERE v.world = $1 AND v.kind = $2 AND ($4::text IS NULL OR v.ekey > $4)
      AND v.valid_from <= $3 AND (v.valid_to IS NULL OR v.valid_to > $3)
    ORDER BY v.ekey
    LIMIT $6
), hits AS (
    SELECT s.ekey, s.data, s.first_frame, s.valid_from
    FROM scan s
    WHERE ($7::text IS NULL OR strpos(lower(s.ekey), $7) > 0)
      AND ($9::text IS NULL OR CASE
              WHEN $8::text IS NOT NULL THEN strpos(lower(s.data ->> $8), $9) > 0
              -- the whole text first (cheap, and true of every match), then field by field
              WHEN strpos(lower(s.data::text), $9) = 0 THEN false
              WHEN jsonb_typeof(s.data) = 'object' THEN
                  EXISTS (SELECT 1 FROM jsonb_each_text(s.data) e WHERE strpos(lower(e.value), $9) > 0)
              ELSE strpos(lower(s.data #>> '{}'), $9) > 0
          END)
    ORDER BY s.ekey
    LIMIT $5
)
SELECT 'hit' AS row, h.ekey, h.data::text AS data, h.first_frame, h.valid_from AS last_frame FROM hits h
UNION ALL
SELECT 'scan', max(s.ekey), NULL, count(*), NULL FROM scan s;

-- name: web_state_count
-- $1 world, $2 kind, $3 frame: how many entities are alive right after the frame, counting no
-- further than $4 (the answer is then "at least $4").
SELECT count(*) FROM (
    SELECT 1 FROM dreamcatcher.entity_versions v
    WHERE v.world = $1 AND v.kind = $2 AND v.valid_from <= $3 AND (v.valid_to IS NULL OR v.valid_to > $3)
    ORDER BY v.ekey
    LIMIT $4
) s;

-- name: web_diff_versions
-- $1 world: how many versions began in the frames between $2 (excluded) and $3, counting no
-- further than $4. Tells whether a diff's summary is cheap enough to count.
SELECT count(*) FROM (
    SELECT 1 FROM dreamcatcher.entity_versions v
    WHERE v.valid_from > $2 AND v.valid_from <= $3 AND v.world = $1
    LIMIT $4
) s;

-- name: web_diff_summary
-- $1 world, frames $2 -> $3: per kind, the entities added, changed and removed.
SELECT c.kind,
       count(*) FILTER (WHERE c.change = 'added') AS added,
       count(*) FILTER (WHERE c.change = 'changed') AS changed,
       count(*) FILTER (WHERE c.change = 'removed') AS removed
FROM dreamcatcher.entity_changes($1, $2, $3) c
GROUP BY c.kind
ORDER BY c.kind;

-- name: web_diff_page
-- $1 world, $2 kind, frames $3 -> $4: the entities of the kind with a version that began between
-- the two frames, by key after $5 (NULL: from the first), at most $6; each with its version alive
-- right after $3 (before) and right after $4 (after), NULL where it did not exist.
WITH keys AS (
    SELECT DISTINCT v.ekey
    FROM dreamcatcher.entity_versions v
    WHERE v.world = $1 AND v.kind = $2 AND ($5::text IS NULL OR v.ekey > $5)
      AND v.valid_from > least($3::bigint, $4::bigint) AND v.valid_from <= greatest($3::bigint, $4::bigint)
    ORDER BY v.ekey
    LIMIT $6
)
SELECT k.ekey, xa.data::text AS before, xb.data::text AS after
FROM keys k
LEFT JOIN LATERAL (
    SELECT CASE WHEN x.valid_to IS NULL OR x.valid_to > $3 THEN x.data END AS data
    FROM dreamcatcher.entity_versions x
    WHERE x.world = $1 AND x.kind = $2 AND x.ekey = k.ekey AND x.valid_from <= $3
    ORDER BY x.valid_from DESC LIMIT 1) xa ON true
LEFT JOIN LATERAL (
    SELECT CASE WHEN x.valid_to IS NULL OR x.valid_to > $4 THEN x.data END AS data
    FROM dreamcatcher.entity_versions x
    WHERE x.world = $1 AND x.kind = $2 AND x.ekey = k.ekey AND x.valid_from <= $4
    ORDER BY x.valid_from DESC LIMIT 1) xb ON true
ORDER BY k.ekey;

-- name: web_entity_at
-- $1 world, $2 kind, $3 key, $4 frame: the version alive right after the frame (no row: none),
-- how many versions the entity has, and for each top-level field the frame that set its value:
-- the first version of the last run of versions holding that value.
WITH v AS MATERIALIZED (
    SELECT x.valid_from, x.valid_to, x.first_frame, x.data
    FROM dreamcatcher.entity_versions x
    WHERE x.world = $1 AND x.kind = $2 AND x.ekey = $3 AND x.valid_from <= $4
), cur AS (
    SELECT v.* FROM v WHERE v.valid_to IS NULL OR v.valid_to > $4 ORDER BY v.valid_from DESC LIMIT 1
)
SELECT c.valid_from, c.valid_to, c.first_frame, c.data::text AS data,
       (SELECT count(*) FROM dreamcatcher.entity_versions x
        WHERE x.world = $1 AND x.kind = $2 AND x.ekey = $3) AS versions,
       (SELECT coalesce(jsonb_object_agg(f.key, (
                    SELECT min(a.valid_from) FROM v a
                    WHERE a.valid_from > coalesce((SELECT max(b.valid_from) FROM v b
                                                   WHERE (b.data -> f.key) IS DISTINCT FROM f.value), -1))),
                    '{}'::jsonb)
        FROM jsonb_each(CASE WHEN jsonb_typeof(c.data) = 'object' THEN c.data ELSE '{}'::jsonb END) f
       )::text AS set_in
FROM cur c;

-- name: web_entity_versions
-- $1 world, $2 kind, $3 key: its versions, newest first, that began before frame $4 (NULL: all), at most $5.
SELECT x.valid_from, x.valid_to, x.first_frame, x.data::text AS data
FROM dreamcatcher.entity_versions x
WHERE x.world = $1 AND x.kind = $2 AND x.ekey = $3 AND ($4::bigint IS NULL OR x.valid_from < $4)
ORDER BY x.valid_from DESC
LIMIT $5;

-- name: web_entity_version_count
SELECT count(*) FROM dreamcatcher.entity_versions x WHERE x.world = $1 AND x.kind = $2 AND x.ekey = $3;

-- name: web_entity_items
-- $1 world, $2 kind, $3 key, $4 frames: every item of the deltas merged into those frames that
-- the rules that merged each frame read as this entity, in merge_frame's apply order (frame, utc,
-- stream_id in "C", rule rank, position), each as the rule read it. Only the items of the delta
-- keys $5 are read, and only those whose JSON text holds every text of $6 (the parts of the
-- entity's key; empty: no such filter). See dreamcatcher.entity_items (sql/migrations/).
SELECT s.into_frame, s.frame, s.stream_id, s.utc, s.key, s.rank, s.pos, s.data::text AS data
FROM dreamcatcher.entity_items($1, $2, $3, $4::bigint[], $5::text[], $6::text[]) s
ORDER BY s.into_frame, s.frame, s.utc, s.stream_id COLLATE "C", s.rank, s.pos;

-- name: web_frame_rules
-- $1 world, $2 frames: the rule set that merged each (its id and its source, the TOML applied).
SELECT f.frame, s.id, s.source
FROM dreamcatcher.frames f
JOIN dreamcatcher.rule_sets s ON s.id = coalesce(f.rules, dreamcatcher.rules_at(f.world, f.frame))
WHERE f.world = $1 AND f.frame = ANY ($2::bigint[]);

-- name: web_rules_at
-- $1 world, $2 frame: the rule set in effect at the frame (its id and source).
SELECT s.id, s.source FROM dreamcatcher.rule_sets s WHERE s.id = dreamcatcher.rules_at($1, $2);

-- name: web_quarantine
-- $1 world: quarantined items, newest first, with an id below $2 (NULL: from the newest), of
-- frame $3 (NULL: any), at most $4.
SELECT q.id, q.frame, q.stream_id, q.utc, q.key, q.position, q.reason, q.item::text AS item,
       q.merged_in, q.noted_at
FROM dreamcatcher.quarantine q
WHERE q.world = $1 AND ($2::bigint IS NULL OR q.id < $2) AND ($3::bigint IS NULL OR q.frame = $3)
ORDER BY q.id DESC
LIMIT $4;

-- name: web_late_attempts
-- $1 world: attempts to write into a closed frame, newest first, like web_quarantine.
SELECT a.id, a.frame, a.stream_id, a.utc, a.policy, a.payload::text AS payload, a.attempted_at
FROM dreamcatcher.late_attempts a
WHERE a.world = $1 AND ($2::bigint IS NULL OR a.id < $2) AND ($3::bigint IS NULL OR a.frame = $3)
ORDER BY a.id DESC
LIMIT $4;

-- name: web_last_merged
-- $1 world names: the last merged frame of each (the live feed's poll, when a NOTIFY was lost).
SELECT w.world, (SELECT max(f.frame) FROM dreamcatcher.frames f
                 WHERE f.world = w.world AND f.status = 'merged') AS last_merged
FROM unnest($1::text[]) AS w(world);
