-- Named queries used by the Python code. Each starts with "-- name: NAME".

-- name: append_delta
SELECT dreamcatcher.append_delta($1, $2, $3, $4, $5::text::jsonb);

-- name: append_open
-- The common case of append_delta (frame open, key new): true when stored; else ask append_delta.
SELECT dreamcatcher.append_open($1, $2, $3, $4, $5::text::jsonb);

-- name: append_deltas
SELECT dreamcatcher.append_deltas($1, $2, $3::bigint[], $4::timestamptz[], $5::text[]::jsonb[]);

-- name: open_frames
-- Before a batch's transaction, in one of its own: the rows of the batch's frames ($2, each once).
SELECT dreamcatcher.open_frames($1, $2::bigint[]);

-- name: copy_begin
-- In the transaction of a COPY into delta_log: the fence of the batch (see copy_begin in sql/migrations/).
-- $3: the batch's frames, each once.
SELECT dreamcatcher.copy_begin($1, $2, $3::bigint[]);

-- name: close_frame
SELECT dreamcatcher.close_frame($1, $2, $3);

-- name: frame_status
SELECT f.status, w.horizon
FROM dreamcatcher.worlds w LEFT JOIN dreamcatcher.frame_log f ON f.world = w.world AND f.frame = $2
WHERE w.world = $1;

-- name: configure_world
INSERT INTO dreamcatcher.worlds AS w (world, expected_streams, late_policy, close_after, max_frame_ahead,
                                      idle_writer_timeout)
VALUES ($1, coalesce($2::text[], '{}'), coalesce($3, 'reject'), coalesce($4::interval, interval '60 seconds'),
        coalesce($5::bigint, 10000000), coalesce($6::interval, interval '30 seconds'))
ON CONFLICT (world) DO UPDATE
   SET expected_streams = coalesce($2::text[], w.expected_streams),
       late_policy = coalesce($3, w.late_policy),
       close_after = coalesce($4::interval, w.close_after),
       max_frame_ahead = coalesce($5::bigint, w.max_frame_ahead),
       idle_writer_timeout = coalesce($6::interval, w.idle_writer_timeout)
RETURNING w.world, w.expected_streams, w.late_policy, extract(epoch FROM w.close_after)::float8 AS close_after,
          w.max_frame_ahead, extract(epoch FROM w.idle_writer_timeout)::float8 AS idle_writer_timeout;

-- name: try_leader_lock
SELECT pg_try_advisory_lock(dreamcatcher.leader_lock_key($1));

-- name: heartbeat
-- $4: the merger's session, which holds the leader lock (the heartbeat may be sent from its
-- other connection while the session is busy merging). Written only while that session
-- still holds the lock: a merger that wakes up after its session was ended writes nothing.
-- $5: the leader's own leader timeout (NULL: never end it), which standbys must respect.
INSERT INTO dreamcatcher.mergers (world, holder, backend_pid, started_at, heartbeat_at, leader_timeout)
SELECT $1, $2, $4, $3, clock_timestamp(), $5
 WHERE dreamcatcher.leader_lock_holder($1) = $4
ON CONFLICT (world) DO UPDATE
   SET holder = excluded.holder, backend_pid = excluded.backend_pid,
       started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
       leader_timeout = excluded.leader_timeout;

-- name: silent_leader
-- $1 world, $2 seconds: the leader's backend when it has been silent that long (no row: none).
SELECT pid, holder, silent_for FROM dreamcatcher.silent_leader($1, $2);

-- name: end_silent_leader
SELECT dreamcatcher.end_silent_leader($1, $2);

-- name: frame_fence_holders
-- $1 world, $2 frame: the backends holding the frame's fence (inserts in flight), for a log line.
WITH k AS (SELECT dreamcatcher.frame_lock_key($1, $2) AS key)
SELECT array_agg(l.pid ORDER BY l.pid) FROM pg_locks l, k
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = ((k.key >> 32) & 4294967295)::oid
   AND l.objid = (k.key & 4294967295)::oid;

-- name: stuck_writers
-- $1 world: sessions holding one of its fences, and whether they are idle past its limit.
SELECT pid, application_name, usename, state, idle_for, xact_age, holds, over_limit
FROM dreamcatcher.stuck_writers($1);

-- name: end_stuck_writers
-- $1 world: end the sessions idle past its limit while holding its fences; the ones ended.
SELECT pid, application_name, usename, state, idle_for, holds FROM dreamcatcher.end_stuck_writers($1);

-- name: due_frames
SELECT frame, reason FROM dreamcatcher.due_frames($1);

-- name: next_deadline
SELECT extract(epoch FROM min(f.opened_at + w.close_after) - clock_timestamp())::float8
FROM dreamcatcher.frame_log f JOIN dreamcatcher.worlds w ON w.world = f.world
WHERE f.world = $1 AND f.status = 'open';

-- name: claim_next_frame
SELECT dreamcatcher.claim_next_frame($1, $2);

-- name: merge_frame
SELECT dreamcatcher.merge_frame($1, $2)::text;

-- name: world_status
-- Each world's settings, unmerged keys and leader; its counts are world_counts.
SELECT w.world, w.late_policy, w.expected_streams, extract(epoch FROM w.close_after)::float8 AS close_after,
       w.horizon,
       (SELECT coalesce(jsonb_object_agg(k.key, k.n), '{}'::jsonb)::text
          FROM (SELECT kv.key, sum(kv.value::bigint) AS n
                FROM dreamcatcher.frame_log f CROSS JOIN LATERAL jsonb_each_text(f.stats -> 'unmerged_keys') kv
                WHERE f.world = w.world GROUP BY kv.key) k) AS unmerged_keys,
       m.holder AS leader, m.heartbeat_at AS leader_heartbeat,
       extract(epoch FROM clock_timestamp() - m.heartbeat_at)::float8 AS heartbeat_age
FROM dreamcatcher.worlds w
LEFT JOIN dreamcatcher.mergers m ON m.world = w.world
WHERE $1::text IS NULL OR w.world = $1
ORDER BY w.world;

-- name: open_frame_streams
SELECT array_agg(DISTINCT d.stream_id ORDER BY d.stream_id) AS streams, count(*) AS deltas
FROM dreamcatcher.delta_log d WHERE d.world = $1 AND d.frame = $2 AND NOT d.late;
