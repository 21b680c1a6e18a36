-- Named queries of the health checks (dreamcatcher_pg/health.py): `dreamcatcher
-- healthcheck`, the exit code of `dreamcatcher status`, and the merger's /readyz.
-- Each is one cheap query: catalog lookups, or index probes of the unmerged tail.

-- name: schema_objects
-- $1 the relations, $2 the functions (of the schema dreamcatcher) the software needs:
-- whether the schema exists, and the names of those missing.
SELECT to_regnamespace('dreamcatcher') IS NOT NULL AS has_schema,
       array(SELECT r FROM unnest($1::text[]) r
              WHERE to_regclass('dreamcatcher.' || quote_ident(r)) IS NULL) AS missing_relations,
       array(SELECT f FROM unnest($2::text[]) f
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                                  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
                                 WHERE n.nspname = 'dreamcatcher' AND p.proname = f)) AS missing_functions;

-- name: world_health
-- $1 world (NULL: every world). Per world: who holds the leader lock now, the last
-- heartbeat (its age, and the leader timeout the leader declared with it), and the
-- merge lag (frames closed and waiting, and the age of the oldest).
SELECT w.world,
       dreamcatcher.leader_lock_holder(w.world) AS leader_pid,
       m.holder,
       m.backend_pid AS heartbeat_pid,
       extract(epoch FROM clock_timestamp() - m.heartbeat_at)::float8 AS heartbeat_age,
       m.leader_timeout,
       (SELECT count(*) FROM dreamcatcher.frame_log f
         WHERE f.world = w.world AND f.status = 'closed') AS lag_frames,
       (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(f.closed_at))::float8, 0)
          FROM dreamcatcher.frame_log f
         WHERE f.world = w.world AND f.status = 'closed') AS lag_seconds
FROM dreamcatcher.worlds w
LEFT JOIN dreamcatcher.mergers m ON m.world = w.world
WHERE $1::text IS NULL OR w.world = $1
ORDER BY w.world;
