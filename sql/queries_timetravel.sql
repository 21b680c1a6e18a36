-- Named queries of time travel: replay, diff, snapshots (dreamcatcher_pg/timetravel/: state.py,
-- replay.py, snapshot.py, gitdir.py). Each starts with "-- name: NAME".

-- name: world_replay_summary
-- Does the world exist, and how far has it merged. NULL row fields when it has no frames.
SELECT EXISTS (SELECT 1 FROM dreamcatcher.worlds w WHERE w.world = $1)
       OR EXISTS (SELECT 1 FROM dreamcatcher.frame_log f WHERE f.world = $1) AS known,
       (SELECT max(f.frame) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'merged') AS last_merged,
       (SELECT min(f.frame) FROM dreamcatcher.frame_log f
        WHERE f.world = $1 AND f.status <> 'merged' AND f.frame <= $2) AS first_unmerged;

-- name: world_diff_summary
-- For diff (the reader role may run it: only views). Does the world have frames, the last merged.
SELECT EXISTS (SELECT 1 FROM dreamcatcher.frames f WHERE f.world = $1) AS known,
       (SELECT max(f.frame) FROM dreamcatcher.frames f WHERE f.world = $1 AND f.status = 'merged') AS last_merged;

-- name: merged_frames_to
-- The merged frames of a world up to $2, with what their merge recorded.
SELECT f.frame, f.state_hash, f.delta_count
FROM dreamcatcher.frame_log f
WHERE f.world = $1 AND f.status = 'merged' AND f.frame <= $2
ORDER BY f.frame;

-- name: state_at
SELECT s.kind, s.ekey, s.data::text AS data, s.first_frame, s.last_frame
FROM dreamcatcher.state_at($1, $2, $3) s
ORDER BY s.kind, s.ekey COLLATE "C";

-- name: entity_changes
SELECT c.kind, c.ekey, c.change, c.before::text AS before, c.after::text AS after, c.fields
FROM dreamcatcher.entity_changes($1, $2, $3) c;

-- name: entity_at
-- One entity's version alive right after frame $4 (NULL when it did not exist).
SELECT v.data::text
FROM dreamcatcher.entity_versions v
WHERE v.world = $1 AND v.kind = $2 AND v.ekey = $3 AND v.valid_from <= $4
  AND (v.valid_to IS NULL OR v.valid_to > $4)
ORDER BY v.valid_from DESC
LIMIT 1;

-- name: replay_open_frames
-- Closed frame rows, in the scratch (or import target) world, for the frames to merge.
INSERT INTO dreamcatcher.frame_log (world, frame, status, closed_at, close_reason)
SELECT $1, f.frame, 'closed', clock_timestamp(), 'replay'
FROM unnest($2::bigint[]) AS f(frame);

-- name: replay_copy_log
-- Copy the log of the frames in ($3, $4] of world $1 into world $2: the frames'
-- own deltas, and the late deltas deferred into them, with their deferred_log
-- rows (so each late delta merges into the same frame as it did in $1).
WITH deferred AS (
    INSERT INTO dreamcatcher.deferred_log (world, frame, stream_id, utc, merged_in)
    SELECT $2, x.frame, x.stream_id, x.utc, x.merged_in
    FROM dreamcatcher.deferred_log x
    WHERE x.world = $1 AND x.merged_in > $3 AND x.merged_in <= $4
    RETURNING frame, stream_id, utc
)
INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload, late, inserted_at)
SELECT $2, d.frame, d.stream_id, d.utc, d.payload, d.late, d.inserted_at
FROM dreamcatcher.delta_log d
WHERE d.world = $1 AND NOT d.late AND d.frame > $3 AND d.frame <= $4
UNION ALL
SELECT $2, d.frame, d.stream_id, d.utc, d.payload, d.late, d.inserted_at
FROM deferred x
JOIN dreamcatcher.delta_log d
  ON d.world = $1 AND d.frame = x.frame AND d.stream_id = x.stream_id AND d.utc = x.utc;

