-- sql/{schema.sql,merge.sql,rules.sql,timetravel.sql,views.sql} of commit bdaf6f5, in the order its init applied them.
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

-- dreamcatcher_pg merge: the helpers every compiled rule set merges with.
--
-- A frame is merged by dreamcatcher.merge_frame(world, frame) (sql/rules.sql) in the
-- caller's transaction, with the rule set in effect for the frame. Deltas apply in
-- ascending (frame, utc, stream_id, rule, position) order; stream_id compares in the
-- "C" collation so the order is the same in every database. Nothing here depends on insert ids, arrival order or time.

-- ---------------------------------------------------------------------------
-- Tolerant readers for messy JSON.
-- ---------------------------------------------------------------------------

-- A scalar as text: strings as themselves, numbers and booleans as written.
CREATE OR REPLACE FUNCTION dreamcatcher.jtext(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j)
               WHEN 'string' THEN nullif(btrim(j #>> '{}'), '')
               WHEN 'number' THEN j::text
               ELSE NULL
           END
$$;

-- An integer (a JSON integer or a string of digits) that fits a bigint, else NULL.
CREATE OR REPLACE FUNCTION dreamcatcher.jint(j jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
               -- an integral number of at most 18 digits (1.0 is not an integer here, 1e3 is)
               WHEN jsonb_typeof(j) = 'number'
                   THEN CASE WHEN scale(j::numeric) = 0 AND abs(j::numeric) < 1e18 THEN j::numeric::bigint END
               WHEN jsonb_typeof(j) = 'string' AND btrim(j #>> '{}') ~ '^-?[0-9]{1,18}$'
                   THEN (btrim(j #>> '{}'))::bigint
               ELSE NULL
           END
$$;

-- Rename the first alias present (and not null) to its canonical name, unless the
-- canonical name already holds a value (then nothing is renamed and nothing is lost).
CREATE OR REPLACE FUNCTION dreamcatcher.jrename(j jsonb, canon text, aliases text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    a text;
BEGIN
    IF jsonb_typeof(j) <> 'object' OR NOT (j ?| aliases)
       OR (j ? canon AND jsonb_typeof(j -> canon) <> 'null') THEN
        RETURN j;
    END IF;
    FOREACH a IN ARRAY aliases LOOP
        IF jsonb_typeof(j -> a) <> 'null' THEN
            RETURN (j - a) || jsonb_build_object(canon, j -> a);
        END IF;
    END LOOP;
    RETURN j;
END $$;

-- The 64-bit content hash of one entity version (kind, key, data).
CREATE OR REPLACE FUNCTION dreamcatcher.entity_hash(p_kind text, p_ekey text, p_data jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (('x' || left(md5(p_kind || E'\x1f' || p_ekey || E'\x1f' || p_data::text), 16))::bit(64)::bigint)::numeric
$$;

-- The printable state hash for an accumulator (a sum of entity hashes mod 2^64).
CREATE OR REPLACE FUNCTION dreamcatcher.state_hash_text(p_acc numeric) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lpad(to_hex((CASE WHEN m >= 9223372036854775808 THEN m - 18446744073709551616 ELSE m END)::bigint), 16, '0')
    FROM (SELECT mod(mod(p_acc, 18446744073709551616) + 18446744073709551616, 18446744073709551616) AS m) s
$$;

-- Fold JSON objects left to right with ||: a later object's top-level fields win. Ordered by
-- apply order this is "each field last-write-wins"; ordered backwards, "first write wins".
DO $$
BEGIN
    IF to_regprocedure('dreamcatcher.jsonb_fold(jsonb)') IS NULL THEN
        CREATE AGGREGATE dreamcatcher.jsonb_fold(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb, INITCOND = '{}');
    END IF;
END $$;

-- The fold of a JSON array of objects, for an entity with many items in one frame: the same
-- result as jsonb_fold over the elements in order (a later element's top-level fields win), in
-- time linear in the fields. jsonb_fold copies its growing result at every step: for one entity
-- given thousands of distinct fields in one frame that is quadratic (minutes for one delta).
-- jsonb_object_agg keeps the last value of a key given twice.
CREATE OR REPLACE FUNCTION dreamcatcher.jsonb_fold_many(p_objects jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(f.key, f.value ORDER BY a.o), '{}'::jsonb)
    FROM jsonb_array_elements(p_objects) WITH ORDINALITY AS a(d, o)
    CROSS JOIN LATERAL jsonb_each(a.d) AS f
$$;

-- ---------------------------------------------------------------------------
-- What every rule set's compiled merge (sql/rules.sql, dreamcatcher_pg/rules) reads with.
-- ---------------------------------------------------------------------------

-- Keys that describe the delta itself (its envelope: DESIGN.md §6), not state: neither
-- merged nor counted.
CREATE OR REPLACE FUNCTION dreamcatcher.is_meta_key(p_key text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_key IN ('frame', 'stream_id', 'utc', '_meta', 'completed_at')
$$;

-- A rule key's value as a list of items: an array as itself, null as empty, anything else as
-- a list of one.
CREATE OR REPLACE FUNCTION dreamcatcher.jlist(j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j) WHEN 'array' THEN j WHEN 'null' THEN '[]'::jsonb ELSE jsonb_build_array(j) END
$$;

-- An entity key longer than an index entry can hold (~2.7 kB) would fail the whole frame,
-- forever: such an item is unreadable.
CREATE OR REPLACE FUNCTION dreamcatcher.long_key_reason(p_ekey text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN octet_length(p_ekey) > 1024 THEN 'entity key is longer than 1024 bytes' END
$$;

-- The deltas that a merge of `frame` takes: the frame's own (not late), plus
-- the late ones deferred into it.
CREATE OR REPLACE FUNCTION dreamcatcher.frame_deltas(p_world text, p_frame bigint)
RETURNS TABLE (frame bigint, stream_id text, utc timestamptz, payload jsonb)
LANGUAGE sql STABLE AS $$
    SELECT d.frame, d.stream_id, d.utc, d.payload
    FROM dreamcatcher.delta_log d
    WHERE d.world = p_world AND d.frame = p_frame AND NOT d.late
    UNION ALL
    SELECT d.frame, d.stream_id, d.utc, d.payload
    FROM dreamcatcher.deferred_log x
    JOIN dreamcatcher.delta_log d USING (world, frame, stream_id, utc)
    WHERE x.world = p_world AND x.merged_in = p_frame
$$;

-- The readers of the rules that were written by hand before rules were a declaration.
DROP FUNCTION IF EXISTS dreamcatcher.read_item(text, jsonb, bigint, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS dreamcatcher.read_post(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_agent(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_comment(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_reaction(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_chapter(jsonb);
DROP FUNCTION IF EXISTS dreamcatcher.read_observation(jsonb, bigint, text, timestamptz, bigint);
DROP FUNCTION IF EXISTS dreamcatcher.rule_rank(text);

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

-- dreamcatcher_pg public SQL surface: views of the current state, the log and
-- the frames, and the time-travel functions (*_at) and diff.
-- Every entity view has: world, its key columns, data, first_frame, last_frame.

CREATE OR REPLACE VIEW dreamcatcher.deltas AS
    SELECT world, frame, stream_id, utc, payload, late, inserted_at, id
    FROM dreamcatcher.delta_log;

CREATE OR REPLACE VIEW dreamcatcher.frames AS
    SELECT f.world, f.frame, f.status,
           coalesce(f.delta_count,
                    (SELECT count(*) FROM dreamcatcher.delta_log d
                     WHERE d.world = f.world AND d.frame = f.frame AND NOT d.late)) AS delta_count,
           f.state_hash, f.closed_at, f.merged_at, f.opened_at, f.close_reason, f.stats,
           f.rules,  -- the rule set that merged the frame (dreamcatcher.rule_sets)
           f.merge_started_at  -- when its merge began (merged_at - merge_started_at: its duration)
    FROM dreamcatcher.frame_log f;

-- The leader merger of each world (its last heartbeat), and whether its session holds the lock now.
CREATE OR REPLACE VIEW dreamcatcher.leaders AS
    SELECT m.world, m.holder, m.backend_pid, m.started_at, m.heartbeat_at,
           dreamcatcher.leader_lock_holder(m.world) IS NOT DISTINCT FROM m.backend_pid AS holds_lock
    FROM dreamcatcher.mergers m;

-- What the merge of each frame takes (what merge_frame reads through frame_deltas): the frame's
-- own deltas, and the late ones deferred into it (their `frame` is the one they were written for).
CREATE OR REPLACE VIEW dreamcatcher.frame_inputs AS
    SELECT d.world, d.frame AS into_frame, d.frame, d.stream_id, d.utc, d.payload, d.late
    FROM dreamcatcher.delta_log d
    WHERE NOT d.late
    UNION ALL
    SELECT d.world, x.merged_in, d.frame, d.stream_id, d.utc, d.payload, d.late
    FROM dreamcatcher.deferred_log x
    JOIN dreamcatcher.delta_log d USING (world, frame, stream_id, utc);

CREATE OR REPLACE VIEW dreamcatcher.quarantine AS
    SELECT q.world, q.frame, q.stream_id, q.reason, q.item, q.utc, q.key, q.position, q.merged_in,
           q.noted_at, q.id
    FROM dreamcatcher.quarantine_log q;

-- attempted_at: the first attempt; attempts: how many (a retry of the same delta counts here)
CREATE OR REPLACE VIEW dreamcatcher.late_attempts AS
    SELECT l.world, l.frame, l.stream_id, l.utc, l.policy, l.payload, l.attempted_at, l.id,
           l.attempts, coalesce(l.last_attempt_at, l.attempted_at) AS last_attempt_at
    FROM dreamcatcher.late_log l;

-- Current state (same shape as entities_at).
CREATE OR REPLACE VIEW dreamcatcher.entities AS
    SELECT v.world, v.kind, v.ekey, v.data, v.first_frame, v.valid_from AS last_frame
    FROM dreamcatcher.entity_versions v WHERE v.valid_to IS NULL;

-- posts ----------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.posts AS
    SELECT e.world, (e.data ->> 'number')::bigint AS number, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'post';
CREATE OR REPLACE FUNCTION dreamcatcher.posts_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, number bigint, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, (e.data ->> 'number')::bigint, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'post', p_frame) e
$$;

-- One post as it was right after `frame` merged (uses the primary key).
CREATE OR REPLACE FUNCTION dreamcatcher.post_at(p_world text, p_number bigint, p_frame bigint)
RETURNS TABLE (world text, number bigint, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, (e.data ->> 'number')::bigint, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entity_at(p_world, 'post', p_number::text, p_frame) e
$$;

-- agents ---------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.agents AS
    SELECT e.world, e.ekey AS id, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'agent';
CREATE OR REPLACE FUNCTION dreamcatcher.agents_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, id text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, e.ekey, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'agent', p_frame) e
$$;

-- comments -------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.comments AS
    SELECT e.world, dreamcatcher.jtext(e.data -> 'id') AS id,
           dreamcatcher.jint(e.data -> 'discussion') AS discussion,
           dreamcatcher.jtext(e.data -> 'author') AS author,
           e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'comment';
CREATE OR REPLACE FUNCTION dreamcatcher.comments_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, id text, discussion bigint, author text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, dreamcatcher.jtext(e.data -> 'id'), dreamcatcher.jint(e.data -> 'discussion'),
           dreamcatcher.jtext(e.data -> 'author'), e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'comment', p_frame) e
$$;

-- reactions ------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.reactions AS
    SELECT e.world, e.data ->> 'target' AS target, e.data ->> 'type' AS type,
           e.data ->> 'author' AS author, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'reaction';
CREATE OR REPLACE FUNCTION dreamcatcher.reactions_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, target text, type text, author text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, e.data ->> 'target', e.data ->> 'type', e.data ->> 'author',
           e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'reaction', p_frame) e
$$;

-- chapters -------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.chapters AS
    SELECT e.world, e.data ->> 'book' AS book, e.data ->> 'agent' AS agent,
           (e.data ->> 'chapter')::bigint AS chapter, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'chapter';
CREATE OR REPLACE FUNCTION dreamcatcher.chapters_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, book text, agent text, chapter bigint, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, e.data ->> 'book', e.data ->> 'agent', (e.data ->> 'chapter')::bigint,
           e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'chapter', p_frame) e
$$;

-- books ----------------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.books AS
    SELECT e.world, e.ekey AS book, (e.data ->> 'target')::bigint AS target,
           (e.data ->> 'compiled_frame')::bigint AS compiled_frame, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'book';
CREATE OR REPLACE FUNCTION dreamcatcher.books_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, book text, target bigint, compiled_frame bigint, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, e.ekey, (e.data ->> 'target')::bigint, (e.data ->> 'compiled_frame')::bigint,
           e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'book', p_frame) e
$$;

-- observations ---------------------------------------------------------------
CREATE OR REPLACE VIEW dreamcatcher.observations AS
    SELECT e.world, (e.ekey::jsonb ->> 0)::bigint AS frame, e.ekey::jsonb ->> 1 AS stream_id,
           e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities e WHERE e.kind = 'observation';
CREATE OR REPLACE FUNCTION dreamcatcher.observations_at(p_world text, p_frame bigint)
RETURNS TABLE (world text, frame bigint, stream_id text, data jsonb, first_frame bigint, last_frame bigint)
LANGUAGE sql STABLE AS $$
    SELECT e.world, (e.ekey::jsonb ->> 0)::bigint, e.ekey::jsonb ->> 1, e.data, e.first_frame, e.last_frame
    FROM dreamcatcher.entities_at(p_world, 'observation', p_frame) e
$$;

-- diff -----------------------------------------------------------------------
-- What changed between the state after frame_a and the state after frame_b:
-- one row per entity added, removed or changed (with the changed fields).
-- Reads only the entities with a version started between the two frames.
CREATE OR REPLACE FUNCTION dreamcatcher.diff(p_world text, p_frame_a bigint, p_frame_b bigint)
RETURNS TABLE (kind text, ekey text, change text, before jsonb, after jsonb, fields text[])
LANGUAGE sql STABLE AS $$
    SELECT * FROM dreamcatcher.entity_changes(p_world, p_frame_a, p_frame_b)
$$;
