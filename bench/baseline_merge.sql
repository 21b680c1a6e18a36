-- dreamcatcher_pg merge: the per-entity rules of docs/design.md §3, set-based.
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

-- Keys that describe the delta itself (its envelope: docs/design.md §6), not state: neither
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

-- The readers: one item of one rule key -> (kind, ekey, data, reason). kind 'tally' marks a
-- reaction count with no identity; reason is set when the item is unreadable. Each is a
-- single SELECT that the planner inlines into merge_frame: no function call per item. Every
-- intermediate value sits in an OFFSET 0 subquery, so it is computed once per item, not once
-- per use.

-- posts: {number, ...} or a bare number; scalar fields last-write-wins
CREATE OR REPLACE FUNCTION dreamcatcher.read_post(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'post'::text, x.n::text,
           CASE WHEN x.t = 'object' THEN p_item || jsonb_build_object('number', x.n)
                ELSE jsonb_build_object('number', x.n) END,
           CASE WHEN x.n IS NULL THEN 'post has no readable number' END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN dreamcatcher.jint(p_item -> 'number')
                            ELSE dreamcatcher.jint(p_item) END AS n
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) x
$$;

-- agents: {id | agent_id | agent, ...}; scalar fields last-write-wins
CREATE OR REPLACE FUNCTION dreamcatcher.read_agent(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'agent'::text, y.a, x.d || jsonb_build_object('id', y.a),
           CASE WHEN jsonb_typeof(p_item) <> 'object' THEN 'agent update is not an object'
                WHEN y.a IS NULL THEN 'agent update has no id'
                ELSE dreamcatcher.long_key_reason(y.a) END
    FROM (SELECT CASE WHEN p_item ?| ARRAY['agent_id', 'agent']
                      THEN dreamcatcher.jrename(p_item, 'id', ARRAY['agent_id', 'agent']) ELSE p_item END AS d
          OFFSET 0) x
    CROSS JOIN LATERAL (SELECT dreamcatcher.jtext(x.d -> 'id') AS a OFFSET 0) y
$$;

-- comments: an object (aliases folded to id, author, reply_to, body) or a bare id string
CREATE OR REPLACE FUNCTION dreamcatcher.read_comment(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'comment'::text, k.ekey, x.d,
           CASE WHEN x.t NOT IN ('object', 'string') THEN 'comment is neither an object nor an id string'
                WHEN x.d = '{}'::jsonb THEN 'comment has no id and no content'
                ELSE dreamcatcher.long_key_reason(k.ekey) END
    FROM (SELECT ty.t, CASE
                     -- the usual shape, with no alias to fold: read as it is
                     WHEN ty.t = 'object' AND NOT (p_item ?| ARRAY['comment_id', 'agent', 'replied_to', 'replyTo',
                                                                   'target', 'content', 'summary'])
                         THEN p_item
                     WHEN ty.t = 'object' THEN
                         dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(
                             p_item, 'id', ARRAY['comment_id']),
                             'author', ARRAY['agent']),
                             'reply_to', ARRAY['replied_to', 'replyTo', 'target']),
                             'body', ARRAY['content', 'summary'])
                     WHEN ty.t = 'string' AND dreamcatcher.jtext(p_item) IS NOT NULL
                         THEN jsonb_build_object('id', dreamcatcher.jtext(p_item))
                     ELSE '{}'::jsonb
                 END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) x
    CROSS JOIN LATERAL (SELECT CASE WHEN c.cid IS NOT NULL THEN 'id:' || c.cid
                                    ELSE 'content:' || md5(x.d::text) END AS ekey
                        FROM (SELECT dreamcatcher.jtext(x.d -> 'id') AS cid OFFSET 0) c
                        OFFSET 0) k
$$;

