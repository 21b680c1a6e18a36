-- dreamcatcher_pg roles: untrusted writers.
--
-- Applied by `dreamcatcher init --roles` (dreamcatcher_pg.roles.create_roles), never by
-- a plain `init`, which must have run first. Safe to run twice.
--
-- The model:
--   * A worker appends deltas only through dreamcatcher.append_delta, append_deltas and
--     close_frame. Here they become SECURITY DEFINER (they run with their owner's
--     rights); a worker has no privilege on any table it could write, so those three
--     functions are its only way in.
--   * Who may write which stream is data: dreamcatcher.stream_owners maps
--     (world, stream_id) to a role. The login role of the session (session_user; SET ROLE
--     does not change it) may write a stream when it is a member of the stream's role,
--     and may close frames of the worlds where it owns at least one stream.
--   * The check is made by triggers on the tables those functions write (delta_log,
--     late_log, frame_log, worlds), so the bodies of the functions stay in the migrations.
--     A session whose login role holds the table privilege itself (the schema owner,
--     superusers, the merger for frame_log) could make that write directly anyway: it is
--     not checked. Everybody else must own the stream (or the world).
--   * A worker's payloads are limited per stream (stream_owners.max_payload_bytes), since a
--     client-side limit binds only the clients that keep it.
--   * The entry points check who is asking before they take any lock (check_writer).
--   * pg_notify and the advisory-lock functions stay executable by PUBLIC unless asked
--     (--restrict-lock-functions): that would change the database for every application in it.
--     A worker that takes a world's locks by hand is ended by the merger (see install_roles).
--     The NOTIFY command cannot be revoked; a notification is only a wake-up.
--   * A migration that re-creates the three functions turns them back into SECURITY
--     INVOKER: `init` applies this file again afterwards when roles are installed (were it
--     not, workers would fail closed, 42501, until `init --roles` ran again).

CREATE TABLE IF NOT EXISTS dreamcatcher.stream_owners (
    world      text        NOT NULL CHECK (world <> '' AND length(world) <= 200),
    stream_id  text        NOT NULL CHECK (stream_id <> '' AND length(stream_id) <= 200),
    role_name  name        NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (world, stream_id)
);
-- The largest payload a worker may append to the stream, in bytes of the payload's text as
-- PostgreSQL prints it (jsonb adds a space after every ':' and ','; DeltaClient counts compact
-- JSON, default 1 MiB, so the default here is twice that). The client's limit is the worker's
-- own business; this one holds whatever a worker sends.
ALTER TABLE dreamcatcher.stream_owners
    ADD COLUMN IF NOT EXISTS max_payload_bytes integer NOT NULL DEFAULT 2097152 CHECK (max_payload_bytes > 0);
CREATE INDEX IF NOT EXISTS stream_owners_role ON dreamcatcher.stream_owners (role_name);

-- ---------------------------------------------------------------------------
-- The checks. SECURITY DEFINER so that they read stream_owners whoever asks;
-- a worker may call them to learn what it may write.
-- ---------------------------------------------------------------------------

