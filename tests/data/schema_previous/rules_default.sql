-- the default rule set as commit bdaf6f5's init installed it (rules/store.install_default)
SET standard_conforming_strings = on;
CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_1(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 'post'::text, k.ekey, z.d || jsonb_build_object('number', z.f1), CASE WHEN z.f1 IS NOT NULL THEN NULL WHEN z.t <> 'object' AND NOT (z.t IN ('number', 'string')) THEN 'post item is not an object or a bare number' ELSE 'post has no readable ' || concat_ws(', ', CASE WHEN z.f1 IS NULL THEN 'number' END) END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN dreamcatcher.jint(p_item -> 'number') WHEN ty.t IN ('number', 'string') THEN dreamcatcher.jint(p_item) END AS f1, CASE WHEN ty.t = 'object' THEN p_item WHEN ty.t IN ('number', 'string') THEN jsonb_build_object('number', dreamcatcher.jint(p_item)) ELSE '{}'::jsonb END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT z.f1::text AS ekey OFFSET 0) k
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_2(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 'agent'::text, k.ekey, z.d || jsonb_build_object('id', z.f1), CASE WHEN z.f1 IS NOT NULL THEN dreamcatcher.long_key_reason(k.ekey) WHEN z.t <> 'object' THEN 'agent item is not an object' ELSE 'agent has no readable ' || concat_ws(', ', CASE WHEN z.f1 IS NULL THEN 'id' END) END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'id'), dreamcatcher.jtext(p_item -> 'agent_id'), dreamcatcher.jtext(p_item -> 'agent')) END AS f1, CASE WHEN ty.t = 'object' THEN CASE WHEN p_item ?| ARRAY['agent_id', 'agent']::text[] THEN dreamcatcher.jrename(p_item, 'id', ARRAY['agent_id', 'agent']::text[]) ELSE p_item END ELSE '{}'::jsonb END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT z.f1 AS ekey OFFSET 0) k
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_3(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 'comment'::text, k.ekey, z.d, CASE WHEN z.f1 IS NOT NULL THEN dreamcatcher.long_key_reason(k.ekey) WHEN z.t = 'object' AND z.d <> '{}'::jsonb THEN dreamcatcher.long_key_reason(k.ekey) WHEN z.t <> 'object' AND NOT (z.t = 'string') THEN 'comment item is not an object or a bare id' ELSE 'comment has no readable id and no content' END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'id'), dreamcatcher.jtext(p_item -> 'comment_id')) WHEN ty.t = 'string' THEN dreamcatcher.jtext(p_item) END AS f1, CASE WHEN ty.t = 'object' THEN CASE WHEN p_item ?| ARRAY['comment_id', 'agent', 'replied_to', 'replyTo', 'target', 'content', 'summary']::text[] THEN dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(dreamcatcher.jrename(p_item, 'id', ARRAY['comment_id']::text[]), 'author', ARRAY['agent']::text[]), 'reply_to', ARRAY['replied_to', 'replyTo', 'target']::text[]), 'body', ARRAY['content', 'summary']::text[]) ELSE p_item END WHEN ty.t = 'string' THEN jsonb_build_object('id', dreamcatcher.jtext(p_item)) ELSE '{}'::jsonb END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT CASE WHEN z.f1 IS NOT NULL THEN 'id:' || z.f1 ELSE 'content:' || md5(z.d::text) END AS ekey OFFSET 0) k
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_4(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT CASE WHEN z.f1 IS NOT NULL AND z.f2 IS NOT NULL THEN 'reaction' WHEN z.t = 'number' OR (z.t = 'object' AND p_item ? 'count') THEN 'tally' ELSE 'reaction' END, k.ekey, z.d || jsonb_build_object('target', z.f1, 'type', z.f2, 'author', z.f3), CASE WHEN z.f1 IS NOT NULL AND z.f2 IS NOT NULL THEN dreamcatcher.long_key_reason(k.ekey) WHEN z.t = 'number' OR (z.t = 'object' AND p_item ? 'count') THEN NULL WHEN z.t <> 'object' AND z.t <> 'string' THEN 'reaction item is not an object or a string of a known pattern' ELSE 'reaction has no readable ' || concat_ws(', ', CASE WHEN z.f1 IS NULL THEN 'target' END, CASE WHEN z.f2 IS NULL THEN 'type' END) END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'target'), dreamcatcher.jtext(p_item -> 'node')) WHEN mx.m1 IS NOT NULL THEN nullif(btrim(mx.m1[2]), '') WHEN mx.m2 IS NOT NULL THEN nullif(btrim(mx.m2[1]), '') END AS f1, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'type'), dreamcatcher.jtext(p_item -> 'reaction')) WHEN mx.m1 IS NOT NULL THEN nullif(btrim(mx.m1[1]), '') WHEN mx.m2 IS NOT NULL THEN nullif(btrim(mx.m2[2]), '') END AS f2, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'author'), dreamcatcher.jtext(p_item -> 'agent')) END AS f3, CASE WHEN ty.t = 'object' THEN (p_item - ARRAY['node', 'reaction', 'agent']::text[]) ELSE '{}'::jsonb END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t, CASE WHEN jsonb_typeof(p_item) = 'string' THEN p_item #>> '{}' END AS s OFFSET 0) ty CROSS JOIN LATERAL (SELECT regexp_match(ty.s, '^(.+?) on (.+)$') AS m1, regexp_match(ty.s, '^(.+):([^:]+)$') AS m2 OFFSET 0) mx
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT jsonb_build_array(z.f1, z.f2, z.f3)::text AS ekey OFFSET 0) k
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_5(p_item jsonb)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 'chapter'::text, k.ekey, z.d || jsonb_build_object('book', z.f1, 'agent', z.f2, 'chapter', z.f3), CASE WHEN z.f1 IS NOT NULL AND z.f2 IS NOT NULL AND z.f3 IS NOT NULL THEN CASE WHEN p_item ? 'target' AND coalesce(dreamcatcher.jint(p_item -> 'target') < 1, true) THEN 'chapter target is not a positive integer' ELSE dreamcatcher.long_key_reason(k.ekey) END WHEN z.t <> 'object' THEN 'chapter item is not an object' ELSE 'chapter has no readable ' || concat_ws(', ', CASE WHEN z.f1 IS NULL THEN 'book' END, CASE WHEN z.f2 IS NULL THEN 'agent' END, CASE WHEN z.f3 IS NULL THEN 'chapter' END) END
    FROM (SELECT ty.t, CASE WHEN ty.t = 'object' THEN dreamcatcher.jtext(p_item -> 'book') END AS f1, CASE WHEN ty.t = 'object' THEN coalesce(dreamcatcher.jtext(p_item -> 'agent'), dreamcatcher.jtext(p_item -> 'author')) END AS f2, CASE WHEN ty.t = 'object' THEN dreamcatcher.jint(p_item -> 'chapter') END AS f3, CASE WHEN ty.t = 'object' THEN CASE WHEN p_item ?| ARRAY['author']::text[] THEN dreamcatcher.jrename(p_item, 'agent', ARRAY['author']::text[]) ELSE p_item END ELSE '{}'::jsonb END AS d
          FROM (SELECT jsonb_typeof(p_item) AS t OFFSET 0) ty
          OFFSET 0) z
    CROSS JOIN LATERAL (SELECT jsonb_build_array(z.f1, z.f2, z.f3)::text AS ekey OFFSET 0) k
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_7(p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)
RETURNS TABLE (kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 'observation'::text, jsonb_build_array(p_frame, p_stream, trunc(extract(epoch FROM p_utc) * 1000000), p_pos)::text, p_item, NULL::text
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_read_item(
    p_key text, p_item jsonb, p_frame bigint, p_stream text, p_utc timestamptz, p_pos bigint)
RETURNS TABLE (rank integer, kind text, ekey text, data jsonb, reason text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $dc_97f5bef2ebae3802$
    SELECT 1, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_1(p_item) r WHERE p_key = 'posts_created'
    UNION ALL SELECT 2, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_1(p_item) r WHERE p_key = 'posts_updated'
    UNION ALL SELECT 3, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_2(p_item) r WHERE p_key = 'agents_updated'
    UNION ALL SELECT 4, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_3(p_item) r WHERE p_key = 'comments_added'
    UNION ALL SELECT 5, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_4(p_item) r WHERE p_key = 'reactions_added'
    UNION ALL SELECT 6, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_5(p_item) r WHERE p_key = 'chapters'
    UNION ALL SELECT 7, r.* FROM dreamcatcher.rules_97f5bef2ebae3802_read_7(p_item, p_frame, p_stream, p_utc, p_pos) r WHERE p_key = 'observations'
$dc_97f5bef2ebae3802$;

CREATE OR REPLACE FUNCTION dreamcatcher.rules_97f5bef2ebae3802_merge(
    p_world text, p_frame bigint, p_deltas bigint, OUT stats jsonb, OUT acc numeric)
LANGUAGE plpgsql
SET jit = off
SET work_mem = '64MB'
SET enable_memoize = off
SET enable_seqscan = off
AS $dc_97f5bef2ebae3802$
BEGIN
    WITH
    e AS MATERIALIZED (
        SELECT d.frame, d.utc, d.stream_id COLLATE "C" AS stream_id, k.rank, x.pos, k.key, x.item
        FROM dreamcatcher.frame_deltas(p_world, p_frame) d
        CROSS JOIN LATERAL (
            SELECT kk.key, r.rank,
                   CASE WHEN r.rank IS NULL THEN '[null]'::jsonb ELSE d.payload -> kk.key END AS v
            FROM jsonb_object_keys(d.payload) AS kk(key)
            CROSS JOIN LATERAL (SELECT CASE kk.key WHEN 'posts_created' THEN 1 WHEN 'posts_updated' THEN 2 WHEN 'agents_updated' THEN 3 WHEN 'comments_added' THEN 4 WHEN 'reactions_added' THEN 5 WHEN 'chapters' THEN 6 WHEN 'observations' THEN 7 END AS rank OFFSET 0) r
            WHERE NOT dreamcatcher.is_meta_key(kk.key)
            OFFSET 0) k
        CROSS JOIN LATERAL jsonb_array_elements(dreamcatcher.jlist(k.v)) WITH ORDINALITY AS x(item, pos)
    ),
    items AS MATERIALIZED (
        SELECT x.frame, x.utc, x.stream_id, x.rank, x.pos, x.key,
               CASE WHEN x.reason IS NOT NULL OR x.kind = 'tally' THEN x.item END AS item,
               x.kind, x.ekey, x.data, x.reason
        FROM (SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_1(e.item) r WHERE e.rank IN (1, 2)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_2(e.item) r WHERE e.rank IN (3)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_3(e.item) r WHERE e.rank IN (4)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_4(e.item) r WHERE e.rank IN (5)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_5(e.item) r WHERE e.rank IN (6)
              UNION ALL SELECT e.*, r.* FROM e, dreamcatcher.rules_97f5bef2ebae3802_read_7(e.item, e.frame, e.stream_id, e.utc, e.pos) r WHERE e.rank IN (7)
              UNION ALL SELECT e.*, 'unmerged', e.key, NULL, NULL FROM e WHERE e.rank IS NULL) x
    ),
    quarantined AS (
        INSERT INTO dreamcatcher.quarantine_log
            (world, frame, stream_id, utc, key, position, reason, item, merged_in)
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
    upserted AS (
    SELECT p.kind, p.ekey, v.data AS old, coalesce(v.data, '{}'::jsonb) || p.patch AS new,
           coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
    FROM (SELECT g.kind, g.ekey, g.reset, g.ended, CASE WHEN g.n <= 64 THEN coalesce(g.small, '{}'::jsonb) ELSE dreamcatcher.jsonb_fold_many(g.many) END AS patch
          FROM (SELECT w.kind, w.ekey, count(*) AS n, false AS reset, false AS ended,
       dreamcatcher.jsonb_fold(w.data ORDER BY w.frame, w.utc, w.stream_id, w.rank, w.pos) FILTER (WHERE w.n <= 64) AS small,
       jsonb_agg(w.data ORDER BY w.frame, w.utc, w.stream_id, w.rank, w.pos) FILTER (WHERE w.n > 64) AS many
                FROM (SELECT i.*, count(*) OVER (PARTITION BY i.kind, i.ekey) AS n FROM items i WHERE i.kind IN ('post', 'agent') AND i.reason IS NULL) w
                GROUP BY w.kind, w.ekey) g) p
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    WHERE v.data IS NULL OR v.data || p.patch <> v.data
),
    appended AS MATERIALIZED (
    SELECT p.kind, p.ekey, v.data AS old, p.patch || coalesce(v.data, '{}'::jsonb) AS new,
           coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
    FROM (SELECT g.kind, g.ekey, g.reset, g.ended, CASE WHEN g.n <= 64 THEN coalesce(g.small, '{}'::jsonb) ELSE dreamcatcher.jsonb_fold_many(g.many) END AS patch
          FROM (SELECT w.kind, w.ekey, count(*) AS n, false AS reset, false AS ended,
       dreamcatcher.jsonb_fold(w.data ORDER BY w.frame DESC, w.utc DESC, w.stream_id DESC, w.rank DESC, w.pos DESC) FILTER (WHERE w.n <= 64) AS small,
       jsonb_agg(w.data ORDER BY w.frame DESC, w.utc DESC, w.stream_id DESC, w.rank DESC, w.pos DESC) FILTER (WHERE w.n > 64) AS many
                FROM (SELECT i.*, count(*) OVER (PARTITION BY i.kind, i.ekey) AS n FROM items i WHERE i.kind IN ('comment', 'reaction', 'chapter') AND i.reason IS NULL) w
                GROUP BY w.kind, w.ekey) g) p
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = p.kind AND c.ekey = p.ekey
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    WHERE v.data IS NULL OR p.patch || v.data <> v.data
),
    derived_1 AS (
    SELECT 'book'::text AS kind, b.grp AS ekey, v.data AS old, n.data AS new,
           coalesce(v.first_frame, p_frame) AS first_frame, v.ctid AS old_ctid
    FROM (SELECT u.grp, sum(u.new_one) AS new_count,
                 (array_agg(u.target ORDER BY u.frame DESC, u.utc DESC, u.stream_id DESC, u.rank DESC, u.pos DESC)
                      FILTER (WHERE u.target IS NOT NULL))[1] AS target
          FROM (SELECT c.new ->> 'book' AS grp, 1 AS new_one, NULL::bigint AS target,
                       NULL::bigint AS frame, NULL::timestamptz AS utc,
                       NULL::text COLLATE "C" AS stream_id,
                       NULL::integer AS rank, NULL::bigint AS pos
                FROM appended c WHERE c.kind = 'chapter' AND c.old IS NULL
                UNION ALL
                SELECT i.data ->> 'book', 0, dreamcatcher.jint(i.data -> 'target'),
                       i.frame, i.utc, i.stream_id, i.rank, i.pos
                FROM items i WHERE i.kind = 'chapter' AND i.reason IS NULL) u
          GROUP BY u.grp) b
    LEFT JOIN LATERAL (SELECT c.data, c.first_frame, c.ctid FROM dreamcatcher.entity_versions c
                       WHERE c.world = p_world AND c.kind = 'book' AND c.ekey = b.grp
                         AND c.valid_to IS NULL LIMIT 1) v ON true
    CROSS JOIN LATERAL (
        SELECT coalesce(b.target, (v.data ->> 'target')::bigint,
                        10) AS target,
               coalesce((v.data ->> 'chapters')::bigint, 0) + b.new_count AS n
    ) t
    CROSS JOIN LATERAL (
        SELECT jsonb_build_object('book', b.grp, 'target', t.target, 'chapters', t.n,
                   'compiled_frame', coalesce((v.data ->> 'compiled_frame')::bigint,
                                              CASE WHEN t.n >= t.target THEN p_frame END)) AS data
    ) n
    WHERE v.data IS DISTINCT FROM n.data
),
    changes AS MATERIALIZED (
        SELECT * FROM upserted
        UNION ALL SELECT * FROM appended
        UNION ALL SELECT * FROM derived_1
        UNION ALL SELECT i.kind, i.ekey, NULL::jsonb AS old, i.data AS new, p_frame AS first_frame, NULL::tid AS old_ctid FROM items i WHERE i.kind IN ('observation')
    ),
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
    SELECT jsonb_build_object(
               'deltas', p_deltas,
               'items', (SELECT count(*) FROM items i WHERE i.kind <> 'unmerged'),
               'quarantined', (SELECT count(*) FROM items i WHERE i.reason IS NOT NULL),
               'changes', (SELECT count(*) FROM written),
               'tallies', (SELECT count(*) FROM items i WHERE i.kind = 'tally'),
               'tally_count', (SELECT coalesce(sum(CASE WHEN jsonb_typeof(i.item) = 'number' THEN dreamcatcher.jint(i.item) ELSE dreamcatcher.jint(i.item -> 'count') END), 0)
                               FROM items i WHERE i.kind = 'tally'),
               'deferred', (SELECT count(*) FROM dreamcatcher.deferred_log x
                            WHERE x.world = p_world AND x.merged_in = p_frame),
               'unmerged_keys', coalesce((SELECT jsonb_object_agg(k.key, k.n)
                                          FROM (SELECT i.key, count(*) AS n FROM items i
                                                WHERE i.kind = 'unmerged' GROUP BY i.key) k), '{}'::jsonb)),
           (SELECT coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.new)), 0)
                   - coalesce(sum(dreamcatcher.entity_hash(c.kind, c.ekey, c.old))
                                  FILTER (WHERE c.old IS NOT NULL), 0)
            FROM changes c)
      INTO stats, acc;