-- name: replay_compare_projection
-- Where the versioned state of world $1 (up to frame $3) differs from the one
-- replayed into world $2, earliest first: the frame from which the state after
-- that frame differs, and the entity. A version of $1 closed after $3 counts as
-- still alive at $3.
WITH w AS (
    SELECT v.kind, v.ekey, v.valid_from, v.data, v.first_frame,
           CASE WHEN v.valid_to <= $3 THEN v.valid_to END AS valid_to
    FROM dreamcatcher.entity_versions v
    WHERE v.world = $1 AND v.valid_from <= $3
),
s AS (
    SELECT v.kind, v.ekey, v.valid_from, v.data, v.first_frame, v.valid_to
    FROM dreamcatcher.entity_versions v
    WHERE v.world = $2
)
SELECT coalesce(w.kind, s.kind) AS kind, coalesce(w.ekey, s.ekey) AS ekey,
       CASE WHEN w.kind IS NULL OR s.kind IS NULL OR w.data <> s.data OR w.first_frame <> s.first_frame
                THEN coalesce(w.valid_from, s.valid_from)
            ELSE least(w.valid_to, s.valid_to) END AS frame,
       CASE WHEN s.kind IS NULL THEN 'the projection holds a version the log does not give'
            WHEN w.kind IS NULL THEN 'the projection lacks a version the log gives'
            WHEN w.data <> s.data THEN 'the projection''s data differs from what the log gives'
            WHEN w.first_frame <> s.first_frame THEN 'the projection''s first_frame differs from the log''s'
            ELSE 'the projection ends this version at another frame than the log' END AS what
FROM w FULL JOIN s ON w.kind = s.kind AND w.ekey = s.ekey AND w.valid_from = s.valid_from
WHERE w.kind IS NULL OR s.kind IS NULL OR w.data <> s.data OR w.first_frame <> s.first_frame
   OR w.valid_to IS DISTINCT FROM s.valid_to
ORDER BY 3, 1, coalesce(w.ekey, s.ekey) COLLATE "C"
LIMIT $4;

-- name: snapshot_world_config
SELECT w.late_policy, w.expected_streams, extract(epoch FROM w.close_after)::float8 AS close_after,
       w.max_frame_ahead, extract(epoch FROM w.idle_writer_timeout)::float8 AS idle_writer_timeout
FROM dreamcatcher.worlds w WHERE w.world = $1;

-- name: snapshot_export_deltas
-- The log of a snapshot at $2: the deltas of frames <= $2, and the late deltas
-- merged into a frame <= $2 (a late delta still waiting, or merged later, is not in it).
SELECT jsonb_build_object('frame', d.frame, 'stream_id', d.stream_id, 'utc', d.utc, 'late', d.late,
                          'inserted_at', d.inserted_at, 'payload', d.payload)::text
FROM dreamcatcher.delta_log d
WHERE d.world = $1 AND d.frame <= $2
  AND (NOT d.late OR EXISTS (SELECT 1 FROM dreamcatcher.deferred_log x
                             WHERE x.world = d.world AND x.frame = d.frame AND x.stream_id = d.stream_id
                               AND x.utc = d.utc AND x.merged_in <= $2))
ORDER BY d.frame, d.stream_id COLLATE "C", d.utc;

-- name: snapshot_export_deferred
SELECT jsonb_build_object('frame', x.frame, 'stream_id', x.stream_id, 'utc', x.utc,
                          'merged_in', x.merged_in)::text
FROM dreamcatcher.deferred_log x
WHERE x.world = $1 AND x.merged_in <= $2
ORDER BY x.merged_in, x.frame, x.stream_id COLLATE "C", x.utc;

-- name: snapshot_export_frames
SELECT jsonb_build_object('frame', f.frame, 'opened_at', f.opened_at, 'closed_at', f.closed_at,
                          'close_reason', f.close_reason, 'merged_at', f.merged_at,
                          'delta_count', f.delta_count, 'state_hash', f.state_hash, 'stats', f.stats,
                          'rules', f.rules)::text
FROM dreamcatcher.frame_log f
WHERE f.world = $1 AND f.status = 'merged' AND f.frame <= $2
ORDER BY f.frame;

-- name: snapshot_export_quarantine
-- What merges up to $2 quarantined, and what ingest quarantined for frames <= $2
-- (or for no frame): every row but those of later merges.
SELECT jsonb_build_object('frame', q.frame, 'stream_id', q.stream_id, 'utc', q.utc, 'key', q.key,
                          'position', q.position, 'reason', q.reason, 'item', q.item,
                          'merged_in', q.merged_in, 'noted_at', q.noted_at)::text
FROM dreamcatcher.quarantine_log q
WHERE q.world = $1
  AND (q.merged_in <= $2 OR (q.merged_in IS NULL AND (q.frame IS NULL OR q.frame <= $2)))