-- The payload limit of stream p_stream of world p_world when the session's login role may
-- write it, else NULL. (PL/pgSQL rather than SQL: its plan is prepared once per session.)
CREATE OR REPLACE FUNCTION dreamcatcher.session_stream_limit(p_world text, p_stream text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT o.max_payload_bytes FROM dreamcatcher.stream_owners o
            JOIN pg_catalog.pg_roles r ON r.rolname = o.role_name
            WHERE o.world = p_world AND o.stream_id = p_stream
              AND pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'));
END $$;

-- May the session's login role write stream p_stream of world p_world?
CREATE OR REPLACE FUNCTION dreamcatcher.session_owns_stream(p_world text, p_stream text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT dreamcatcher.session_stream_limit(p_world, p_stream) IS NOT NULL
$$;

-- Does the session's login role own at least one stream of world p_world?
CREATE OR REPLACE FUNCTION dreamcatcher.session_writes_world(p_world text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM dreamcatcher.stream_owners o
        JOIN pg_catalog.pg_roles r ON r.rolname = o.role_name
        WHERE o.world = p_world
          AND pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'));
END $$;

-- The entry points' first check, before any lock (see dreamcatcher.check_writer in sql/migrations/):
-- the session's login role must own the stream (p_stream NULL: some stream of the world).
-- A session whose login holds the table privilege itself is not checked (as in the triggers).
CREATE OR REPLACE FUNCTION dreamcatcher.check_writer(p_world text, p_stream text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_stream IS NULL THEN
        IF NOT has_table_privilege(session_user, 'dreamcatcher.frame_log', 'INSERT')
           AND NOT has_any_column_privilege(session_user, 'dreamcatcher.frame_log', 'UPDATE')
           AND NOT dreamcatcher.session_writes_world(p_world) THEN
            RAISE EXCEPTION 'role % may not open or close frames of world %', session_user, quote_literal(p_world)
                USING ERRCODE = '42501',
                      HINT = 'A worker closes frames only in worlds where it owns a stream.';
        END IF;
    ELSIF NOT has_table_privilege(session_user, 'dreamcatcher.delta_log', 'INSERT')
          AND dreamcatcher.session_stream_limit(p_world, p_stream) IS NULL THEN
        RAISE EXCEPTION 'role % may not write stream % of world %',
                        session_user, quote_literal(p_stream), quote_literal(p_world)
            USING ERRCODE = '42501',
                  HINT = 'The stream''s owner is set with dreamcatcher.grant_stream(world, stream_id, role).';
    END IF;
END $$;

-- delta_log: every row of the statement must be of a stream the session owns.
CREATE OR REPLACE FUNCTION dreamcatcher.tg_delta_log_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r       record;
    v_limit integer;
BEGIN
    IF has_table_privilege(session_user, TG_RELID, 'INSERT') THEN
        RETURN NULL;
    END IF;
    FOR r IN SELECT n.world, n.stream_id, max(octet_length(n.payload::text)) AS size
             FROM new_rows n GROUP BY n.world, n.stream_id LOOP
        v_limit := dreamcatcher.session_stream_limit(r.world, r.stream_id);
        IF v_limit IS NULL THEN
            RAISE EXCEPTION 'role % may not write stream % of world %',
                            session_user, quote_literal(r.stream_id), quote_literal(r.world)
                USING ERRCODE = '42501',
                      HINT = 'The stream''s owner is set with dreamcatcher.grant_stream(world, stream_id, role).';
        END IF;
        IF r.size > v_limit THEN
            RAISE EXCEPTION 'a payload of % bytes is over the limit of stream % of world % (% bytes)',
                            r.size, quote_literal(r.stream_id), quote_literal(r.world), v_limit
                USING ERRCODE = '54000';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER delta_log_check_owner
    AFTER INSERT ON dreamcatcher.delta_log
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION dreamcatcher.tg_delta_log_owner();

-- late_log: a late attempt is recorded only for a stream the session owns.
CREATE OR REPLACE FUNCTION dreamcatcher.tg_late_log_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_limit integer;
BEGIN
    IF has_table_privilege(session_user, TG_RELID, 'INSERT') THEN
        RETURN NEW;  -- (a separate IF: the check function is not even looked up then)
    END IF;
    v_limit := dreamcatcher.session_stream_limit(NEW.world, NEW.stream_id);
    IF v_limit IS NULL THEN
        RAISE EXCEPTION 'role % may not write stream % of world %',
                        session_user, quote_literal(NEW.stream_id), quote_literal(NEW.world)
            USING ERRCODE = '42501';
    END IF;
    IF octet_length(NEW.payload::text) > v_limit THEN
        RAISE EXCEPTION 'a payload of % bytes is over the limit of stream % of world % (% bytes)',
                        octet_length(NEW.payload::text), quote_literal(NEW.stream_id), quote_literal(NEW.world),
                        v_limit
            USING ERRCODE = '54000';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER late_log_check_owner
    BEFORE INSERT ON dreamcatcher.late_log
    FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_late_log_owner();

-- frame_log and worlds: a frame is opened or closed (and a world created) only in a world
-- where the session owns a stream.
CREATE OR REPLACE FUNCTION dreamcatcher.tg_world_writer() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- (the merger may UPDATE some columns of frame_log and worlds: column privileges)
    IF has_table_privilege(session_user, TG_RELID, TG_OP)
       OR (TG_OP = 'UPDATE' AND has_any_column_privilege(session_user, TG_RELID, 'UPDATE')) THEN
        RETURN NEW;  -- (a separate IF: the check function is not even looked up then)
    END IF;
    IF NOT dreamcatcher.session_writes_world(NEW.world) THEN
        RAISE EXCEPTION 'role % may not open or close frames of world %', session_user, quote_literal(NEW.world)
            USING ERRCODE = '42501',
                  HINT = 'A worker closes frames only in worlds where it owns a stream.';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER frame_log_check_writer
    BEFORE INSERT OR UPDATE ON dreamcatcher.frame_log
    FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_world_writer();

CREATE OR REPLACE TRIGGER worlds_check_writer
    BEFORE INSERT OR UPDATE ON dreamcatcher.worlds
    FOR EACH ROW EXECUTE FUNCTION dreamcatcher.tg_world_writer();

-- ---------------------------------------------------------------------------
-- The worker's entry points run with their owner's rights. A pinned search_path:
-- nothing a caller creates can stand in for what they call.
-- ---------------------------------------------------------------------------
ALTER FUNCTION dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dreamcatcher.append_deltas(text, text, bigint[], timestamptz[], jsonb[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION dreamcatcher.close_frame(text, bigint, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

REVOKE EXECUTE ON FUNCTION dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.append_deltas(text, text, bigint[], timestamptz[], jsonb[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.close_frame(text, bigint, text) FROM PUBLIC;
-- (the COPY path is for sessions that may INSERT into delta_log themselves; a worker appends
-- through append_deltas, and may not take the frame locks this function takes)
REVOKE EXECUTE ON FUNCTION dreamcatcher.copy_begin(text, text, bigint[], timestamptz[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.copy_begin(text, text, bigint[]) FROM PUBLIC;
-- (the same for the cheap path of a single insert: a worker appends through append_delta)
REVOKE EXECUTE ON FUNCTION dreamcatcher.append_open(text, text, bigint, timestamptz, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.open_frames(text, bigint[]) FROM PUBLIC;
-- a standby merger ends the session of a silent leader of another login (only that one)
ALTER FUNCTION dreamcatcher.end_silent_leader(text, float8)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION dreamcatcher.end_silent_leader(text, float8) FROM PUBLIC;
-- the leader merger ends sessions idle while they hold a fence of its world (only those)
ALTER FUNCTION dreamcatcher.end_stuck_writers(text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION dreamcatcher.end_stuck_writers(text) FROM PUBLIC;
-- the merger's own work (a worker could otherwise take the world lock through the claim)
REVOKE EXECUTE ON FUNCTION dreamcatcher.claim_next_frame(text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.merge_frame(text, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.merge_frame_with(text, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.ensure_frame(text, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.session_stream_limit(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.session_owns_stream(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.session_writes_world(text) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- Stream ownership, managed by the schema owner.
-- ---------------------------------------------------------------------------

-- Let members of p_role write stream p_stream of world p_world (replaces its owner and, when
-- given, its payload limit).
DROP FUNCTION IF EXISTS dreamcatcher.grant_stream(text, text, name);
CREATE OR REPLACE FUNCTION dreamcatcher.grant_stream(
    p_world text, p_stream text, p_role name, p_max_payload_bytes integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = p_role) THEN
        RAISE EXCEPTION 'role % does not exist', quote_ident(p_role) USING ERRCODE = '42704';
    END IF;
    INSERT INTO dreamcatcher.stream_owners AS o (world, stream_id, role_name, max_payload_bytes)
    VALUES (p_world, p_stream, p_role, coalesce(p_max_payload_bytes, 2097152))
    ON CONFLICT (world, stream_id) DO UPDATE
       SET role_name = excluded.role_name, granted_at = excluded.granted_at,
           max_payload_bytes = coalesce(p_max_payload_bytes, o.max_payload_bytes)
     WHERE o.role_name IS DISTINCT FROM excluded.role_name
        OR o.max_payload_bytes IS DISTINCT FROM coalesce(p_max_payload_bytes, o.max_payload_bytes);
END $$;

-- Nobody may write the stream any more (but the owner and superusers). True if it had an owner.
CREATE OR REPLACE FUNCTION dreamcatcher.revoke_stream(p_world text, p_stream text) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM dreamcatcher.stream_owners WHERE world = p_world AND stream_id = p_stream
                  RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

REVOKE EXECUTE ON FUNCTION dreamcatcher.grant_stream(text, text, name, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION dreamcatcher.revoke_stream(text, text) FROM PUBLIC;

-- ---------------------------------------------------------------------------
-- The roles: <prefix>_worker, <prefix>_merger, <prefix>_reader (NOLOGIN group roles;
-- grant them to login users). Roles are cluster-wide, privileges per database: run
-- this in every database that holds a dreamcatcher schema. Returns the role names.
-- ---------------------------------------------------------------------------
DROP FUNCTION IF EXISTS dreamcatcher.install_roles(text);
CREATE OR REPLACE FUNCTION dreamcatcher.install_roles(p_prefix text, p_restrict_lock_functions boolean DEFAULT false)
RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_reader text := p_prefix || '_reader';
    v_worker text := p_prefix || '_worker';
    v_merger text := p_prefix || '_merger';
    v_owner  name;
    v_role   text;
    r        record;
BEGIN
    IF p_prefix IS NULL OR p_prefix = '' OR octet_length(v_reader) > 63 OR octet_length(v_worker) > 63
       OR octet_length(v_merger) > 63 THEN
        RAISE EXCEPTION 'role prefix % is empty or too long (a role name has at most 63 bytes)',
                        quote_literal(coalesce(p_prefix, '')) USING ERRCODE = '22023';
    END IF;

    FOREACH v_role IN ARRAY ARRAY[v_reader, v_worker, v_merger] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a run on another database of the cluster
            END;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role AND (rolsuper OR rolbypassrls)) THEN
            RAISE EXCEPTION 'role % exists and is a superuser or bypasses row security; '
                            'refusing to use it as a dreamcatcher group role', quote_ident(v_role)
                USING ERRCODE = '42501';
        END IF;
    END LOOP;

    EXECUTE format('GRANT USAGE ON SCHEMA dreamcatcher TO %I, %I, %I', v_reader, v_worker, v_merger);

    -- reader: the views; the time-travel functions (*_at, diff) read entity_versions with
    -- the caller's rights, so it may read that table too
    FOR r IN SELECT c.oid::regclass AS rel FROM pg_class c
             WHERE c.relnamespace = 'dreamcatcher'::regnamespace AND c.relkind IN ('v', 'm') LOOP
        EXECUTE format('GRANT SELECT ON %s TO %I', r.rel, v_reader);
    END LOOP;
    EXECUTE format('GRANT SELECT ON dreamcatcher.entity_versions TO %I', v_reader);

    -- worker: reads what the reader reads, plus the frame status (DeltaClient.frame_status,
    -- wait_merged); writes only through the three entry points
    EXECUTE format('GRANT %I TO %I', v_reader, v_worker);
    EXECUTE format('GRANT SELECT ON dreamcatcher.worlds, dreamcatcher.frame_log TO %I', v_worker);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb),'
                   ' dreamcatcher.append_deltas(text, text, bigint[], timestamptz[], jsonb[]),'
                   ' dreamcatcher.close_frame(text, bigint, text),'
                   ' dreamcatcher.session_stream_limit(text, text),'
                   ' dreamcatcher.session_owns_stream(text, text),'
                   ' dreamcatcher.session_writes_world(text) TO %I', v_worker);

    -- merger: reads everything, writes the state, never the log
    EXECUTE format('GRANT %I TO %I', v_reader, v_merger);
    -- (only the columns the merge writes: the merger does not configure worlds)
    -- (a REVOKE of the table-wide grants of earlier versions; it takes the column grants with it)
    EXECUTE format('REVOKE UPDATE ON dreamcatcher.frame_log, dreamcatcher.worlds, dreamcatcher.entity_versions, '
                   'dreamcatcher.mergers FROM %I', v_merger);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA dreamcatcher TO %I', v_merger);
    EXECUTE format('GRANT INSERT ON dreamcatcher.entity_versions, dreamcatcher.mergers TO %I', v_merger);
    EXECUTE format('GRANT UPDATE (valid_to) ON dreamcatcher.entity_versions TO %I', v_merger);
    EXECUTE format('GRANT UPDATE (holder, backend_pid, started_at, heartbeat_at, leader_timeout) '
                   'ON dreamcatcher.mergers TO %I', v_merger);
    EXECUTE format('GRANT INSERT ON dreamcatcher.quarantine_log, dreamcatcher.deferred_log TO %I', v_merger);
    EXECUTE format('GRANT UPDATE (status, merge_started_at, merged_at, delta_count, state_acc, state_hash, stats, rules) '
                   'ON dreamcatcher.frame_log TO %I', v_merger);
    EXECUTE format('GRANT UPDATE (horizon) ON dreamcatcher.worlds TO %I', v_merger);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dreamcatcher.close_frame(text, bigint, text) TO %I', v_merger);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dreamcatcher.end_silent_leader(text, float8) TO %I', v_merger);
    EXECUTE format('GRANT EXECUTE ON FUNCTION dreamcatcher.end_stuck_writers(text),'
                   ' dreamcatcher.claim_next_frame(text, integer), dreamcatcher.merge_frame(text, bigint),'
                   ' dreamcatcher.merge_frame_with(text, bigint, text)'
                   ' TO %I', v_merger);
    -- (the merge needs no temporary table any more; mergers of earlier versions, still running
    -- during an upgrade, do)
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), v_merger);

    -- rules (sql/migrations/, the rule tables): readers and mergers read the rule tables (entities_at decodes keys
    -- with them, merge_frame picks the rule set of a frame); the merge records the entities a
    -- deletion ends. Only the schema owner applies rules (it creates their functions).
    EXECUTE format('GRANT SELECT ON dreamcatcher.rule_sets, dreamcatcher.world_rules, dreamcatcher.rule_defaults,'
                   ' dreamcatcher.entity_ends TO %I', v_reader);
    EXECUTE format('GRANT INSERT ON dreamcatcher.entity_ends TO %I', v_merger);

    -- NOTIFY and advisory locks: pg_notify and the lock functions are executable by PUBLIC.
    -- A worker that takes a world's locks by hand can hold up its merger until the merger ends
    -- its session (a silent leader-lock holder after the leader timeout, an idle fence holder
    -- after the world's idle_writer_timeout). Only when asked (p_restrict_lock_functions,
    -- `init --roles --restrict-lock-functions`), since it changes what every application
    -- using this database may call, are the functions revoked from PUBLIC in this database
    -- and granted to the merger and the schema owner. The NOTIFY command itself cannot be
    -- revoked (see docs: Roles).
    IF p_restrict_lock_functions THEN
        SELECT p.proowner::regrole::name INTO v_owner FROM pg_proc p
         WHERE p.oid = 'dreamcatcher.append_delta(text, text, bigint, timestamptz, jsonb)'::regprocedure;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
            FOR r IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
                     WHERE p.pronamespace = 'pg_catalog'::regnamespace
                       AND (p.proname = 'pg_notify'
                            OR p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$') LOOP
                EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', r.fn);
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I', r.fn, v_merger, v_owner);
            END LOOP;
        ELSE
            RAISE WARNING 'not a superuser: pg_notify and the advisory-lock functions stay executable by PUBLIC'
                USING HINT = 'Run `dreamcatcher init --roles` as a superuser so that workers cannot take the merger''s locks.';
        END IF;
    END IF;

    RETURN ARRAY[v_worker, v_merger, v_reader];
END $$;

REVOKE EXECUTE ON FUNCTION dreamcatcher.install_roles(text, boolean) FROM PUBLIC;
