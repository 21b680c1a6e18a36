-- dreamcatcher_pg schema: the append-only delta log, frames, the projected
-- (versioned) state, quarantine, the notification triggers and the fence.
--
-- Safe to run twice: every object is created IF NOT EXISTS or OR REPLACE.
-- Works on PostgreSQL 15 and later.

CREATE SCHEMA IF NOT EXISTS dreamcatcher;

-- ---------------------------------------------------------------------------
-- Worlds: one independent log + state each. Configuration lives here.
-- `horizon` is the highest frame the merger has claimed for merging: a delta
-- for a frame at or below it is late. It only ever grows.
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS dreamcatcher.worlds (
    world            text        PRIMARY KEY CHECK (world <> '' AND length(world) <= 200),
    late_policy      text        NOT NULL DEFAULT 'reject' CHECK (late_policy IN ('reject', 'defer')),
    expected_streams text[]      NOT NULL DEFAULT '{}',
    close_after      interval    NOT NULL DEFAULT interval '60 seconds',
    horizon          bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);
-- What one writer may make a world wait for (docs/guarantees.md, "What one writer can do"):
--   max_frame_ahead      a frame may be opened (or closed) at most this far above the world's
--                        merge horizon (before the first merge: above its lowest frame). The
--                        default suits frames counted as ticks and as epoch seconds (115 days),
--                        and refuses epoch milliseconds sent by mistake.
--   idle_writer_timeout  a session that holds one of the world's fences (an insert or a close
--                        in an open transaction) while idle for longer is ended by the merger:
--                        its uncommitted deltas roll back (they were never acknowledged).
ALTER TABLE dreamcatcher.worlds
    ADD COLUMN IF NOT EXISTS max_frame_ahead bigint NOT NULL DEFAULT 10000000
        CONSTRAINT worlds_max_frame_ahead_range CHECK (max_frame_ahead BETWEEN 1 AND 9007199254740991),
    ADD COLUMN IF NOT EXISTS idle_writer_timeout interval NOT NULL DEFAULT interval '30 seconds'
        CONSTRAINT worlds_idle_writer_timeout_positive CHECK (idle_writer_timeout > interval '0');