ORDER BY q.id;

-- name: snapshot_export_late
SELECT jsonb_build_object('frame', l.frame, 'stream_id', l.stream_id, 'utc', l.utc, 'policy', l.policy,
                          'payload', l.payload, 'attempted_at', l.attempted_at, 'attempts', l.attempts,
                          'last_attempt_at', l.last_attempt_at)::text
FROM dreamcatcher.late_log l
WHERE l.world = $1 AND l.frame <= $2
ORDER BY l.id;

-- name: snapshot_export_state
SELECT jsonb_build_object('kind', s.kind, 'ekey', s.ekey, 'data', s.data,
                          'first_frame', s.first_frame, 'last_frame', s.last_frame)::text
FROM dreamcatcher.state_at($1, $2) s
ORDER BY s.kind, s.ekey COLLATE "C";

-- name: snapshot_schema_present
SELECT to_regclass('dreamcatcher.delta_log') IS NOT NULL;

-- name: snapshot_lock_world
SELECT pg_advisory_xact_lock(dreamcatcher.world_lock_key($1));

-- name: snapshot_world_has_data
SELECT EXISTS (SELECT 1 FROM dreamcatcher.delta_log WHERE world = $1)
    OR EXISTS (SELECT 1 FROM dreamcatcher.frame_log WHERE world = $1)
    OR EXISTS (SELECT 1 FROM dreamcatcher.entity_versions WHERE world = $1)
    OR EXISTS (SELECT 1 FROM dreamcatcher.quarantine_log WHERE world = $1)
    OR EXISTS (SELECT 1 FROM dreamcatcher.late_log WHERE world = $1)
    OR EXISTS (SELECT 1 FROM dreamcatcher.deferred_log WHERE world = $1);

-- name: snapshot_import_world
-- An existing (empty) world keeps its configuration.
INSERT INTO dreamcatcher.worlds (world, late_policy, expected_streams, close_after, max_frame_ahead,
                                 idle_writer_timeout)
VALUES ($1, $2, $3::text[], make_interval(secs => $4), $5, make_interval(secs => $6))
ON CONFLICT (world) DO NOTHING;

-- name: snapshot_import_deltas
INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload, late, inserted_at)
SELECT $1, (j ->> 'frame')::bigint, j ->> 'stream_id', (j ->> 'utc')::timestamptz, j -> 'payload',
       (j ->> 'late')::boolean, (j ->> 'inserted_at')::timestamptz
FROM unnest($2::text[]) AS t(line) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) x;

-- name: snapshot_import_deferred
INSERT INTO dreamcatcher.deferred_log (world, frame, stream_id, utc, merged_in)
SELECT $1, (j ->> 'frame')::bigint, j ->> 'stream_id', (j ->> 'utc')::timestamptz, (j ->> 'merged_in')::bigint
FROM unnest($2::text[]) AS t(line) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) x;

-- name: snapshot_import_frames
-- The frames, closed and ready to merge, with their original open/close times and the rule
-- set that merged each (the import merges it with that one again).
INSERT INTO dreamcatcher.frame_log (world, frame, status, opened_at, closed_at, close_reason, rules)
SELECT $1, (j ->> 'frame')::bigint, 'closed', (j ->> 'opened_at')::timestamptz,
       coalesce((j ->> 'closed_at')::timestamptz, clock_timestamp()), j ->> 'close_reason', j ->> 'rules'
FROM unnest($2::text[]) AS t(line) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) x;

-- name: snapshot_import_quarantine
-- Only the rows no merge produces (ingest's); the merges of the import write their own.
INSERT INTO dreamcatcher.quarantine_log (world, frame, stream_id, utc, key, position, reason, item, merged_in, noted_at)
SELECT $1, (j ->> 'frame')::bigint, j ->> 'stream_id', (j ->> 'utc')::timestamptz, j ->> 'key',
       (j ->> 'position')::bigint, j ->> 'reason', j -> 'item', NULL, (j ->> 'noted_at')::timestamptz
FROM unnest($2::text[]) WITH ORDINALITY AS t(line, n) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) x
WHERE j -> 'merged_in' = 'null'::jsonb
ORDER BY t.n;

-- name: snapshot_import_late
-- (archives of earlier versions may list one attempt of a key per line: they add up)
INSERT INTO dreamcatcher.late_log AS l (world, frame, stream_id, utc, policy, payload, attempted_at, attempts,
                                        last_attempt_at)
