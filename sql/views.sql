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