-- reactions: {target|node, type|reaction, author|agent}, "NODE:TYPE", "TYPE on NODE";
-- tallies ({..., count} without a target, or a bare number) have no identity
CREATE OR REPLACE FUNCTION dreamcatcher.read_reaction(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN z.target IS NOT NULL AND z.rtype IS NOT NULL THEN 'reaction'
                WHEN z.t = 'number' OR (z.t = 'object' AND p_item ? 'count') THEN 'tally'
                ELSE 'reaction' END,
           k.ekey,
           CASE WHEN z.t = 'object' THEN
                    (p_item - ARRAY['node', 'reaction', 'agent'])
                    || jsonb_build_object('target', z.target, 'type', z.rtype, 'author', z.author)
                ELSE jsonb_build_object('target', z.target, 'type', z.rtype, 'author', z.author) END,
           CASE WHEN z.target IS NOT NULL AND z.rtype IS NOT NULL THEN dreamcatcher.long_key_reason(k.ekey)
                WHEN z.t = 'number' OR (z.t = 'object' AND p_item ? 'count') THEN NULL
                ELSE 'reaction names no target and type' END
    FROM (SELECT sx.t,
                 CASE WHEN sx.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'target'), dreamcatcher.jtext(p_item -> 'node'))
                      WHEN sx.t = 'string' AND sx.s ~ '^.+ on .+$' THEN nullif(btrim(substring(sx.s FROM '^.+? on (.+)$')), '')
                      WHEN sx.t = 'string' AND sx.s ~ '^.+:[^:]+$' THEN nullif(btrim(substring(sx.s FROM '^(.+):[^:]+$')), '')
                 END AS target,
                 CASE WHEN sx.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'type'), dreamcatcher.jtext(p_item -> 'reaction'))
                      WHEN sx.t = 'string' AND sx.s ~ '^.+ on .+$' THEN nullif(btrim(substring(sx.s FROM '^(.+?) on .+$')), '')
                      WHEN sx.t = 'string' AND sx.s ~ '^.+:[^:]+$' THEN nullif(btrim(substring(sx.s FROM ':([^:]+)$')), '')
                 END AS rtype,
                 CASE WHEN sx.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'author'), dreamcatcher.jtext(p_item -> 'agent'))
                 END AS author
          FROM (SELECT jsonb_typeof(p_item) AS t,
                       CASE WHEN jsonb_typeof(p_item) = 'string' THEN p_item #>> '{}' END AS s
                OFFSET 0) sx
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT jsonb_build_array(z.target, z.rtype, z.author)::text AS ekey OFFSET 0) k
$$;

-- chapters: {book, agent|author, chapter, target?}; dedupe by (book, agent, chapter)
CREATE OR REPLACE FUNCTION dreamcatcher.read_chapter(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'chapter'::text, k.ekey,
           CASE WHEN c.t = 'object'
                THEN dreamcatcher.jrename(p_item, 'agent', ARRAY['author'])
                     || jsonb_build_object('book', c.book, 'agent', c.agent, 'chapter', c.chapter)
           END,
           CASE WHEN c.t <> 'object' THEN 'chapter is not an object'
                WHEN c.book IS NULL THEN 'chapter names no book'
                WHEN c.agent IS NULL THEN 'chapter names no agent'
                WHEN c.chapter IS NULL THEN 'chapter has no readable chapter number'
                WHEN p_item ? 'target' AND coalesce(dreamcatcher.jint(p_item -> 'target') < 1, true)
                    THEN 'chapter target is not a positive integer'
                ELSE dreamcatcher.long_key_reason(k.ekey) END
    FROM (SELECT ty.t,
                 CASE WHEN ty.t = 'object' THEN dreamcatcher.jtext(p_item -> 'book') END AS book,
                 CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'agent'),
                                                         dreamcatcher.jtext(p_item -> 'author')) END AS agent,
                 CASE WHEN ty.t = 'object' THEN dreamcatcher.jint(p_item -> 'chapter') END AS chapter
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) c
    CROSS JOIN LATERAL (SELECT jsonb_build_array(c.book, c.agent, c.chapter)::text AS ekey OFFSET 0) k
$$;