SELECT $1, x.frame, x.stream_id, x.utc, (array_agg(x.policy ORDER BY x.n))[1], (array_agg(x.payload ORDER BY x.n))[1],
       min(x.attempted_at), sum(x.attempts), nullif(max(coalesce(x.last_attempt_at, x.attempted_at)), min(x.attempted_at))
FROM (SELECT t.n, (j ->> 'frame')::bigint AS frame, j ->> 'stream_id' AS stream_id, (j ->> 'utc')::timestamptz AS utc,
             j ->> 'policy' AS policy, j -> 'payload' AS payload, (j ->> 'attempted_at')::timestamptz AS attempted_at,
             coalesce((j ->> 'attempts')::bigint, 1) AS attempts, (j ->> 'last_attempt_at')::timestamptz AS last_attempt_at
      FROM unnest($2::text[]) WITH ORDINALITY AS t(line, n) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) y) x
GROUP BY x.frame, x.stream_id, x.utc
ORDER BY min(x.n)
ON CONFLICT (world, frame, stream_id, utc) DO UPDATE
   SET attempts = l.attempts + excluded.attempts,
       last_attempt_at = greatest(l.last_attempt_at, excluded.last_attempt_at, excluded.attempted_at);

-- name: snapshot_merge_quarantine
-- The quarantine rows the merges of world $1 wrote, in the export's line shape (minus noted_at).
SELECT jsonb_build_object('frame', q.frame, 'stream_id', q.stream_id, 'utc', q.utc, 'key', q.key,
                          'position', q.position, 'reason', q.reason, 'item', q.item,
                          'merged_in', q.merged_in)::text
FROM dreamcatcher.quarantine_log q
WHERE q.world = $1 AND q.merged_in IS NOT NULL;

-- name: snapshot_set_horizon
UPDATE dreamcatcher.worlds SET horizon = greatest(coalesce(horizon, -1), $2) WHERE world = $1;

-- name: export_dir_deltas
-- Every delta of a world up to frame $2 (all when NULL), for `export-dir`: the
-- payload as stored, and the same with the envelope (frame, stream_id, utc) set.
SELECT d.frame, d.stream_id, d.utc, d.late, d.payload::text AS payload,
       (d.payload || jsonb_build_object('frame', d.frame, 'stream_id', d.stream_id, 'utc', d.utc))::text
           AS with_envelope
FROM dreamcatcher.delta_log d
WHERE d.world = $1 AND ($2::bigint IS NULL OR d.frame <= $2)
ORDER BY d.frame, d.stream_id COLLATE "C", d.utc;

-- name: export_dir_count
SELECT count(*) FROM dreamcatcher.delta_log WHERE world = $1 AND ($2::bigint IS NULL OR frame <= $2);

-- name: snapshot_state_counts
SELECT s.kind, count(*) AS n FROM dreamcatcher.state_at($1, $2) s GROUP BY s.kind;

-- name: snapshot_state_table
-- The archived state, during an import (dropped at commit or rollback).
CREATE TEMP TABLE _dc_import_state (
    kind text, ekey text, data jsonb, first_frame bigint, last_frame bigint) ON COMMIT DROP;

-- name: snapshot_import_state
INSERT INTO _dc_import_state (kind, ekey, data, first_frame, last_frame)
SELECT j ->> 'kind', j ->> 'ekey', j -> 'data', (j ->> 'first_frame')::bigint, (j ->> 'last_frame')::bigint
FROM unnest($1::text[]) AS t(line) CROSS JOIN LATERAL (SELECT t.line::jsonb AS j) x;

-- name: snapshot_compare_state
-- The first entity where the state of world $1 at frame $2 differs from the archived one.
SELECT coalesce(a.kind, b.kind) AS kind, coalesce(a.ekey, b.ekey) AS ekey,
       a.data IS NULL AS missing, b.data IS NULL AS extra
FROM dreamcatcher.state_at($1, $2) a
FULL JOIN _dc_import_state b ON a.kind = b.kind AND a.ekey = b.ekey
WHERE a.data IS DISTINCT FROM b.data OR a.first_frame IS DISTINCT FROM b.first_frame
   OR a.last_frame IS DISTINCT FROM b.last_frame
ORDER BY 1, coalesce(a.ekey, b.ekey) COLLATE "C"
LIMIT 1;
