-- dreamcatcher_pg merge: the per-entity rules of DESIGN.md §3, set-based.
--
-- A frame is merged by dreamcatcher.merge_frame(world, frame) in the caller's
-- transaction. Deltas apply in ascending (frame, utc, stream_id, rule, position)
-- order; stream_id compares in the "C" collation so the order is the same in
-- every database. Nothing here depends on insert ids, arrival order or time.

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
               WHEN jsonb_typeof(j) = 'number' AND j::text ~ '^-?[0-9]{1,18}$' THEN (j::text)::bigint
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

-- ---------------------------------------------------------------------------
-- The rules: which delta keys are read, in which order within a delta.
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.rule_rank(p_key text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE p_key
               WHEN 'posts_created'   THEN 1
               WHEN 'posts_updated'   THEN 2
               WHEN 'agents_updated'  THEN 3
               WHEN 'comments_added'  THEN 4
               WHEN 'reactions_added' THEN 5
               WHEN 'chapters'        THEN 6
               WHEN 'observations'    THEN 7
           END
$$;

-- Keys that describe the delta itself (its envelope: DESIGN.md §6), not state: neither
-- merged nor counted.
CREATE OR REPLACE FUNCTION dreamcatcher.is_meta_key(p_key text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_key IN ('frame', 'stream_id', 'utc', '_meta', 'completed_at')
$$;

-- Read one item under one rule: (kind, ekey, data, reason). kind 'tally' marks
-- a reaction count with no identity; reason is set when the item is unreadable.
CREATE OR REPLACE FUNCTION dreamcatcher.read_item(
    p_key text, p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT r.kind, r.ekey, r.data,
           CASE WHEN r.reason IS NULL AND r.kind NOT IN ('tally', 'observation') AND octet_length(r.ekey) > 1024
                -- an index entry holds ~2.7 kB: a longer key would fail the whole frame, forever
                THEN 'entity key is longer than 1024 bytes' ELSE r.reason END
    FROM (SELECT jsonb_typeof(p_item) AS t) ty
    CROSS JOIN LATERAL (
        -- posts: {number, ...} or a bare number; scalar fields last-write-wins
        SELECT 'post'::text AS kind, n::text AS ekey,
               CASE WHEN ty.t = 'object' THEN p_item || jsonb_build_object('number', n)
                    ELSE jsonb_build_object('number', n) END AS data,
               CASE WHEN n IS NULL THEN 'post has no readable number' END AS reason
        FROM (SELECT CASE WHEN ty.t = 'object' THEN dreamcatcher.jint(p_item -> 'number')
                          ELSE dreamcatcher.jint(p_item) END AS n) x
        WHERE p_key IN ('posts_created', 'posts_updated')
      UNION ALL
        -- agents: {id | agent_id | agent, ...}; scalar fields last-write-wins
        SELECT 'agent', a, d || jsonb_build_object('id', a),
               CASE WHEN ty.t <> 'object' THEN 'agent update is not an object'
                    WHEN a IS NULL THEN 'agent update has no id' END
        FROM (SELECT dreamcatcher.jrename(p_item, 'id', ARRAY['agent_id', 'agent']) AS d OFFSET 0) x
        CROSS JOIN LATERAL (SELECT dreamcatcher.jtext(x.d -> 'id') AS a) y
        WHERE p_key = 'agents_updated'
      UNION ALL
        -- comments: an object (aliases folded to id, author, reply_to, body) or a bare id string
        SELECT 'comment',
               CASE WHEN cid IS NOT NULL THEN 'id:' || cid ELSE 'content:' || md5(d::text) END,
               d,
               CASE WHEN ty.t NOT IN ('object', 'string') THEN 'comment is neither an object nor an id string'
                    WHEN d = '{}'::jsonb THEN 'comment has no id and no content' END
        FROM (SELECT CASE
                         WHEN ty.t = 'string' AND dreamcatcher.jtext(p_item) IS NOT NULL
                             THEN jsonb_build_object('id', dreamcatcher.jtext(p_item))
                         WHEN ty.t = 'object' THEN
                             dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(
                                 p_item, 'id', ARRAY['comment_id']),
                                 'author', ARRAY['agent']),
                                 'reply_to', ARRAY['replied_to', 'replyTo', 'target']),
                                 'body', ARRAY['content', 'summary'])
                         ELSE '{}'::jsonb
                     END AS d
              OFFSET 0) x  -- computed once per item, not once per use of d
        CROSS JOIN LATERAL (SELECT dreamcatcher.jtext(x.d -> 'id') AS cid) y
        WHERE p_key = 'comments_added'
      UNION ALL
        -- reactions: {target|node, type|reaction, author|agent}, "NODE:TYPE", "TYPE on NODE";
        -- tallies ({..., count} without a target, or a bare number) have no identity
        SELECT CASE WHEN z.target IS NOT NULL AND z.rtype IS NOT NULL THEN 'reaction'
                    WHEN ty.t = 'number' OR (ty.t = 'object' AND p_item ? 'count') THEN 'tally'
                    ELSE 'reaction' END,
               jsonb_build_array(z.target, z.rtype, z.author)::text,
               CASE WHEN ty.t = 'object' THEN
                        (p_item - ARRAY['node', 'reaction', 'agent'])
                        || jsonb_build_object('target', z.target, 'type', z.rtype, 'author', z.author)
                    ELSE jsonb_build_object('target', z.target, 'type', z.rtype, 'author', z.author) END,
               CASE WHEN z.target IS NOT NULL AND z.rtype IS NOT NULL THEN NULL
                    WHEN ty.t = 'number' OR (ty.t = 'object' AND p_item ? 'count') THEN NULL
                    ELSE 'reaction names no target and type' END
        FROM (SELECT
                  CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'target'), dreamcatcher.jtext(p_item -> 'node'))
                       WHEN ty.t = 'string' AND s ~ '^.+ on .+$' THEN nullif(btrim(substring(s FROM '^.+? on (.+)$')), '')
                       WHEN ty.t = 'string' AND s ~ '^.+:[^:]+$' THEN nullif(btrim(substring(s FROM '^(.+):[^:]+$')), '')
                  END AS target,
                  CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'type'), dreamcatcher.jtext(p_item -> 'reaction'))
                       WHEN ty.t = 'string' AND s ~ '^.+ on .+$' THEN nullif(btrim(substring(s FROM '^(.+?) on .+$')), '')
                       WHEN ty.t = 'string' AND s ~ '^.+:[^:]+$' THEN nullif(btrim(substring(s FROM ':([^:]+)$')), '')
                  END AS rtype,
                  CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'author'), dreamcatcher.jtext(p_item -> 'agent'))
                  END AS author
              FROM (SELECT CASE WHEN ty.t = 'string' THEN p_item #>> '{}' END AS s) sx) z
        WHERE p_key = 'reactions_added'
      UNION ALL
        -- chapters: {book, agent|author, chapter, target?}; dedupe by (book, agent, chapter)
        SELECT 'chapter', jsonb_build_array(c.book, c.agent, c.chapter)::text,
               CASE WHEN ty.t = 'object'
                    THEN dreamcatcher.jrename(p_item, 'agent', ARRAY['author'])
                         || jsonb_build_object('book', c.book, 'agent', c.agent, 'chapter', c.chapter)
               END,
               CASE WHEN ty.t <> 'object' THEN 'chapter is not an object'
                    WHEN c.book IS NULL THEN 'chapter names no book'
                    WHEN c.agent IS NULL THEN 'chapter names no agent'
                    WHEN c.chapter IS NULL THEN 'chapter has no readable chapter number'
                    WHEN p_item ? 'target' AND (dreamcatcher.jint(p_item -> 'target') IS NULL
                                                OR dreamcatcher.jint(p_item -> 'target') < 1)
                        THEN 'chapter target is not a positive integer' END
        FROM (SELECT dreamcatcher.jtext(p_item -> 'book') AS book,
                     coalesce(dreamcatcher.jtext(p_item -> 'agent'), dreamcatcher.jtext(p_item -> 'author')) AS agent,
                     dreamcatcher.jint(p_item -> 'chapter') AS chapter
              WHERE ty.t = 'object'
              UNION ALL SELECT NULL, NULL, NULL WHERE ty.t <> 'object') c
        WHERE p_key = 'chapters'
      UNION ALL
        -- observations: every one is kept, no dedupe; keyed by where it sits in the log
        SELECT 'observation',
               jsonb_build_array(p_frame, p_stream,
                                 (extract(epoch FROM p_utc) * 1000000)::bigint, p_pos)::text,
               p_item, NULL
        WHERE p_key = 'observations'
    ) r
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

