-- Migration 0002: the cheap path of a single insert (issue 15, BENCHMARKS.md).
--
-- 1. The log's column checks become domains, and its id is taken 100 at a time per session. A table CHECK is re-read from its stored text
--    and planned again by every statement that inserts a row (measured: eight checks cost a
--    single-row INSERT into delta_log ~30 us of backend CPU, a third of the insert); a domain's
--    checks are prepared once per session and cached. What the log accepts is unchanged: the
--    same bounds, under the same constraint names (now on the domains), and the same SQLSTATE
--    (23514) for a value out of bounds. Clients still see bigint, text, timestamptz and jsonb
--    (PostgreSQL describes a domain column by its base type).
--    The domains are created empty, the columns take them (no rewrite of the table: a domain
--    without checks is binary-compatible), then the checks are added NOT VALID: the rows
--    already in the log passed the table checks when they were written, and are not re-read.
--
-- 2. append_open: the common case of append_delta (the frame is open, the key is new) as one
--    lock and one INSERT. It returns true when it stored the delta; anything else (no open
--    frame: NULL) leaves it to append_delta, the reference, and a key already stored raises
--    unique_violation (nothing is written: ask append_delta, which says duplicate or conflict).
--    On PostgreSQL 18 and later it is a SQL function (they cache their plans across calls
--    since 18: measured 92 us of backend CPU per call against 115 in plpgsql); on earlier
--    versions a SQL function is planned again at every call (255 us), so it is plpgsql there.
--
-- 3. open_frames: the rows of a batch's frames, made in a transaction of their own. A batch
--    that made a frame's row in its own transaction made every other writer of that frame wait
--    for its COMMIT (an insert of a key that an open transaction inserted waits for it): four
--    writers sending batches to a new frame took turns. The client calls it first when a batch
--    has a frame it has not seen yet.

-- ---------------------------------------------------------------------------
-- 1. The log's checks as domains.
-- ---------------------------------------------------------------------------
-- (the three views over the log must go while the columns change type; their grants, e.g. to the
-- reader role of `init --roles`, are kept here and given back below)
DROP TABLE IF EXISTS pg_temp.dc_0002_view_grants;
CREATE TEMPORARY TABLE dc_0002_view_grants AS
    SELECT c.relname::text AS view, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END AS grantee,
           a.privilege_type
    FROM pg_class c, aclexplode(c.relacl) a
    WHERE c.relnamespace = 'dreamcatcher'::regnamespace AND c.relname IN ('deltas', 'frames', 'frame_inputs')
      AND a.grantee <> c.relowner;
DROP VIEW IF EXISTS dreamcatcher.deltas;
DROP VIEW IF EXISTS dreamcatcher.frames;
DROP VIEW IF EXISTS dreamcatcher.frame_inputs;

DO $$
DECLARE
    c record;
BEGIN
    -- the domains, empty (safe to run twice, like the baseline: an init that finds no version
    -- recorded applies every migration again)
    FOR c IN SELECT * FROM (VALUES ('log_frame', 'bigint'), ('log_stream', 'text'),
                                   ('log_utc', 'timestamptz'), ('log_payload', 'jsonb')) AS v(name, base) LOOP
        IF to_regtype('dreamcatcher.' || c.name) IS NULL THEN
            EXECUTE format('CREATE DOMAIN dreamcatcher.%I AS %s', c.name, c.base);
        END IF;
    END LOOP;
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'dreamcatcher.delta_log'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE dreamcatcher.delta_log DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;

ALTER TABLE dreamcatcher.delta_log
    ALTER COLUMN frame TYPE dreamcatcher.log_frame,
    ALTER COLUMN stream_id TYPE dreamcatcher.log_stream,
    ALTER COLUMN utc TYPE dreamcatcher.log_utc,
    ALTER COLUMN payload TYPE dreamcatcher.log_payload;

-- The checks (each once):
--   frames up to 2^53 - 1 (exact in every JSON reader);
--   years 1-9999 (what every client language's clock holds; the merge turns a utc into
--   microseconds), an infinity being outside the range;
--   a payload is a JSON object, up to 16 MiB as stored, nested at most 64 levels (the object
--   is level 1).
DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('log_frame', 'delta_log_frame_range', 'CHECK (VALUE >= 0 AND VALUE <= 9007199254740991)'),
        ('log_stream', 'delta_log_stream_id_check', $c$CHECK (VALUE <> '' AND length(VALUE) <= 200)$c$),
        ('log_utc', 'delta_log_utc_range',
         $c$CHECK (VALUE >= '0001-01-01 00:00:00+00' AND VALUE < '10000-01-01 00:00:00+00')$c$),
        ('log_payload', 'delta_log_payload_check', $c$CHECK (jsonb_typeof(VALUE) = 'object')$c$),
        ('log_payload', 'delta_log_payload_size', 'CHECK (pg_column_size(VALUE) <= 16777216)'),
        ('log_payload', 'delta_log_payload_depth',
         $c$CHECK (NOT jsonb_path_exists(VALUE, 'strict $.**{64 to last}'))$c$)
    ) AS v(domain, name, def) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                       WHERE contypid = ('dreamcatcher.' || c.domain)::regtype AND conname = c.name) THEN
            EXECUTE format('ALTER DOMAIN dreamcatcher.%I ADD CONSTRAINT %I %s NOT VALID', c.domain, c.name, c.def);
        END IF;
    END LOOP;
END $$;

