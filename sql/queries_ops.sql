-- Named queries of the operator's tools: `dreamcatcher status` and the merger's
-- Prometheus metrics (dreamcatcher_pg/ops/status.py, dreamcatcher_pg/ops/metrics.py).
-- Each one's cost follows the unmerged part of the log (or one index probe),
-- never the whole log: they run every second under `status --watch` and on
-- every metrics refresh.

-- name: world_counts
-- $1 world. What both `dreamcatcher status` and the metrics count: frames by
-- status, the last merged and the lowest open frame, late attempts (and late
-- deltas deferred), quarantined items, and the merge lag (age of the oldest
-- closed frame waiting for the merger, 0 when none).
SELECT
    (SELECT max(f.frame) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'merged') AS last_merged,
    (SELECT count(*) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'open') AS frames_open,
    (SELECT count(*) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'closed') AS frames_closed,
    (SELECT count(*) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'merged') AS frames_merged,
    (SELECT min(f.frame) FROM dreamcatcher.frame_log f WHERE f.world = $1 AND f.status = 'open') AS open_frame,
    (SELECT coalesce(sum(l.attempts), 0)::bigint FROM dreamcatcher.late_log l WHERE l.world = $1) AS late_attempts,
    (SELECT count(*) FROM dreamcatcher.late_log l WHERE l.world = $1 AND l.policy = 'defer') AS late_deferred,
    (SELECT count(*) FROM dreamcatcher.quarantine_log q WHERE q.world = $1) AS quarantined,
    (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(f.closed_at))::float8, 0)
       FROM dreamcatcher.frame_log f
      WHERE f.world = $1 AND f.status = 'closed') AS merge_lag_seconds;

-- name: status_world_details
-- $1 world. The last merged frame, the recent frames, and who
-- holds the leader lock right now.
SELECT
    (SELECT jsonb_build_object(
                'frame', f.frame, 'delta_count', f.delta_count, 'state_hash', f.state_hash,
                'merged_at', f.merged_at,
                'close_to_merged_seconds', extract(epoch FROM f.merged_at - f.closed_at)::float8)
       FROM dreamcatcher.frame_log f
      WHERE f.world = $1 AND f.status = 'merged'
      ORDER BY f.frame DESC LIMIT 1)::text AS last_merged_frame,
    (SELECT coalesce(jsonb_agg(r ORDER BY r.frame DESC), '[]'::jsonb)
       FROM (SELECT f.frame, f.status, f.delta_count, f.close_reason
               FROM dreamcatcher.frames f
              WHERE f.world = $1
              ORDER BY f.frame DESC LIMIT $2) r)::text AS recent_frames,
    dreamcatcher.leader_lock_holder($1) AS leader_lock_pid;

-- name: metrics_world
-- $1 world, $2 the last merged frame whose delta_count the caller has already
-- summed (NULL: none yet). Deltas ingested = the delta_count of every merged
-- frame (each stored delta is merged exactly once: its own frame, or the frame
-- a deferred late delta went into) + the deltas not merged yet. The caller adds
-- merged_deltas to its running sum and passes merged_through next time, so a
-- refresh reads only the frames merged since the last one and the unmerged tail.
WITH merged AS (
    SELECT coalesce(sum(f.delta_count), 0)::bigint AS deltas, max(f.frame) AS through
      FROM dreamcatcher.frame_log f
     WHERE f.world = $1 AND f.status = 'merged' AND f.frame > coalesce($2::bigint, -1)
), bound AS (
    SELECT coalesce(m.through, $2::bigint) AS through FROM merged m
)
SELECT
    m.deltas AS merged_deltas,
    b.through AS merged_through,
    (SELECT count(*) FROM dreamcatcher.delta_log d
      WHERE d.world = $1 AND NOT d.late AND d.frame > coalesce(b.through, -1)) AS unmerged_deltas,
    (SELECT count(*) FROM dreamcatcher.delta_log d
      WHERE d.world = $1 AND d.late
        AND NOT EXISTS (SELECT 1 FROM dreamcatcher.deferred_log x
                         WHERE x.world = d.world AND x.frame = d.frame
                           AND x.stream_id = d.stream_id AND x.utc = d.utc)) AS deferred_waiting
FROM merged m, bound b;