END
$dc_97f5bef2ebae3802$;

INSERT INTO dreamcatcher.rule_sets (id, tag, source, normalized, builtin) VALUES ('97f5bef2ebae380285a00a18e4243b7818e3c64f4666815d14ecb048d0db1c47', '97f5bef2ebae3802', '# The default rule set: what a world merges when no rules were applied to it.
# Every entity it makes is byte-for-byte what dreamcatcher made before rules were a
# declaration, so state hashes are unchanged. Kinds are listed in apply order: within a
# delta, a post is created before it is commented on.

description = "dreamcatcher''s built-in rules: posts, agents, comments, reactions, chapters and books, observations"

# posts: {number, ...}, or a bare number ("42" and 42 are one post); each field last-write-wins
[kinds.post]
from  = ["posts_created", "posts_updated"]
key   = ["number"]
types = { number = "int" }
bare  = "number"
merge = "lww"

# agents: {id | agent_id | agent, ...}; each field last-write-wins
[kinds.agent]
from    = ["agents_updated"]
key     = ["id"]
aliases = { id = ["agent_id", "agent"] }
merge   = "lww"

# comments: by id, else by their exact content; a bare string is an id. The first copy wins;
# a later one may only add the fields still missing. Stored as written (aliases renamed).
[kinds.comment]
from        = ["comments_added"]
key         = ["id"]
fallback    = "content"
bare        = "id"
key_in_data = false
aliases     = { id = ["comment_id"], author = ["agent"], reply_to = ["replied_to", "replyTo", "target"], body = ["content", "summary"] }
merge       = "first"

# reactions: {target|node, type|reaction, author|agent}, "NODE:TYPE" or "TYPE on NODE";
# an item with a count and no target/type is a tally: counted, not stored
[kinds.reaction]
from         = ["reactions_added"]
key          = ["target", "type", "author"]
optional     = ["author"]
aliases      = { target = ["node"], type = ["reaction"], author = ["agent"] }
drop_aliases = true
patterns     = [
    { match = ''^(.+?) on (.+)$'', fields = ["type", "target"] },
    { match = ''^(.+):([^:]+)$'',  fields = ["target", "type"] },
]
tally        = "count"
merge        = "first"

# chapters: one per (book, agent, chapter)
[kinds.chapter]
from    = ["chapters"]
key     = ["book", "agent", "chapter"]
types   = { chapter = "int" }
aliases = { agent = ["author"] }
merge   = "first"

# books: a book compiles in the frame its count of chapters reaches its target (a chapter''s
# `target`, last-write-wins, default 10), and stays compiled
[kinds.book]
derive         = "chapter"
group          = "book"
count          = "chapters"
target         = "target"
target_default = 10

# observations: every one is kept, no dedupe
[kinds.observation]
from  = ["observations"]
merge = "append"
', '{"compiler":1,"kinds":[{"aliases":{},"bare":"number","delete":[],"drop_aliases":false,"encoding":"int","fallback":null,"fields":[],"from":["posts_created","posts_updated"],"key":["number"],"key_in_data":true,"merge":"lww","name":"post","optional":[],"patterns":[],"tally":null,"types":{"number":"int"}},{"aliases":{"id":["agent_id","agent"]},"bare":null,"delete":[],"drop_aliases":false,"encoding":"text","fallback":null,"fields":[],"from":["agents_updated"],"key":["id"],"key_in_data":true,"merge":"lww","name":"agent","optional":[],"patterns":[],"tally":null,"types":{"id":"text"}},{"aliases":{"author":["agent"],"body":["content","summary"],"id":["comment_id"],"reply_to":["replied_to","replyTo","target"]},"bare":"id","delete":[],"drop_aliases":false,"encoding":"tagged","fallback":"content","fields":[],"from":["comments_added"],"key":["id"],"key_in_data":false,"merge":"first","name":"comment","optional":[],"patterns":[],"tally":null,"types":{"id":"text"}},{"aliases":{"author":["agent"],"target":["node"],"type":["reaction"]},"bare":null,"delete":[],"drop_aliases":true,"encoding":"array","fallback":null,"fields":[],"from":["reactions_added"],"key":["target","type","author"],"key_in_data":true,"merge":"first","name":"reaction","optional":["author"],"patterns":[{"fields":["type","target"],"match":"^(.+?) on (.+)$"},{"fields":["target","type"],"match":"^(.+):([^:]+)$"}],"tally":"count","types":{"author":"text","target":"text","type":"text"}},{"aliases":{"agent":["author"]},"bare":null,"delete":[],"drop_aliases":false,"encoding":"array","fallback":null,"fields":[],"from":["chapters"],"key":["book","agent","chapter"],"key_in_data":true,"merge":"first","name":"chapter","optional":[],"patterns":[],"tally":null,"types":{"agent":"text","book":"text","chapter":"int"}},{"derive":{"count":"chapters","group":"book","source":"chapter","target":"target","target_default":10},"encoding":"text","name":"book"},{"aliases":{},"bare":null,"delete":[],"drop_aliases":false,"encoding":"position","fallback":null,"fields":[],"from":["observations"],"key":[],"key_in_data":true,"merge":"append","name":"observation","optional":[],"patterns":[],"tally":null,"types":{}}]}'::jsonb, true) ON CONFLICT (id) DO NOTHING;
INSERT INTO dreamcatcher.rule_defaults (only_row, rule_set) VALUES (true, '97f5bef2ebae380285a00a18e4243b7818e3c64f4666815d14ecb048d0db1c47') ON CONFLICT (only_row) DO UPDATE SET rule_set = excluded.rule_set;
