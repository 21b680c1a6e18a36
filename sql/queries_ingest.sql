-- Named queries of `dreamcatcher ingest` (dreamcatcher_pg/ingest/load.py).
-- Each starts with "-- name: NAME"; the loader reads every sql/queries*.sql file.

-- name: ingest_quarantine
-- Record what ingest could not store (unreadable files, conflicting deltas),
-- one row per input; $2..$6 are parallel arrays. A row already recorded with
-- the same world, frame, stream, reason and item is not recorded again, so
-- ingesting the same directory twice changes nothing. Returns the rows added.
WITH input AS (
    SELECT i.frame, i.stream_id, i.utc, i.reason, i.item::jsonb AS item
    FROM unnest($2::bigint[], $3::text[], $4::timestamptz[], $5::text[], $6::text[])
         AS i(frame, stream_id, utc, reason, item)
),
added AS (
    INSERT INTO dreamcatcher.quarantine_log (world, frame, stream_id, utc, reason, item)
    SELECT $1::text, i.frame, i.stream_id, i.utc, i.reason, i.item
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM dreamcatcher.quarantine_log q
                      WHERE q.world = $1::text AND q.merged_in IS NULL
                        AND q.frame IS NOT DISTINCT FROM i.frame
                        AND q.stream_id IS NOT DISTINCT FROM i.stream_id
                        AND q.reason = i.reason AND q.item = i.item)
    RETURNING 1
)
SELECT count(*) FROM added;

-- name: ingest_frames
-- Status, hash and merge stats of the given frames of a world.
SELECT f.frame, f.status, f.state_hash, f.stats::text AS stats
FROM dreamcatcher.frames f
WHERE f.world = $1 AND f.frame = ANY ($2::bigint[])
ORDER BY f.frame;

-- name: ingest_blocking_frame
-- The lowest open frame below $2: frames merge in ascending order, so it holds $2 back.
SELECT min(f.frame) FROM dreamcatcher.frame_log f
WHERE f.world = $1 AND f.status = 'open' AND f.frame < $2;