-- observations: every one is kept, no dedupe; keyed by where it sits in the log
CREATE OR REPLACE FUNCTION dreamcatcher.read_observation(
    p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'observation'::text,
           -- (trunc, not ::bigint: the same text for every utc, and no overflow whatever the utc)
           jsonb_build_array(p_frame, p_stream, trunc(extract(epoch FROM p_utc) * 1000000), p_pos)::text,
           p_item, NULL::text
$$;

-- Read one item under one rule key (the readers above, by key). merge_frame calls the
-- readers directly, one statement arm per key; this is for reading a single item by hand.
CREATE OR REPLACE FUNCTION dreamcatcher.read_item(
    p_key text, p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT * FROM dreamcatcher.read_post(p_item) WHERE p_key IN ('posts_created', 'posts_updated')
    UNION ALL SELECT * FROM dreamcatcher.read_agent(p_item) WHERE p_key = 'agents_updated'
    UNION ALL SELECT * FROM dreamcatcher.read_comment(p_item) WHERE p_key = 'comments_added'
    UNION ALL SELECT * FROM dreamcatcher.read_reaction(p_item) WHERE p_key = 'reactions_added'
    UNION ALL SELECT * FROM dreamcatcher.read_chapter(p_item) WHERE p_key = 'chapters'
    UNION ALL SELECT * FROM dreamcatcher.read_observation(p_item, p_frame, p_stream, p_utc, p_pos)
              WHERE p_key = 'observations'
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

    SELECT count(*) INTO v_deltas FROM dreamcatcher.frame_deltas(p_world, p_frame);

    -- The whole frame in one statement. Its steps are CTEs: in-memory tuplestores, each read
    -- by the steps after it, so nothing is written twice and no scratch table is needed.
    WITH
    -- 1. every delta exploded into the items of its rule keys, in apply order's terms; a key no
    --    rule reads leaves one row with rank NULL (counted in the stats, nothing more)
    e AS MATERIALIZED (
        SELECT d.frame, d.utc, d.stream_id COLLATE "C" AS stream_id, k.rank, x.pos, k.key, x.item
        FROM dreamcatcher.frame_deltas(p_world, p_frame) d
        CROSS JOIN LATERAL (
            SELECT kk.key, r.rank, CASE WHEN r.rank IS NULL THEN '[null]'::jsonb ELSE d.payload -> kk.key END AS v
            FROM jsonb_object_keys(d.payload) AS kk(key)
            CROSS JOIN LATERAL (SELECT dreamcatcher.rule_rank(kk.key) AS rank OFFSET 0) r
            WHERE NOT dreamcatcher.is_meta_key(kk.key)
            OFFSET 0) k
        CROSS JOIN LATERAL jsonb_array_elements(dreamcatcher.jlist(k.v)) WITH ORDINALITY AS x(item, pos)
    ),
    -- 2. each item through its key's reader, one arm per key (no per-item dispatch); the item
    --    itself is kept only where something reads it later (quarantine, tallies)
    items AS MATERIALIZED (
        SELECT x.frame, x.utc, x.stream_id, x.rank, x.pos, x.key,
               CASE WHEN x.reason IS NOT NULL OR x.kind = 'tally' THEN x.item END AS item,
               x.kind, x.ekey, x.data, x.reason
        FROM (SELECT e.*, r.* FROM e, dreamcatcher.read_post(e.item) r WHERE e.rank IN (1, 2)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.read_agent(e.item) r WHERE e.rank = 3
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.read_comment(e.item) r WHERE e.rank = 4
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.read_reaction(e.item) r WHERE e.rank = 5
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.read_chapter(e.item) r WHERE e.rank = 6
              UNION ALL SELECT e.*, r.*
                        FROM e, dreamcatcher.read_observation(e.item, e.frame, e.stream_id, e.utc, e.pos) r
                        WHERE e.rank = 7
              UNION ALL SELECT e.*, 'unmerged', e.key, NULL, NULL FROM e WHERE e.rank IS NULL) x
    ),
    -- 3. unreadable items: quarantined with their reason, never dropped
    --    At most 100 rows per delta, then one row that says how many more there are: a delta of
    --    many tiny bad items must not make the merge write a row for each (they stay in the log).
    quarantined AS (
        INSERT INTO dreamcatcher.quarantine_log (world, frame, stream_id, utc, key, position, reason, item, merged_in)
        SELECT p_world, q.frame, q.stream_id, q.utc, q.key, q.pos,
               CASE WHEN q.n <= 100 THEN q.reason
                    ELSE format('%s more unreadable items of this delta are not listed one by one '
                                '(the first of them: key %s, position %s: %s); the delta is in the log',
                                q.total - 100, q.key, q.pos, q.reason) END,
               CASE WHEN q.n <= 100 THEN q.item END, p_frame
        FROM (SELECT i.frame, i.utc, i.stream_id, i.rank, i.pos, i.key, i.reason, i.item,
                     row_number() OVER (PARTITION BY i.frame, i.utc, i.stream_id ORDER BY i.rank, i.pos) AS n,
                     count(*) OVER (PARTITION BY i.frame, i.utc, i.stream_id) AS total
              FROM items i WHERE i.reason IS NOT NULL) q
        WHERE q.n <= 101
        ORDER BY q.frame, q.utc, q.stream_id, q.rank, q.pos
    ),
    -- Keyed entities. Every lookup of the current version goes through a LATERAL ... LIMIT 1
    -- subquery: a parameterised index probe per changed entity, so the cost of a merge follows
    -- the frame, whatever the planner believes about the size of the state.
    -- 4. posts and agents: upsert, each field last-write-wins (the last occurrence in apply order)
    upserted AS (
        SELECT p.kind, p.ekey, v.data AS old, coalesce(v.data, '{}'::jsonb) || p.patch AS new,
               coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
        FROM (SELECT g.kind, g.ekey, CASE WHEN g.n <= 64 THEN g.small ELSE dreamcatcher.jsonb_fold_many(g.many) END AS patch
              FROM (SELECT w.kind, w.ekey, count(*) AS n,
                           dreamcatcher.jsonb_fold(w.data ORDER BY w.frame, w.utc, w.stream_id, w.rank, w.pos)
                               FILTER (WHERE w.n <= 64) AS small,
                           jsonb_agg(w.data ORDER BY w.frame, w.utc, w.stream_id, w.rank, w.pos)
                               FILTER (WHERE w.n > 64) AS many
                    FROM (SELECT i.*, count(*) OVER (PARTITION BY i.kind, i.ekey) AS n FROM items i
                          WHERE i.kind IN ('post', 'agent') AND i.reason IS NULL) w
                    GROUP BY w.kind, w.ekey) g) p
        LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                           WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                             AND c.valid_to IS NULL LIMIT 1) v ON true
        WHERE v.data IS NULL OR v.data || p.patch <> v.data
    ),
    -- 5. comments, reactions, chapters: append, dedupe. Nothing is overwritten: the first
    --    occurrence of each field wins, and a later occurrence may only add fields still missing
    --    (a comment first seen as a bare id gets its author when the full comment arrives).
    appended AS MATERIALIZED (
        SELECT p.kind, p.ekey, v.data AS old, p.patch || coalesce(v.data, '{}'::jsonb) AS new,
               coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
        FROM (SELECT g.kind, g.ekey, CASE WHEN g.n <= 64 THEN g.small ELSE dreamcatcher.jsonb_fold_many(g.many) END AS patch
              FROM (SELECT w.kind, w.ekey, count(*) AS n,
                           dreamcatcher.jsonb_fold(w.data ORDER BY w.frame DESC, w.utc DESC, w.stream_id DESC,
                                                                   w.rank DESC, w.pos DESC)
                               FILTER (WHERE w.n <= 64) AS small,
                           jsonb_agg(w.data ORDER BY w.frame DESC, w.utc DESC, w.stream_id DESC, w.rank DESC, w.pos DESC)
                               FILTER (WHERE w.n > 64) AS many
                    FROM (SELECT i.*, count(*) OVER (PARTITION BY i.kind, i.ekey) AS n FROM items i
                          WHERE i.kind IN ('comment', 'reaction', 'chapter') AND i.reason IS NULL) w
                    GROUP BY w.kind, w.ekey) g) p
        LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                           WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                             AND c.valid_to IS NULL LIMIT 1) v ON true
        WHERE v.data IS NULL OR p.patch || v.data <> v.data
    ),
    -- 6. books: chapter target last-write-wins (default 10); a book compiles in the frame its
    --    count of chapters reaches the target, and stays compiled. One grouping pass.
    books AS (
        SELECT 'book'::text AS kind, b.book AS ekey, v.data AS old, n.data AS new,
               coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
        FROM (SELECT u.book, sum(u.new_chapter) AS new_chapters,
                     (array_agg(u.target ORDER BY u.frame DESC, u.utc DESC, u.stream_id DESC, u.rank DESC, u.pos DESC)
                          FILTER (WHERE u.target IS NOT NULL))[1] AS target
              FROM (SELECT c.new ->> 'book' AS book, 1 AS new_chapter, NULL::bigint AS target,
                           NULL::bigint AS frame, NULL::timestamptz AS utc, NULL::text COLLATE "C" AS stream_id,
                           NULL::integer AS rank, NULL::bigint AS pos
                    FROM appended c WHERE c.kind = 'chapter' AND c.old IS NULL
                    UNION ALL
                    SELECT i.data ->> 'book', 0, dreamcatcher.jint(i.data -> 'target'),
                           i.frame, i.utc, i.stream_id, i.rank, i.pos
                    FROM items i WHERE i.kind = 'chapter' AND i.reason IS NULL) u
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
        WHERE v.data IS DISTINCT FROM n.data
    ),
    -- 7. every change of the frame; observations are all new (their keys are log positions)
    changes AS MATERIALIZED (
        SELECT * FROM upserted
        UNION ALL SELECT * FROM appended
        UNION ALL SELECT * FROM books
        UNION ALL SELECT i.kind, i.ekey, NULL, i.data, p_frame, NULL FROM items i WHERE i.kind = 'observation'
    ),
    -- 8. apply: close the old versions (by the ctid the probes found), then write the new ones.
    --    The insert waits for the update (its filter reads the update's count first), so the
    --    unique index of current versions never sees two current versions of one entity.
    closed AS (
        UPDATE dreamcatcher.entity_versions SET valid_to = p_frame
         WHERE ctid = ANY (ARRAY(SELECT c.old_ctid FROM changes c WHERE c.old_ctid IS NOT NULL))
        RETURNING 1
    ),
    written AS (
        INSERT INTO dreamcatcher.entity_versions (world, kind, ekey, data, first_frame, valid_from)
        SELECT p_world, c.kind, c.ekey, c.new, c.first_frame, p_frame FROM changes c
        WHERE (SELECT count(*) FROM closed) >= 0
        RETURNING 1
    )
    -- 9. the stats, and the state fingerprint's change: + new versions - old versions
    SELECT jsonb_build_object(
               'deltas', v_deltas,
               'items', (SELECT count(*) FROM items i WHERE i.kind <> 'unmerged'),
               'quarantined', (SELECT count(*) FROM items i WHERE i.reason IS NOT NULL),
               'changes', (SELECT count(*) FROM written),
               'tallies', (SELECT count(*) FROM items i WHERE i.kind = 'tally'),
               'tally_count', (SELECT coalesce(sum(CASE WHEN jsonb_typeof(i.item) = 'number' THEN dreamcatcher.jint(i.item)
                                                        ELSE dreamcatcher.jint(i.item -> 'count') END), 0)
                               FROM items i WHERE i.kind = 'tally'),
               'deferred', (SELECT count(*) FROM dreamcatcher.deferred_log x
                            WHERE x.world = p_world AND x.merged_in = p_frame),
               'unmerged_keys', coalesce((SELECT jsonb_object_agg(k.key, k.n)
                                          FROM (SELECT i.key, count(*) AS n FROM items i
                                                WHERE i.kind = 'unmerged' GROUP BY i.key) k), '{}'::jsonb)),
           (SELECT coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.new)), 0)
                   - coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.old)) FILTER (WHERE c.old IS NOT NULL), 0)
            FROM changes c)
      INTO v_stats, v_acc;

    -- the state fingerprint, incrementally: previous sum + this frame's change, mod 2^64
    SELECT f.state_acc INTO v_prev_acc FROM dreamcatcher.frame_log f
     WHERE f.world = p_world AND f.status = 'merged' AND f.frame < p_frame
     ORDER BY f.frame DESC LIMIT 1;
    v_acc := coalesce(v_prev_acc, 0) + v_acc;
    v_acc := mod(mod(v_acc, 18446744073709551616) + 18446744073709551616, 18446744073709551616);

    UPDATE dreamcatcher.frame_log
       SET status = 'merged', merged_at = clock_timestamp(), delta_count = v_deltas,
           state_acc = v_acc, state_hash = dreamcatcher.state_hash_text(v_acc), stats = v_stats
     WHERE world = p_world AND frame = p_frame;
    RETURN v_stats || jsonb_build_object(
        'state_hash', dreamcatcher.state_hash_text(v_acc),
        'close_to_merged', (SELECT extract(epoch FROM f.merged_at - f.closed_at)::float8
                            FROM dreamcatcher.frame_log f WHERE f.world = p_world AND f.frame = p_frame));
END $$;