-- ---------------------------------------------------------------------------
-- Merge one closed frame, in the caller's transaction. Returns the frame's
-- stats, or NULL when the frame is not closed (already merged, or open).
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION dreamcatcher.merge_frame(p_world text, p_frame bigint) RETURNS jsonb
LANGUAGE plpgsql
-- JIT compiles for seconds on plans over temp tables it cannot estimate; a merge never gains from it
SET jit = off
-- sorts of a big frame stay in memory; memoizing per-item JSON functions never hits
SET work_mem = '64MB'
SET enable_memoize = off
-- The cost of a merge must follow the frame's changes, not the size of the state: look entities
-- up through their indexes even when the statistics of entity_versions are stale (a table that
-- grew since its last ANALYZE looks tiny and would be read whole, once per frame).
SET enable_seqscan = off
AS $$
DECLARE
    v_status   text;
    v_prev_acc numeric;
    v_acc      numeric;
    v_stats    jsonb;
    v_deltas   bigint;
BEGIN
    SELECT status INTO v_status FROM dreamcatcher.frame_log
     WHERE world = p_world AND frame = p_frame FOR UPDATE;
    IF NOT FOUND OR v_status <> 'closed' THEN
        RETURN NULL;
    END IF;

    -- late deltas waiting for a merge (policy defer) go into this one
    INSERT INTO dreamcatcher.deferred_log (world, frame, stream_id, utc, merged_in)
    SELECT d.world, d.frame, d.stream_id, d.utc, p_frame
    FROM dreamcatcher.delta_log d
    WHERE d.world = p_world AND d.late
      AND NOT EXISTS (SELECT 1 FROM dreamcatcher.deferred_log x
                      WHERE x.world = d.world AND x.frame = d.frame
                        AND x.stream_id = d.stream_id AND x.utc = d.utc);

    -- scratch tables, made once per session; emptied at every commit
    IF to_regclass('pg_temp._dc_changes') IS NULL THEN
        CREATE TEMP TABLE _dc_deltas (
            frame bigint, stream_id text COLLATE "C", utc timestamptz, payload jsonb) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE _dc_items (
            frame bigint, utc timestamptz, stream_id text COLLATE "C", rank integer, pos bigint,
            key text, item jsonb, kind text, ekey text, data jsonb, reason text) ON COMMIT DELETE ROWS;
        CREATE TEMP TABLE _dc_changes (
            kind text, ekey text, old jsonb, new jsonb, first_frame bigint, old_ctid tid) ON COMMIT DELETE ROWS;
    ELSIF EXISTS (SELECT 1 FROM _dc_deltas) OR EXISTS (SELECT 1 FROM _dc_changes) THEN
        TRUNCATE _dc_deltas, _dc_items, _dc_changes;  -- a second merge in one transaction (replay)
    END IF;

    INSERT INTO _dc_deltas SELECT * FROM dreamcatcher.frame_deltas(p_world, p_frame);
    GET DIAGNOSTICS v_deltas = ROW_COUNT;

    -- explode every delta into the items its rules read
    INSERT INTO _dc_items
    SELECT d.frame, d.utc, d.stream_id, dreamcatcher.rule_rank(kv.key), e.pos, kv.key, e.item,
           r.kind, r.ekey, r.data, r.reason
    FROM _dc_deltas d
    CROSS JOIN LATERAL jsonb_each(d.payload) AS kv(key, value)
    CROSS JOIN LATERAL jsonb_array_elements(
        CASE jsonb_typeof(kv.value) WHEN 'array' THEN kv.value
                                    WHEN 'null' THEN '[]'::jsonb
                                    ELSE jsonb_build_array(kv.value) END) WITH ORDINALITY AS e(item, pos)
    CROSS JOIN LATERAL dreamcatcher.read_item(kv.key, e.item, d.frame, d.stream_id, d.utc, e.pos) AS r
    WHERE dreamcatcher.rule_rank(kv.key) IS NOT NULL;

    -- unreadable items: quarantined with their reason, never dropped
    INSERT INTO dreamcatcher.quarantine_log (world, frame, stream_id, utc, key, position, reason, item, merged_in)
    SELECT p_world, i.frame, i.stream_id, i.utc, i.key, i.pos, i.reason, i.item, p_frame
    FROM _dc_items i WHERE i.reason IS NOT NULL
    ORDER BY i.frame, i.utc, i.stream_id, i.rank, i.pos;

    -- Keyed entities. Every lookup of the current version goes through a LATERAL ... LIMIT 1
    -- subquery: a parameterised index probe per changed entity, so the cost of a merge follows
    -- the frame, whatever the planner believes about the size of the state.

    -- posts and agents: upsert, each field last-write-wins (the last occurrence in apply order)
    INSERT INTO _dc_changes (kind, ekey, old, new, first_frame, old_ctid)
    SELECT p.kind, p.ekey, v.data, coalesce(v.data, '{}'::jsonb) || p.patch,
           coalesce(v.first_frame, p_frame), v.ctid
    FROM (SELECT i.kind, i.ekey,
                 dreamcatcher.jsonb_fold(i.data ORDER BY i.frame, i.utc, i.stream_id, i.rank, i.pos) AS patch
          FROM _dc_items i
          WHERE i.kind IN ('post', 'agent') AND i.reason IS NULL
          GROUP BY i.kind, i.ekey) p
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    WHERE v.data IS NULL OR v.data || p.patch <> v.data;

    -- comments, reactions, chapters: append, dedupe. Nothing is overwritten: the first
    -- occurrence of each field wins, and a later occurrence may only add fields still missing
    -- (a comment first seen as a bare id gets its author when the full comment arrives).
    INSERT INTO _dc_changes (kind, ekey, old, new, first_frame, old_ctid)
    SELECT p.kind, p.ekey, v.data, p.patch || coalesce(v.data, '{}'::jsonb),
           coalesce(v.first_frame, p_frame), v.ctid
    FROM (SELECT i.kind, i.ekey,
                 dreamcatcher.jsonb_fold(i.data ORDER BY i.frame DESC, i.utc DESC, i.stream_id DESC,
                                                         i.rank DESC, i.pos DESC) AS patch
          FROM _dc_items i
          WHERE i.kind IN ('comment', 'reaction', 'chapter') AND i.reason IS NULL
          GROUP BY i.kind, i.ekey) p
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    WHERE v.data IS NULL OR p.patch || v.data <> v.data;

    -- books: chapter target last-write-wins (default 10); a book compiles in the frame its count
    -- of chapters reaches the target, and stays compiled. One grouping pass over the frame.
    INSERT INTO _dc_changes (kind, ekey, old, new, first_frame, old_ctid)
    SELECT 'book', b.book, v.data, n.data, coalesce(v.first_frame, p_frame), v.ctid
    FROM (SELECT u.book, sum(u.new_chapter) AS new_chapters,
                 (array_agg(u.target ORDER BY u.frame DESC, u.utc DESC, u.stream_id DESC, u.rank DESC, u.pos DESC)
                      FILTER (WHERE u.target IS NOT NULL))[1] AS target
          FROM (SELECT c.new ->> 'book' AS book, 1 AS new_chapter, NULL::bigint AS target,
                       NULL::bigint AS frame, NULL::timestamptz AS utc, NULL::text COLLATE "C" AS stream_id,
                       NULL::integer AS rank, NULL::bigint AS pos
                FROM _dc_changes c WHERE c.kind = 'chapter' AND c.old IS NULL
                UNION ALL
                SELECT i.data ->> 'book', 0, dreamcatcher.jint(i.item -> 'target'),
                       i.frame, i.utc, i.stream_id, i.rank, i.pos
                FROM _dc_items i WHERE i.kind = 'chapter' AND i.reason IS NULL) u
          GROUP BY u.book) b
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = 'book' AND c.ekey = b.book
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    CROSS JOIN LATERAL (
        SELECT coalesce(b.target, (v.data ->> 'target')::bigint, 10) AS target,
               coalesce((v.data ->> 'chapters')::bigint, 0) + b.new_chapters AS chapters
    ) t
    CROSS JOIN LATERAL (
        SELECT jsonb_build_object(
                   'book', b.book, 'target', t.target, 'chapters', t.chapters,
                   'compiled_frame', coalesce((v.data ->> 'compiled_frame')::bigint,
                                              CASE WHEN t.chapters >= t.target THEN p_frame END)) AS data
    ) n
    WHERE v.data IS DISTINCT FROM n.data;

    -- observations: every one appended (their keys are positions in the log: always new)
    INSERT INTO _dc_changes (kind, ekey, old, new, first_frame)
    SELECT i.kind, i.ekey, NULL, i.data, p_frame
    FROM _dc_items i
    WHERE i.kind = 'observation';

    -- apply: close the old versions (found by ctid above, in this transaction), write the new ones
    UPDATE dreamcatcher.entity_versions SET valid_to = p_frame
     WHERE ctid = ANY (ARRAY(SELECT c.old_ctid FROM _dc_changes c WHERE c.old_ctid IS NOT NULL));
    INSERT INTO dreamcatcher.entity_versions (world, kind, ekey, data, first_frame, valid_from)
    SELECT p_world, c.kind, c.ekey, c.new, c.first_frame, p_frame FROM _dc_changes c;

    -- the state fingerprint, incrementally: previous sum - old versions + new versions
    SELECT f.state_acc INTO v_prev_acc FROM dreamcatcher.frame_log f
     WHERE f.world = p_world AND f.status = 'merged' AND f.frame < p_frame
     ORDER BY f.frame DESC LIMIT 1;
    SELECT coalesce(v_prev_acc, 0)
           + coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.new)), 0)
           - coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.old)) FILTER (WHERE c.old IS NOT NULL), 0)
      INTO v_acc FROM _dc_changes c;
    v_acc := mod(mod(v_acc, 18446744073709551616) + 18446744073709551616, 18446744073709551616);

    SELECT jsonb_build_object(
               'deltas', v_deltas,
               'items', (SELECT count(*) FROM _dc_items),
               'quarantined', (SELECT count(*) FROM _dc_items WHERE reason IS NOT NULL),
               'changes', (SELECT count(*) FROM _dc_changes),
               'tallies', (SELECT count(*) FROM _dc_items WHERE kind = 'tally'),
               'tally_count', (SELECT coalesce(sum(CASE WHEN jsonb_typeof(item) = 'number' THEN dreamcatcher.jint(item)
                                                        ELSE dreamcatcher.jint(item -> 'count') END), 0)
                               FROM _dc_items WHERE kind = 'tally'),
               'deferred', (SELECT count(*) FROM dreamcatcher.deferred_log x
                            WHERE x.world = p_world AND x.merged_in = p_frame),
               'unmerged_keys', coalesce((SELECT jsonb_object_agg(k.key, k.n)
                                          FROM (SELECT kv.key, count(*) AS n
                                                FROM _dc_deltas d CROSS JOIN LATERAL jsonb_object_keys(d.payload) AS kv(key)
                                                WHERE dreamcatcher.rule_rank(kv.key) IS NULL
                                                  AND NOT dreamcatcher.is_meta_key(kv.key)
                                                GROUP BY kv.key) k), '{}'::jsonb))
      INTO v_stats;

    UPDATE dreamcatcher.frame_log
       SET status = 'merged', merged_at = clock_timestamp(), delta_count = v_deltas,
           state_acc = v_acc, state_hash = dreamcatcher.state_hash_text(v_acc), stats = v_stats
     WHERE world = p_world AND frame = p_frame;
    RETURN v_stats || jsonb_build_object(
        'state_hash', dreamcatcher.state_hash_text(v_acc),
        'close_to_merged', (SELECT extract(epoch FROM f.merged_at - f.closed_at)::float8
                            FROM dreamcatcher.frame_log f WHERE f.world = p_world AND f.frame = p_frame));
END $$;