-- (the three views over the log, as 0001 made them; `deltas` stays auto-updatable, so an UPDATE
-- or DELETE through it meets the log's append-only trigger)
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

CREATE OR REPLACE VIEW dreamcatcher.frame_inputs AS
    SELECT d.world, d.frame AS into_frame, d.frame, d.stream_id, d.utc, d.payload, d.late
    FROM dreamcatcher.delta_log d
    WHERE NOT d.late
    UNION ALL
    SELECT d.world, x.merged_in, d.frame, d.stream_id, d.utc, d.payload, d.late
    FROM dreamcatcher.deferred_log x
    JOIN dreamcatcher.delta_log d USING (world, frame, stream_id, utc);

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM dc_0002_view_grants LOOP
        EXECUTE format('GRANT %s ON dreamcatcher.%I TO %s', g.privilege_type, g.view, g.grantee);
    END LOOP;
END $$;
DROP TABLE dc_0002_view_grants;

-- entity_items returns rows of frame_inputs from plpgsql, which wants the declared types exactly:
-- the log's columns are read back in their base types (the function is 0001's otherwise).
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
            SELECT d.into_frame::bigint, d.frame::bigint, d.stream_id::text, d.utc::timestamptz, k.key,
                   i.rank, x.pos, i.data
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

-- The log's id: each session takes 100 numbers at a time. Every insert took the next number
-- from the one sequence page, under its lock: 64 writers waited on it in turn (measured: a
-- single-row INSERT into the log cost the backend 181 us under 64 writers, 122 with the cache).
-- The id orders nothing (a delta's order is its key); numbers now come in blocks per session.
ALTER TABLE dreamcatcher.delta_log ALTER COLUMN id SET CACHE 100;

-- ---------------------------------------------------------------------------
-- 2. append_open.
-- ---------------------------------------------------------------------------

-- note_expected_stream as a value (a SQL function's statement can call it only so).
CREATE OR REPLACE FUNCTION dreamcatcher.noted_expected_stream(
    p_world text, p_stream text, p_frame bigint, p_utc timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dreamcatcher.note_expected_stream(p_world, p_stream, p_frame, ARRAY[p_utc]);
    RETURN true;
END $$;

DO $do$
BEGIN
    IF current_setting('server_version_num')::integer >= 180000 THEN
        -- A VOLATILE SQL function takes a new snapshot for each statement: the INSERT's is
        -- taken after the lock, so a close that committed first is seen (the fence).
        CREATE OR REPLACE FUNCTION dreamcatcher.append_open(
            p_world text, p_stream text, p_frame bigint, p_utc timestamptz, p_payload jsonb)
        RETURNS boolean
        LANGUAGE sql VOLATILE AS $f$
            SELECT dreamcatcher.refuse_isolation('append_open')
             WHERE current_setting('transaction_isolation') <> 'read committed';
            SELECT pg_advisory_xact_lock_shared(dreamcatcher.frame_lock_key(p_world, p_frame));
            WITH stored AS (
                INSERT INTO dreamcatcher.delta_log AS d (world, frame, stream_id, utc, payload)
                SELECT p_world, p_frame, p_stream, p_utc, p_payload
                  FROM dreamcatcher.frame_log fl
                 WHERE fl.world = p_world AND fl.frame = p_frame AND fl.status = 'open'
                RETURNING (SELECT d.stream_id = ANY (w.expected_streams)
                             FROM dreamcatcher.worlds w WHERE w.world = d.world) AS expected
            )
            SELECT CASE WHEN s.expected THEN dreamcatcher.noted_expected_stream(p_world, p_stream, p_frame, p_utc)
                        ELSE true END
              FROM stored s;
        $f$;
    ELSE
        CREATE OR REPLACE FUNCTION dreamcatcher.append_open(
            p_world text, p_stream text, p_frame bigint, p_utc timestamptz, p_payload jsonb)
        RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $f$
        DECLARE
            v_expected boolean;
        BEGIN
            IF current_setting('transaction_isolation') <> 'read committed' THEN
                PERFORM dreamcatcher.refuse_isolation('append_open');
            END IF;
            PERFORM pg_advisory_xact_lock_shared(dreamcatcher.frame_lock_key(p_world, p_frame));
            INSERT INTO dreamcatcher.delta_log AS d (world, frame, stream_id, utc, payload)
            SELECT p_world, p_frame, p_stream, p_utc, p_payload
              FROM dreamcatcher.frame_log fl
             WHERE fl.world = p_world AND fl.frame = p_frame AND fl.status = 'open'
            RETURNING (SELECT d.stream_id = ANY (w.expected_streams)
                         FROM dreamcatcher.worlds w WHERE w.world = d.world)
            INTO v_expected;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            IF v_expected THEN
                PERFORM dreamcatcher.note_expected_stream(p_world, p_stream, p_frame, ARRAY[p_utc]);
            END IF;
            RETURN true;
        END $f$;
    END IF;
END $do$;

-- ---------------------------------------------------------------------------
-- 3. open_frames.
-- ---------------------------------------------------------------------------
-- Make sure each frame of a batch has its row (under its fence, with ensure_frame's checks: the
-- horizon and max_frame_ahead), committed by the caller's own short transaction. Returns the
-- frames that are not open. Appends nothing: the batch still takes its fence in its own
-- transaction (copy_begin, append_deltas).
CREATE OR REPLACE FUNCTION dreamcatcher.open_frames(p_world text, p_frames bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        PERFORM dreamcatcher.refuse_isolation('open_frames');
    END IF;
    PERFORM dreamcatcher.check_batch('open_frames', p_frames, NULL);
    RETURN dreamcatcher.fence_frames(p_world, p_frames);
END $$;

COMMENT ON FUNCTION dreamcatcher.append_open(text, text, bigint, timestamptz, jsonb) IS
    'The common case of append_delta: true when the delta was stored (its frame open, its key new); '
    'NULL when the frame is not open (call append_delta); a key already stored raises unique_violation '
    '(call append_delta: duplicate or conflict). Only for sessions that may INSERT into delta_log.';