-- ---------------------------------------------------------------------------
-- The log. Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE, and
-- the privileges are revoked from PUBLIC.
-- `late` is true for a delta accepted under the `defer` policy after its frame
-- closed; it is merged into the next frame to merge (see deferred_log).
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS dreamcatcher.delta_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    world       text        NOT NULL,
    frame       bigint      NOT NULL CHECK (frame >= 0),
    stream_id   text        NOT NULL CHECK (stream_id <> '' AND length(stream_id) <= 200),
    utc         timestamptz NOT NULL CHECK (isfinite(utc)),
    payload     jsonb       NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    late        boolean     NOT NULL DEFAULT false,
    inserted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (world, frame, stream_id, utc)
);
CREATE INDEX IF NOT EXISTS delta_log_late ON dreamcatcher.delta_log (world) WHERE late;
-- (databases made before the check existed get it too; NOT VALID: old rows are not re-read)
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'dreamcatcher.delta_log'::regclass
                   AND conname = 'delta_log_utc_finite') AND NOT EXISTS (
           SELECT 1 FROM pg_constraint WHERE conrelid = 'dreamcatcher.delta_log'::regclass
           AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%isfinite(utc)%') THEN
        ALTER TABLE dreamcatcher.delta_log ADD CONSTRAINT delta_log_utc_finite CHECK (isfinite(utc)) NOT VALID;
    END IF;
END $$;

REVOKE UPDATE, DELETE, TRUNCATE ON dreamcatcher.delta_log FROM PUBLIC;

CREATE OR REPLACE FUNCTION dreamcatcher.tg_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dreamcatcher.delta_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'DCA01',
              HINT = 'Deltas are never changed or removed; write a new delta instead.';
END $$;


CREATE OR REPLACE TRIGGER delta_log_append_only
    BEFORE UPDATE OR DELETE ON dreamcatcher.delta_log
    FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_log_is_append_only();

CREATE OR REPLACE TRIGGER delta_log_no_truncate
    BEFORE TRUNCATE ON dreamcatcher.delta_log
    FOR EACH STATEMENT EXECUTE FUNCTION dreamcatcher.tg_log_is_append_only();

-- ---------------------------------------------------------------------------
-- Frames: open -> closed -> merged.
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS dreamcatcher.frame_log (
    world        text        NOT NULL,
    frame        bigint      NOT NULL CHECK (frame >= 0),
    status       text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed', 'merged')),
    opened_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    closed_at    timestamptz,
    close_reason text,
    merged_at    timestamptz,
    delta_count  bigint,
    state_acc    numeric,
    state_hash   text,
    stats        jsonb,
    PRIMARY KEY (world, frame)
);
CREATE INDEX IF NOT EXISTS frame_log_pending ON dreamcatcher.frame_log (world, frame)
    WHERE status <> 'merged';
-- When merge_frame began merging the frame (merged_at - merge_started_at: the merge's duration;
-- not in stats, which must depend on the log alone).
ALTER TABLE dreamcatcher.frame_log ADD COLUMN IF NOT EXISTS merge_started_at timestamptz;

-- Late deltas merged into a later frame (policy `defer`): which merge took them.
CREATE TABLE IF NOT EXISTS dreamcatcher.deferred_log (
    world     text        NOT NULL,
    frame     bigint      NOT NULL,
    stream_id text        NOT NULL,
    utc       timestamptz NOT NULL,
    merged_in bigint      NOT NULL,
    PRIMARY KEY (world, frame, stream_id, utc)
);
CREATE INDEX IF NOT EXISTS deferred_log_merged_in ON dreamcatcher.deferred_log (world, merged_in);

-- Every attempt to write into a frame that was already closed.
CREATE TABLE IF NOT EXISTS dreamcatcher.late_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    world        text        NOT NULL,
    frame        bigint      NOT NULL,
    stream_id    text        NOT NULL,
    utc          timestamptz NOT NULL,
    policy       text        NOT NULL,
    payload      jsonb       NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS late_log_world ON dreamcatcher.late_log (world, frame);

-- A retry of the same late delta counts as one more attempt of it, not as one more row.
ALTER TABLE dreamcatcher.late_log
    ADD COLUMN IF NOT EXISTS attempts bigint NOT NULL DEFAULT 1,
    ADD COLUMN IF NOT EXISTS last_attempt_at timestamptz;
DO $$
BEGIN
    IF to_regclass('dreamcatcher.late_log_key') IS NULL THEN
        -- (databases made before: fold the rows of one key into its first)
        WITH dup AS (
            SELECT l.id, first_value(l.id) OVER w AS keep, count(*) OVER w AS n,
                   max(l.attempted_at) OVER w AS last_at
            FROM dreamcatcher.late_log l
            WINDOW w AS (PARTITION BY l.world, l.frame, l.stream_id, l.utc ORDER BY l.id
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
        ), kept AS (
            UPDATE dreamcatcher.late_log l SET attempts = d.n, last_attempt_at = d.last_at
            FROM dup d WHERE l.id = d.id AND d.id = d.keep AND d.n > 1
        )
        DELETE FROM dreamcatcher.late_log l USING dup d WHERE l.id = d.id AND d.id <> d.keep;
        CREATE UNIQUE INDEX late_log_key ON dreamcatcher.late_log (world, frame, stream_id, utc);
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- What the log accepts: only what the merge can always merge, whoever writes it
-- (the client, the SQL functions, COPY). Years 1-9999 (what every client
-- language's clock holds; the merge turns a utc into microseconds), frames up to
-- 2^53 - 1 (exact in every JSON reader), payloads up to 16 MiB as stored and
-- nested at most 64 levels (as the client counts them: the object is level 1).
-- Added NOT VALID to databases made before: rows already there are not re-read.
-- ---------------------------------------------------------------------------
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('dreamcatcher.delta_log', 'delta_log_utc_range',
         $c$CHECK (utc >= '0001-01-01 00:00:00+00' AND utc < '10000-01-01 00:00:00+00')$c$),
        ('dreamcatcher.delta_log', 'delta_log_frame_range', 'CHECK (frame <= 9007199254740991)'),
        ('dreamcatcher.delta_log', 'delta_log_payload_size', 'CHECK (pg_column_size(payload) <= 16777216)'),
        ('dreamcatcher.delta_log', 'delta_log_payload_depth',
         $c$CHECK (NOT jsonb_path_exists(payload, 'strict $.**{64 to last}'))$c$),
        ('dreamcatcher.frame_log', 'frame_log_frame_range', 'CHECK (frame <= 9007199254740991)'),
        ('dreamcatcher.late_log', 'late_log_utc_range',
         $c$CHECK (utc >= '0001-01-01 00:00:00+00' AND utc < '10000-01-01 00:00:00+00')$c$),
        ('dreamcatcher.late_log', 'late_log_payload_size', 'CHECK (pg_column_size(payload) <= 16777216)'),
        ('dreamcatcher.late_log', 'late_log_payload_depth',
         $c$CHECK (NOT jsonb_path_exists(payload, 'strict $.**{64 to last}'))$c$)
    ) AS v(tbl, name, def) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE conrelid = c.tbl::regclass AND conname = c.name) THEN
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID', c.tbl, c.name, c.def);
        END IF;
    END LOOP;
END $$;

-- The bounds of a frame number and of a utc, for the entry points' own checks (one message
-- instead of a constraint's name; refused before any lock is taken).
CREATE OR REPLACE FUNCTION dreamcatcher.check_delta_key(p_frame bigint, p_utc timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF p_frame IS NULL OR p_frame < 0 OR p_frame > 9007199254740991 THEN
        RAISE EXCEPTION 'frame % is out of range: a frame is an integer in 0..9007199254740991 (2^53 - 1)',
                        coalesce(p_frame::text, 'NULL')
            USING ERRCODE = '22003';
    END IF;
    IF p_utc IS NOT NULL AND NOT (p_utc >= '0001-01-01 00:00:00+00' AND p_utc < '10000-01-01 00:00:00+00') THEN
        RAISE EXCEPTION 'utc % is out of range: a delta''s utc is a time in the years 1 to 9999', p_utc
            USING ERRCODE = '22008';
    END IF;
END $$;

-- The fence reads what committed after its lock was granted: only READ COMMITTED gives a
-- statement a snapshot taken after the lock. At REPEATABLE READ or SERIALIZABLE the snapshot
-- is the transaction's first, and an insert could land in a frame that closed (and merged)
-- since: refused.
CREATE OR REPLACE FUNCTION dreamcatcher.refuse_isolation(p_what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dreamcatcher.% runs only at READ COMMITTED, not at %', p_what,
                    upper(current_setting('transaction_isolation'))
        USING ERRCODE = '0A000',
              HINT = 'Call it outside an explicit transaction, or in one begun with ISOLATION LEVEL READ COMMITTED.';
END $$;

-- Who may write: a no-op here. `dreamcatcher init --roles` replaces it with the check of
-- stream ownership (sql/roles.sql). The entry points call it first, before any lock, when the
-- session runs them with rights other than its own (current_user <> session_user).
-- p_stream NULL: may the session close frames of the world?
CREATE OR REPLACE FUNCTION dreamcatcher.check_writer(p_world text, p_stream text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN;
END $$;

-- ---------------------------------------------------------------------------
-- Projected state, versioned: one row per version of an entity. The current
-- state is valid_to IS NULL; the state right after frame F is
-- valid_from <= F AND (valid_to IS NULL OR valid_to > F).
-- kind: post | agent | comment | reaction | chapter | book | observation.
-- ekey: the entity's dedupe key as text (see merge_frame).
-- ---------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS dreamcatcher.entity_versions (
    world       text   NOT NULL,
    kind        text   NOT NULL,
    ekey        text   NOT NULL,
    data        jsonb  NOT NULL,
    first_frame bigint NOT NULL,
    valid_from  bigint NOT NULL,
    valid_to    bigint,
    PRIMARY KEY (world, kind, ekey, valid_from)
);
-- The current version of each entity: what every merge probes, once per changed entity.
CREATE UNIQUE INDEX IF NOT EXISTS entity_versions_current
    ON dreamcatcher.entity_versions (world, kind, ekey) WHERE valid_to IS NULL;
-- Closed versions, by the frames they were valid in: what time travel reads. Partial on purpose:
-- an index led by (world, kind) that also held current versions would tempt the planner to use
-- it for the merge's probe (filtering on ekey) whenever the statistics are stale.
CREATE EXTENSION IF NOT EXISTS btree_gist;
DROP INDEX IF EXISTS dreamcatcher.entity_versions_asof;
CREATE INDEX IF NOT EXISTS entity_versions_history
    ON dreamcatcher.entity_versions USING gist (world, kind, int8range(valid_from, valid_to))
    WHERE valid_to IS NOT NULL;
-- Versions by the frame that made them: what a diff between two frames reads.
CREATE INDEX IF NOT EXISTS entity_versions_by_frame ON dreamcatcher.entity_versions (valid_from, world);

-- Items a rule could not read, with the reason. Never dropped, never fatal.
CREATE TABLE IF NOT EXISTS dreamcatcher.quarantine_log (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    world     text        NOT NULL,
    frame     bigint,
    stream_id text,
    utc       timestamptz,
    key       text,
    position  bigint,
    reason    text        NOT NULL,
    item      jsonb,
    merged_in bigint,
    noted_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS quarantine_log_world ON dreamcatcher.quarantine_log (world, frame);

-- The merger that holds a world's leader lock, and its heartbeat.
CREATE TABLE IF NOT EXISTS dreamcatcher.mergers (
    world        text        PRIMARY KEY,
    holder       text        NOT NULL,
    backend_pid  integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
-- The leader's own leader timeout (its --leader-timeout): a standby ends its session only after
-- that long without a heartbeat, whatever the standby's own setting. NULL: never.
ALTER TABLE dreamcatcher.mergers ADD COLUMN IF NOT EXISTS leader_timeout float8;

-- ---------------------------------------------------------------------------
-- Lock keys. Collisions between keys only cost waiting, never correctness.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.frame_lock_key(p_world text, p_frame bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended(p_world || '/' || p_frame::text, 7101) $$;

CREATE OR REPLACE FUNCTION dreamcatcher.world_lock_key(p_world text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended(p_world, 7102) $$;

CREATE OR REPLACE FUNCTION dreamcatcher.leader_lock_key(p_world text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended(p_world, 7103) $$;

-- The backend holding a world's leader lock (pg_try_advisory_lock(bigint) shows in pg_locks
-- as classid = the key's high 32 bits, objid = its low 32 bits, objsubid = 1), or NULL.
CREATE OR REPLACE FUNCTION dreamcatcher.leader_lock_holder(p_world text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT l.pid FROM pg_catalog.pg_locks l,
           (SELECT dreamcatcher.leader_lock_key(p_world) AS key) k
     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
       AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
       AND l.classid = ((k.key >> 32) & 4294967295)::oid
       AND l.objid = (k.key & 4294967295)::oid
     LIMIT 1
$$;

-- The backend holding a world's leader lock when it has been silent for longer than the leader
-- timeout: its pid, holder name and silence. No row: no leader, or a live one. The timeout is
-- the one the leader declared with its heartbeats (mergers.leader_timeout), never the caller's:
-- a standby configured with a tiny timeout cannot end a healthy leader. A holder with no
-- heartbeat row of its own (not a merger, or one that died before its first heartbeat) is timed
-- from the start of its session, against the caller's timeout but at least 10 seconds.
CREATE OR REPLACE FUNCTION dreamcatcher.silent_leader(p_world text, p_timeout float8)
RETURNS TABLE (pid integer, holder text, silent_for float8)
LANGUAGE sql STABLE AS $$
    SELECT h.pid, m.holder, s.silent_for
    FROM (SELECT dreamcatcher.leader_lock_holder(p_world) AS pid) h
    LEFT JOIN dreamcatcher.mergers m ON m.world = p_world AND m.backend_pid = h.pid
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = h.pid
    CROSS JOIN LATERAL (
        SELECT extract(epoch FROM clock_timestamp() - coalesce(m.heartbeat_at, a.backend_start))::float8 AS silent_for,
               CASE WHEN m.world IS NOT NULL THEN m.leader_timeout
                    ELSE greatest(coalesce(p_timeout, 0), 10.0) END AS limit_s
    ) s
    WHERE h.pid IS NOT NULL AND s.limit_s IS NOT NULL AND s.silent_for > s.limit_s
$$;

-- End the session of a silent leader (see silent_leader) and wait, up to 10 s, until it is
-- gone with its lock; returns its pid, or NULL when the leader is not silent (any more).
-- Whatever that session had begun is rolled back. With `init --roles` this runs with its
-- owner's rights, so members of the merger role can end another merger login's session,
-- and nothing else: only the holder of that world's leader lock, only when it is silent.
CREATE OR REPLACE FUNCTION dreamcatcher.end_silent_leader(p_world text, p_timeout float8) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_pid integer;
BEGIN
    IF p_timeout IS NULL OR p_timeout <= 0 THEN
        RAISE EXCEPTION 'end_silent_leader: the timeout must be positive' USING ERRCODE = '22023';
    END IF;
    SELECT s.pid INTO v_pid FROM dreamcatcher.silent_leader(p_world, p_timeout) s;
    IF v_pid IS NULL OR v_pid = pg_catalog.pg_backend_pid() THEN
        RETURN NULL;
    END IF;
    IF pg_catalog.pg_terminate_backend(v_pid, 10000) THEN
        RETURN v_pid;
    END IF;
    RETURN NULL;
END $$;

-- ---------------------------------------------------------------------------
-- Notifications. NOTIFY is a wake-up, never the data; the merger also polls.
-- A NOTIFY in every insert transaction serialises all commits on one global
-- lock, so the log notifies only when the merger has something to do:
--   channel dreamcatcher_work:   'world:frame:opened'   (first delta of a frame)
--                                'world:frame:stream'   (first delta of an expected stream)
--                                'world:frame:closed'
--   channel dreamcatcher_merged: 'world:frame'
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.tg_frame_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('dreamcatcher_work',
                          NEW.world || ':' || NEW.frame || ':' || CASE NEW.status WHEN 'open' THEN 'opened' ELSE NEW.status END);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NEW.status = 'merged' THEN
            PERFORM pg_notify('dreamcatcher_merged', NEW.world || ':' || NEW.frame);
        ELSE
            PERFORM pg_notify('dreamcatcher_work', NEW.world || ':' || NEW.frame || ':' || NEW.status);
        END IF;
    END IF;
    RETURN NULL;
END $$;


CREATE OR REPLACE TRIGGER frame_log_notify
    AFTER INSERT OR UPDATE OF status ON dreamcatcher.frame_log
    FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_frame_changed();

-- The first delta of an *expected* stream in a frame may complete the frame: the append
-- functions notify 'world:frame:stream' for it (a trigger on the log would cost every insert a
-- transition table and a query; measured at a third of a single insert's time).
DROP TRIGGER IF EXISTS delta_log_notify ON dreamcatcher.delta_log;
DROP FUNCTION IF EXISTS dreamcatcher.tg_deltas_inserted();

-- Notify the merger when this stream is expected in the world and has no other delta in the frame.
CREATE OR REPLACE FUNCTION dreamcatcher.note_expected_stream(
    p_world text, p_stream text, p_frame bigint, p_utcs timestamptz[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dreamcatcher.delta_log d
                   WHERE d.world = p_world AND d.frame = p_frame AND d.stream_id = p_stream
                     AND d.utc <> ALL (p_utcs)) THEN
        PERFORM pg_notify('dreamcatcher_work', p_world || ':' || p_frame || ':stream');
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- The fence.
-- Inserters hold a SHARED advisory lock on (world, frame) for their
-- transaction; closing takes it EXCLUSIVE, so it waits for every in-flight
-- insert of that frame to commit, and every later insert sees the frame
-- closed. A frame may not appear below the world's merge horizon: a new frame
-- row is checked against the horizon when it is made and again when its
-- transaction commits (frame_log_above_horizon, under the world lock, SHARED;
-- the merger's claim of the next frame takes it EXCLUSIVE). So an open
-- transaction holds only the fences of its own frames: never the world.
--
-- Every entry point first checks what needs no lock: the frame's range, the
-- isolation level, who is asking (init --roles), and the size of a batch.
-- ---------------------------------------------------------------------------

-- The most deltas, and the most distinct frames, one call may append: each frame of a call
-- holds a lock until COMMIT, and the lock table is shared by the whole server.
CREATE OR REPLACE FUNCTION dreamcatcher.max_batch_deltas() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 10000 $$;
CREATE OR REPLACE FUNCTION dreamcatcher.max_batch_frames() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 32 $$;

-- The checks of a batch before any lock: lengths, sizes, frames and utcs in range.
CREATE OR REPLACE FUNCTION dreamcatcher.check_batch(
    p_what text, p_frames bigint[], p_utcs timestamptz[], p_payloads jsonb[] DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_frames integer;
BEGIN
    IF (p_utcs IS NOT NULL AND cardinality(p_frames) IS DISTINCT FROM cardinality(p_utcs))
       OR (p_payloads IS NOT NULL AND cardinality(p_frames) IS DISTINCT FROM cardinality(p_payloads)) THEN
        RAISE EXCEPTION '%: frames, utcs and payloads differ in length', p_what USING ERRCODE = '22023';
    END IF;
    IF cardinality(p_frames) > dreamcatcher.max_batch_deltas() THEN
        RAISE EXCEPTION '%: % deltas in one call, over the limit of %', p_what, cardinality(p_frames),
                        dreamcatcher.max_batch_deltas()
            USING ERRCODE = '54000', HINT = 'Split the batch.';
    END IF;
    SELECT count(DISTINCT f) INTO v_frames FROM unnest(p_frames) f;
    IF v_frames > dreamcatcher.max_batch_frames() THEN
        RAISE EXCEPTION '%: one call spans % frames, over the limit of %', p_what, v_frames,
                        dreamcatcher.max_batch_frames()
            USING ERRCODE = '54000', HINT = 'Split the batch by frame.';
    END IF;
    -- (raises on the first frame or utc out of range; p_utcs NULL: frames only)
    PERFORM dreamcatcher.check_delta_key(x.f, CASE WHEN p_utcs IS NOT NULL THEN coalesce(x.u, '-infinity') END)
       FROM unnest(p_frames, coalesce(p_utcs, '{}')) AS x(f, u)
      WHERE f IS NULL OR f < 0 OR f > 9007199254740991
         OR (p_utcs IS NOT NULL AND (u IS NULL OR NOT (u >= '0001-01-01 00:00:00+00' AND u < '10000-01-01 00:00:00+00')));
END $$;

-- Make sure a frame row exists; returns its status, or 'late' when the frame
-- is at or below the world's merge horizon. The caller holds the frame lock.
-- A new frame more than the world's max_frame_ahead above its horizon (before
-- the first merge: above its lowest frame) is refused: one far frame, once
-- merged, would make every frame below it late for good.
CREATE OR REPLACE FUNCTION dreamcatcher.ensure_frame(p_world text, p_frame bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_horizon bigint;
    v_ahead   bigint;
    v_base    bigint;
    v_status  text;
BEGIN
    INSERT INTO dreamcatcher.worlds (world) VALUES (p_world) ON CONFLICT DO NOTHING;
    SELECT horizon, max_frame_ahead INTO v_horizon, v_ahead FROM dreamcatcher.worlds WHERE world = p_world;
    SELECT status INTO v_status FROM dreamcatcher.frame_log WHERE world = p_world AND frame = p_frame;
    IF FOUND THEN
        RETURN v_status;
    END IF;
    IF v_horizon IS NOT NULL AND p_frame <= v_horizon THEN
        RETURN 'late';
    END IF;
    v_base := coalesce(v_horizon, (SELECT min(f.frame) FROM dreamcatcher.frame_log f WHERE f.world = p_world));
    IF v_base IS NOT NULL AND p_frame > v_base + v_ahead THEN
        RAISE EXCEPTION 'frame % is too far ahead in world %: more than % frames above %', p_frame,
                        quote_literal(p_world), v_ahead,
                        CASE WHEN v_horizon IS NULL THEN 'its lowest frame, ' || v_base
                             ELSE 'its last merged frame, ' || v_base END
            USING ERRCODE = 'DCF01',
                  HINT = 'Frames of one world count one way (ticks, epoch seconds...). If the jump is meant, '
                         'raise the world''s max_frame_ahead (dreamcatcher world WORLD --max-frame-ahead N).';
    END IF;
    INSERT INTO dreamcatcher.frame_log (world, frame) VALUES (p_world, p_frame) ON CONFLICT DO NOTHING;
    SELECT status INTO v_status FROM dreamcatcher.frame_log WHERE world = p_world AND frame = p_frame;
    RETURN v_status;
END $$;

-- At COMMIT of a transaction that made a frame row: the frame must still be above the
-- horizon, unless the same transaction merged it (an import, which loads and merges a log). Under the world lock (SHARED, held only for the commit), so no claim commits
-- between this check and the commit. A claim that passed the frame while the transaction
-- was open makes it fail (serialization_failure): nothing it wrote was acknowledged, and a
-- retry finds the frame late. SECURITY DEFINER: deferred triggers run with the session's
-- own rights, which (with init --roles) may not take locks.
CREATE OR REPLACE FUNCTION dreamcatcher.tg_frame_above_horizon() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(dreamcatcher.world_lock_key(NEW.world));
    IF EXISTS (SELECT 1 FROM dreamcatcher.worlds w
               JOIN dreamcatcher.frame_log f ON f.world = w.world AND f.frame = NEW.frame
               WHERE w.world = NEW.world AND w.horizon >= NEW.frame AND f.status <> 'merged') THEN
        RAISE EXCEPTION 'frame % of world % was merged past while this transaction was open',
                        NEW.frame, quote_literal(NEW.world)
            USING ERRCODE = '40001',
                  HINT = 'Retry: the frame is late now, and the world''s late policy decides.';
    END IF;
    RETURN NULL;
END $$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'dreamcatcher.frame_log'::regclass
                   AND tgname = 'frame_log_above_horizon') THEN
        CREATE CONSTRAINT TRIGGER frame_log_above_horizon
            AFTER INSERT ON dreamcatcher.frame_log DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_frame_above_horizon();
    END IF;
END $$;

-- The fence of a batch: take the shared lock of every frame of the batch (ascending, so two
-- batches never deadlock), make sure each frame has its row, and return the frames that are
-- not open. The status is read after the lock, in a statement of its own, so its snapshot
-- sees a close that committed first. The caller's transaction keeps the locks until COMMIT.
CREATE OR REPLACE FUNCTION dreamcatcher.fence_frames(p_world text, p_frames bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_frame  bigint;
    v_state  text;
    v_closed bigint[] := '{}';
BEGIN
    FOR v_frame IN SELECT DISTINCT f FROM unnest(p_frames) f ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock_shared(dreamcatcher.frame_lock_key(p_world, v_frame));
        SELECT fl.status INTO v_state FROM dreamcatcher.frame_log fl
         WHERE fl.world = p_world AND fl.frame = v_frame;
        IF NOT FOUND THEN
            v_state := dreamcatcher.ensure_frame(p_world, v_frame);
        END IF;
        IF v_state <> 'open' THEN
            v_closed := v_closed || v_frame;
        END IF;
    END LOOP;
    RETURN v_closed;
END $$;

-- note_expected_stream for each frame of a batch (but the frames in p_skip), when the
-- stream is one the world expects.
CREATE OR REPLACE FUNCTION dreamcatcher.note_expected_streams(
    p_world text, p_stream text, p_frames bigint[], p_utcs timestamptz[], p_skip bigint[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_frame bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM dreamcatcher.worlds w
                   WHERE w.world = p_world AND p_stream = ANY (w.expected_streams)) THEN
        RETURN;
    END IF;
    FOR v_frame IN SELECT DISTINCT f FROM unnest(p_frames) f WHERE NOT f = ANY (p_skip) LOOP
        PERFORM dreamcatcher.note_expected_stream(
            p_world, p_stream, v_frame,
            ARRAY(SELECT u FROM unnest(p_frames, p_utcs) AS x(f, u) WHERE x.f = v_frame));
    END LOOP;
END $$;

-- Record an attempt to write a delta into a frame that had closed: one row per delta key,
-- counting the attempts (a retry of the same late delta is one more attempt, not one more row).
CREATE OR REPLACE FUNCTION dreamcatcher.note_late(
    p_world text, p_stream text, p_frames bigint[], p_utcs timestamptz[], p_payloads jsonb[], p_policy text)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO dreamcatcher.late_log AS l (world, frame, stream_id, utc, policy, payload)
    SELECT p_world, x.f, p_stream, x.u, p_policy, x.p FROM unnest(p_frames, p_utcs, p_payloads) AS x(f, u, p)
    ON CONFLICT (world, frame, stream_id, utc) DO UPDATE
       SET attempts = l.attempts + 1, last_attempt_at = clock_timestamp()
$$;

-- Append a batch of deltas of one stream. One result per input, in input
-- order: 'stored' | 'duplicate' | 'conflict' | 'late' | 'deferred' (the same
-- words as append_delta). Late attempts are recorded in late_log whatever the
-- policy. Set-based: one INSERT for the whole batch.
CREATE OR REPLACE FUNCTION dreamcatcher.append_deltas(
    p_world text, p_stream text, p_frames bigint[], p_utcs timestamptz[], p_payloads jsonb[])
RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    v_policy text;
    v_late   bigint[];
    v_result text[];
    v_first  integer[];
    i        integer;
BEGIN
    IF current_user <> session_user THEN
        PERFORM dreamcatcher.check_writer(p_world, p_stream);
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('append_deltas');
    END IF;
    PERFORM dreamcatcher.check_batch('append_deltas', p_frames, p_utcs, p_payloads);
    v_late := dreamcatcher.fence_frames(p_world, p_frames);
    SELECT w.late_policy INTO v_policy FROM dreamcatcher.worlds w WHERE w.world = p_world;

    -- Fast path, the common case: every frame open and every key new. One plain INSERT; any
    -- repeated or existing key raises unique_violation, which undoes it and takes the exact path.
    IF cardinality(v_late) = 0 THEN
        BEGIN
            INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload)
            SELECT p_world, x.f, p_stream, x.u, x.p FROM unnest(p_frames, p_utcs, p_payloads) AS x(f, u, p);
            PERFORM dreamcatcher.note_expected_streams(p_world, p_stream, p_frames, p_utcs);
            RETURN array_fill('stored'::text, ARRAY[cardinality(p_frames)]);
        EXCEPTION WHEN unique_violation THEN
            NULL;  -- a retry or a repeat in the batch: sort it out below
        END;
    END IF;

    WITH items AS (
        SELECT i.ord::integer AS ord, i.frame, i.utc, i.payload, (i.frame = ANY (v_late)) AS is_late,
               first_value(i.ord::integer) OVER w AS first_ord, first_value(i.payload) OVER w AS first_payload
        FROM unnest(p_frames, p_utcs, p_payloads) WITH ORDINALITY AS i(frame, utc, payload, ord)
        WINDOW w AS (PARTITION BY i.frame, i.utc ORDER BY i.ord)
    ),
    -- an item repeating the key of an earlier item of the batch takes that item's outcome
    input AS (SELECT * FROM items WHERE ord = first_ord),
    -- a retry of a delta that is already stored is 'duplicate', even when its frame has closed since
    existing AS (
        SELECT i.ord, d.payload = i.payload AS same
        FROM input i JOIN dreamcatcher.delta_log d
          ON d.world = p_world AND d.frame = i.frame AND d.stream_id = p_stream AND d.utc = i.utc
    ),
    late_noted AS (
        INSERT INTO dreamcatcher.late_log AS l (world, frame, stream_id, utc, policy, payload)
        SELECT p_world, i.frame, p_stream, i.utc, v_policy, i.payload
        FROM input i WHERE i.is_late AND i.ord NOT IN (SELECT e.ord FROM existing e)
        ON CONFLICT (world, frame, stream_id, utc) DO UPDATE
           SET attempts = l.attempts + 1, last_attempt_at = clock_timestamp()
    ),
    inserted AS (
        INSERT INTO dreamcatcher.delta_log (world, frame, stream_id, utc, payload, late)
        SELECT p_world, i.frame, p_stream, i.utc, i.payload, i.is_late
        FROM input i
        WHERE i.ord NOT IN (SELECT e.ord FROM existing e)
          AND (NOT i.is_late OR v_policy = 'defer')
        ON CONFLICT DO NOTHING
        RETURNING frame, utc, payload
    )
    SELECT array_agg(
               CASE
                   WHEN r.ord <> r.first_ord THEN CASE WHEN r.payload = r.first_payload THEN 'repeat' ELSE 'conflict' END
                   WHEN e.ord IS NOT NULL THEN CASE WHEN e.same THEN 'duplicate' ELSE 'conflict' END
                   WHEN i.is_late AND v_policy <> 'defer' THEN 'late'
                   WHEN x.payload = i.payload THEN CASE WHEN i.is_late THEN 'deferred' ELSE 'stored' END
                   ELSE NULL  -- lost a race with a concurrent insert of the same key: look again below
               END ORDER BY r.ord),
           array_agg(r.first_ord ORDER BY r.ord)
      INTO v_result, v_first
      FROM items r
      LEFT JOIN input i ON i.ord = r.ord
      LEFT JOIN existing e ON e.ord = r.ord
      LEFT JOIN inserted x ON x.frame = i.frame AND x.utc = i.utc;

    PERFORM dreamcatcher.note_expected_streams(p_world, p_stream, p_frames, p_utcs, v_late);

    FOR i IN 1 .. coalesce(cardinality(v_result), 0) LOOP
        IF v_result[i] IS NULL THEN
            v_result[i] := dreamcatcher.append_delta(p_world, p_stream, p_frames[i], p_utcs[i], p_payloads[i]);
        ELSIF v_result[i] = 'repeat' THEN
            v_result[i] := CASE WHEN v_result[v_first[i]] IN ('stored', 'deferred') THEN 'duplicate'
                                ELSE v_result[v_first[i]] END;
        END IF;
    END LOOP;
    RETURN coalesce(v_result, '{}');
END $$;

-- The fence of a batch that is appended with COPY straight into delta_log (what
-- DeltaClient.insert_deltas does when the session may INSERT into delta_log: COPY writes a
-- batch several times faster than an INSERT ... SELECT). Called first in the transaction that
-- then COPYs the batch, with the batch's frames (each once is enough), it takes the shared lock
-- of every frame (so a close waits for that COMMIT), makes sure each frame is open, and
-- notifies for an expected stream that has no delta in a frame yet, as append_deltas does (the
-- batch is not in the log yet: whatever of this stream is there came before). Returns 'copy'
-- (go ahead: every row COPYed is stored), 'exact' (a frame is not open: call append_deltas
-- instead, in the same transaction) or 'denied' (the session may not INSERT into delta_log,
-- e.g. a worker of `init --roles`: call append_deltas). A key that is already stored or
-- repeats in the batch makes the COPY fail (unique_violation): the client rolls back and calls
-- append_deltas, which sorts duplicates and conflicts out.
CREATE OR REPLACE FUNCTION dreamcatcher.copy_begin(p_world text, p_stream text, p_frames bigint[])
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_catalog.has_table_privilege('dreamcatcher.delta_log', 'INSERT') THEN
        RETURN 'denied';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('copy_begin');
    END IF;
    PERFORM dreamcatcher.check_batch('copy_begin', p_frames, NULL);
    IF cardinality(dreamcatcher.fence_frames(p_world, p_frames)) > 0 THEN
        RETURN 'exact';
    END IF;
    IF EXISTS (SELECT 1 FROM dreamcatcher.worlds w
               WHERE w.world = p_world AND p_stream = ANY (w.expected_streams)) THEN
        PERFORM dreamcatcher.note_expected_stream(p_world, p_stream, x.f, '{}')
           FROM (SELECT DISTINCT f FROM unnest(p_frames) f) x;
    END IF;
    RETURN 'copy';
END $$;

-- The same with the batch's utcs too (what clients of earlier versions send): checked, then
-- as above.
CREATE OR REPLACE FUNCTION dreamcatcher.copy_begin(
    p_world text, p_stream text, p_frames bigint[], p_utcs timestamptz[])
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.has_table_privilege('dreamcatcher.delta_log', 'INSERT') THEN
        PERFORM dreamcatcher.check_batch('copy_begin', p_frames, p_utcs);
    END IF;
    RETURN dreamcatcher.copy_begin(p_world, p_stream, p_frames);
END $$;

-- Single-delta fast path (same semantics as append_deltas with one element).
CREATE OR REPLACE FUNCTION dreamcatcher.append_delta(
    p_world text, p_stream text, p_frame bigint, p_utc timestamptz, p_payload jsonb)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state    text;
    v_policy   text;
    v_existing jsonb;
    v_expected boolean;
BEGIN
    IF current_user <> session_user THEN
        PERFORM dreamcatcher.check_writer(p_world, p_stream);
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('append_delta');
    END IF;
    IF p_frame IS NULL OR p_frame < 0 OR p_frame > 9007199254740991 OR p_utc IS NULL
       OR NOT (p_utc >= '0001-01-01 00:00:00+00' AND p_utc < '10000-01-01 00:00:00+00') THEN
        PERFORM dreamcatcher.check_delta_key(p_frame, coalesce(p_utc, '-infinity'));
    END IF;
    PERFORM pg_advisory_xact_lock_shared(dreamcatcher.frame_lock_key(p_world, p_frame));
    -- The common case in one statement: the frame is open and the key is new. The statement's
    -- snapshot is taken after the lock, so a close that committed before it is seen here.
    -- Whether the stream is expected is read only when a delta was stored.
    INSERT INTO dreamcatcher.delta_log AS d (world, frame, stream_id, utc, payload)
    SELECT p_world, p_frame, p_stream, p_utc, p_payload
      FROM dreamcatcher.frame_log fl
     WHERE fl.world = p_world AND fl.frame = p_frame AND fl.status = 'open'
    ON CONFLICT DO NOTHING
    RETURNING (SELECT d.stream_id = ANY (w.expected_streams) FROM dreamcatcher.worlds w WHERE w.world = d.world)
    INTO v_expected;
    IF FOUND THEN
        IF v_expected THEN
            PERFORM dreamcatcher.note_expected_stream(p_world, p_stream, p_frame, ARRAY[p_utc]);
        END IF;
        RETURN 'stored';
    END IF;

    SELECT fl.status INTO v_state FROM dreamcatcher.frame_log fl WHERE fl.world = p_world AND fl.frame = p_frame;
    IF NOT FOUND THEN
        v_state := dreamcatcher.ensure_frame(p_world, p_frame);
    END IF;
    SELECT d.payload INTO v_existing FROM dreamcatcher.delta_log d
     WHERE d.world = p_world AND d.frame = p_frame AND d.stream_id = p_stream AND d.utc = p_utc;
    IF FOUND THEN  -- a retry (or another delta under the same key), whatever the frame's state
        RETURN CASE WHEN v_existing = p_payload THEN 'duplicate' ELSE 'conflict' END;
    END IF;
    IF v_state <> 'open' THEN
        SELECT w.late_policy INTO v_policy FROM dreamcatcher.worlds w WHERE w.world = p_world;
        PERFORM dreamcatcher.note_late(p_world, p_stream, ARRAY[p_frame], ARRAY[p_utc], ARRAY[p_payload], v_policy);
        IF v_policy <> 'defer' THEN
            RETURN 'late';
        END IF;
    END IF;
    INSERT INTO dreamcatcher.delta_log AS d (world, frame, stream_id, utc, payload, late)
    VALUES (p_world, p_frame, p_stream, p_utc, p_payload, v_state <> 'open')
    ON CONFLICT DO NOTHING
    RETURNING (SELECT d.stream_id = ANY (w.expected_streams) FROM dreamcatcher.worlds w WHERE w.world = d.world)
    INTO v_expected;
    IF FOUND THEN
        IF v_state <> 'open' THEN
            RETURN 'deferred';
        END IF;
        IF v_expected THEN
            PERFORM dreamcatcher.note_expected_stream(p_world, p_stream, p_frame, ARRAY[p_utc]);
        END IF;
        RETURN 'stored';
    END IF;
    -- lost a race with a concurrent insert of the same key
    SELECT d.payload INTO v_existing FROM dreamcatcher.delta_log d
     WHERE d.world = p_world AND d.frame = p_frame AND d.stream_id = p_stream AND d.utc = p_utc;
    RETURN CASE WHEN v_existing = p_payload THEN 'duplicate' ELSE 'conflict' END;
END $$;

-- Close a frame. Idempotent: 'closed' when this call closed it, otherwise the
-- status it already had ('closed' | 'merged'), or 'late' when the frame has no
-- row and lies at or below the merge horizon (it can never be merged).
CREATE OR REPLACE FUNCTION dreamcatcher.close_frame(p_world text, p_frame bigint, p_reason text DEFAULT 'explicit')
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
BEGIN
    IF current_user <> session_user THEN
        PERFORM dreamcatcher.check_writer(p_world, NULL);
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('close_frame');
    END IF;
    PERFORM dreamcatcher.check_delta_key(p_frame, NULL);
    PERFORM pg_advisory_xact_lock(dreamcatcher.frame_lock_key(p_world, p_frame));
    SELECT status INTO v_state FROM dreamcatcher.frame_log WHERE world = p_world AND frame = p_frame;
    IF NOT FOUND THEN
        v_state := dreamcatcher.ensure_frame(p_world, p_frame);
    END IF;
    IF v_state <> 'open' THEN
        RETURN v_state;
    END IF;
    UPDATE dreamcatcher.frame_log
       SET status = 'closed', closed_at = clock_timestamp(), close_reason = p_reason
     WHERE world = p_world AND frame = p_frame;
    RETURN 'closed';
END $$;

-- Open frames that should close now: every expected stream has written, or
-- the deadline after the frame's first delta has passed.
CREATE OR REPLACE FUNCTION dreamcatcher.due_frames(p_world text)
RETURNS TABLE (frame bigint, reason text)
LANGUAGE sql STABLE AS $$
    SELECT f.frame,
           CASE WHEN f.opened_at + w.close_after <= clock_timestamp() THEN 'deadline' ELSE 'streams' END
    FROM dreamcatcher.frame_log f
    JOIN dreamcatcher.worlds w ON w.world = f.world
    WHERE f.world = p_world AND f.status = 'open'
      AND (f.opened_at + w.close_after <= clock_timestamp()
           OR (cardinality(w.expected_streams) > 0
               AND NOT EXISTS (SELECT 1 FROM unnest(w.expected_streams) s(stream_id)
                               WHERE NOT EXISTS (SELECT 1 FROM dreamcatcher.delta_log d
                                                 WHERE d.world = f.world AND d.frame = f.frame
                                                   AND d.stream_id = s.stream_id))))
    ORDER BY f.frame
$$;

-- The merger's claim of the next frame to merge: the lowest frame not merged,
-- if it is closed. Raises the horizon so no new frame can open below it. The
-- world lock waits only for transactions that are committing a new frame row
-- (the merger sets a lock_timeout all the same: see stuck_writers).
-- p_lock_timeout_ms: give up (lock_not_available) after waiting that long for the world lock.
DROP FUNCTION IF EXISTS dreamcatcher.claim_next_frame(text);
CREATE OR REPLACE FUNCTION dreamcatcher.claim_next_frame(p_world text, p_lock_timeout_ms integer DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_frame  bigint;
    v_status text;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('claim_next_frame');
    END IF;
    IF p_lock_timeout_ms IS NOT NULL THEN
        PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
    END IF;
    PERFORM pg_advisory_xact_lock(dreamcatcher.world_lock_key(p_world));
    SELECT f.frame, f.status INTO v_frame, v_status
      FROM dreamcatcher.frame_log f
     WHERE f.world = p_world AND f.status <> 'merged'
     ORDER BY f.frame LIMIT 1;
    IF NOT FOUND OR v_status <> 'closed' THEN
        RETURN NULL;
    END IF;
    UPDATE dreamcatcher.worlds SET horizon = greatest(coalesce(horizon, -1), v_frame)
     WHERE world = p_world AND horizon IS DISTINCT FROM greatest(coalesce(horizon, -1), v_frame);
    RETURN v_frame;
END $$;

-- ---------------------------------------------------------------------------
-- Stuck writers: sessions that hold one of a world's fences (the world lock, or
-- the lock of a frame not merged yet) while they do nothing. The merger ends
-- those idle for longer than the world's idle_writer_timeout (end_stuck_writers):
-- an idle transaction rolls back, and what it had appended was never
-- acknowledged. A session running a statement is not idle and is left alone
-- (bound those with statement_timeout: docs/operations.md).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.stuck_writers(p_world text)
RETURNS TABLE (pid integer, application_name text, usename text, state text, idle_for float8,
               xact_age float8, holds text[], over_limit boolean)
LANGUAGE sql STABLE AS $$
    WITH keys AS (
        SELECT dreamcatcher.world_lock_key(p_world) AS key, 'world' AS what
        UNION ALL
        SELECT dreamcatcher.frame_lock_key(p_world, f.frame), 'frame ' || f.frame
        FROM dreamcatcher.frame_log f WHERE f.world = p_world AND f.status <> 'merged'
    ), held AS (
        SELECT l.pid, array_agg(DISTINCT k.what ORDER BY k.what) AS holds
        FROM pg_catalog.pg_locks l JOIN keys k
          ON l.classid = ((k.key >> 32) & 4294967295)::oid AND l.objid = (k.key & 4294967295)::oid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
          AND l.pid <> pg_catalog.pg_backend_pid()
        GROUP BY l.pid
    )
    SELECT h.pid, a.application_name::text, a.usename::text, a.state::text,
           extract(epoch FROM clock_timestamp() - a.state_change)::float8,
           extract(epoch FROM clock_timestamp() - a.xact_start)::float8,
           h.holds,
           a.state IN ('idle', 'idle in transaction', 'idle in transaction (aborted)')
               AND a.state_change < clock_timestamp() - w.idle_writer_timeout
    FROM held h
    JOIN pg_catalog.pg_stat_activity a ON a.pid = h.pid
    LEFT JOIN dreamcatcher.worlds w ON w.world = p_world
    ORDER BY h.pid
$$;

-- End the stuck writers of a world that have been idle for longer than its idle_writer_timeout;
-- returns the sessions ended. With `init --roles` this runs with its owner's rights, for members
-- of the merger role: it ends nothing but sessions idle while holding this world's fences.
DROP FUNCTION IF EXISTS dreamcatcher.end_stuck_writers(text);
CREATE OR REPLACE FUNCTION dreamcatcher.end_stuck_writers(p_world text)
RETURNS TABLE (pid integer, application_name text, usename text, state text, idle_for float8, holds text[])
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT s.* FROM dreamcatcher.stuck_writers(p_world) s WHERE s.over_limit LOOP
        IF pg_catalog.pg_terminate_backend(r.pid, 5000) THEN
            pid := r.pid;
            application_name := r.application_name;
            usename := r.usename;
            state := r.state;
            idle_for := r.idle_for;
            holds := r.holds;
            RETURN NEXT;
        END IF;
    END LOOP;
END $$;
