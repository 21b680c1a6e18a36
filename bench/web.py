"""web: the inspector's views on a big world (full: 1,000,000 entities over 10,000 frames).

The world is built by :mod:`bench.web_data`. The inspector runs in this process
(``serve``: uvicorn on a free port, the read-only pool) and each view's JSON
endpoint is requested over HTTP, ``reps`` times after two warm-ups: p50 and p95.
The ceiling is the raw SQL statement that fetches the same rows, on a dedicated
connection. Target: every view's p95 at most 300 ms (on ours: the ceiling
shows how much of it is the database's own work). ``page`` is the requests the
time-travel page makes when it opens, concurrently as the browser sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.context import Context, now, percentile
from bench.report import Row, Target, skipped
from bench.web_data import WORLD, build
from dreamcatcher_pg.db.queries import query
from dreamcatcher_pg.web.app import WebConfig
from dreamcatcher_pg.web.server import serve

#: (entities, frames, timed requests per view) by --size
SIZES = {"tiny": (20_000, 200, 5), "small": (200_000, 2_000, 15), "full": (1_000_000, 10_000, 25)}
CEILING_MS = 300.0
ROW_NAMES = (
    "web_worlds",
    "web_timeline",
    "web_frame",
    "web_state_early",
    "web_state_late",
    "web_state_deep",
    "web_state_search",
    "web_diff_adjacent",
    "web_diff_wide",
    "web_entity_hot",
    "web_history_hot",
    "web_quarantine",
    "web_page",
)


@dataclass(frozen=True)
class View:
    name: str
    path: str
    params: dict[str, Any]
    raw: str  # the ceiling: a statement (or a named query) giving the same rows
    raw_args: tuple[Any, ...]
    note: str
    #: and, for blame, the items of the log the view reads: (named query, args)
    more: tuple[tuple[str, tuple[Any, ...]], ...] = ()


def views(frames: int, posts: int, middle_key: str) -> list[View]:
    last, mid, w = frames - 1, frames // 2, WORLD
    a, b = frames // 100, last - frames // 100
    hot = {"world": w, "kind": "agent", "key": "agent-hot"}
    changes = "SELECT * FROM dreamcatcher.entity_changes($1, $2, $3)"
    needle = "on post 77"
    return [
        View(
            "web_worlds",
            "worlds",
            {},
            "web_world_summaries",
            ([w],),
            "every world: frames by status, lag, leader",
        ),
        View(
            "web_timeline",
            "timeline",
            {"world": w, "points": 300},
            "web_timeline",
            (w, 0, last, 300),
            f"all {frames:,} frames in 300 buckets",
        ),
        View(
            "web_frame",
            "frame",
            {"world": w, "frame": mid},
            "web_frame",
            (w, mid),
            "one frame and its neighbours",
        ),
        View(
            "web_state_early",
            "state",
            {"world": w, "kind": "post", "frame": 1},
            "web_state_page",
            (w, "post", 1, None, 51),
            "posts right after frame 1 (few exist): first page + count",
        ),
        View(
            "web_state_late",
            "state",
            {"world": w, "kind": "post", "frame": last},
            "web_state_page",
            (w, "post", last, None, 51),
            f"all {posts:,} posts after the last frame: first page + count",
        ),
        View(
            "web_state_deep",
            "state",
            {"world": w, "kind": "post", "frame": mid, "after": middle_key},
            "web_state_page",
            (w, "post", mid, middle_key, 51),
            "a page in the middle of the keys",
        ),
        View(
            "web_state_search",
            "state",
            {"world": w, "kind": "comment", "frame": last, "value": needle},
            "web_state_search",
            (w, "comment", last, None, 51, 10_000, None, None, needle),
            "comments with a field containing 'on post 77': 10,000 looked at per request",
        ),
        View(
            "web_diff_adjacent",
            "diff",
            {"world": w, "a": mid - 1, "b": mid, "kind": "post"},
            changes,
            (w, mid - 1, mid),
            "one frame's changes, with the per-kind counts",
        ),
        View(
            "web_diff_wide",
            "diff",
            {"world": w, "a": a, "b": b, "kind": "post"},
            "web_diff_page",
            (w, "post", a, b, None, 51),
            "98% of the history: first page of posts",
        ),
        View(
            "web_entity_hot",
            "entity",
            hot,
            "web_entity_at",
            (w, "agent", "agent-hot", last),
            f"an agent with {frames:,} versions, blame of every field",
            (("web_entity_items", (w, "agent", "agent-hot", [0, last], ["agents_updated"], ["agent-hot"])),),
        ),
        View(
            "web_history_hot",
            "history",
            hot,
            "web_entity_versions",
            (w, "agent", "agent-hot", None, 21),
            "its 20 newest versions, with blame",
            (
                (
                    "web_entity_items",
                    (
                        w,
                        "agent",
                        "agent-hot",
                        list(range(last - 19, last + 1)),
                        ["agents_updated"],
                        ["agent-hot"],
                    ),
                ),
            ),
        ),
        View(
            "web_quarantine",
            "quarantine",
            {"world": w},
            "web_quarantine",
            (w, None, None, 51),
            "the newest page of quarantined items",
        ),
    ]


async def _samples(reps: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(2):
        await call()
    out = []
    for _ in range(reps):
        started = now()
        await call()
        out.append((now() - started) * 1000)
    return out


def _row(name: str, ours: list[float], raw: list[float], note: str, extra: dict[str, Any]) -> Row:
    return Row(
        name,
        percentile(ours, 95),
        percentile(raw, 95),
        "ms",
        Target("<=", CEILING_MS, on_ours=True),
        note=f"p95 of GET /api/…; ceiling: the raw query's p95 — {note}",
        detail={
            "p50_ms": percentile(ours, 50),
            "p95_ms": percentile(ours, 95),
            "ceiling_p50_ms": percentile(raw, 50),
            **extra,
        },
    )


async def bench_web(ctx: Context) -> list[Row]:
    try:
        import httpx
    except ImportError:
        return [skipped(name, "httpx not installed: pip install -e '.[test]'") for name in ROW_NAMES]
    entities, frames, reps = SIZES[ctx.size.name]
    conn = await asyncpg.connect(ctx.dsn)
    try:
        ctx.say(f"web: building {entities:,} entities over {frames:,} frames (generated by the server)")
        started = now()
        built = await build(conn, entities, frames)
        ctx.say(f"web: built in {now() - started:.1f} s: {built}")
        current_posts = (
            "FROM dreamcatcher.entity_versions WHERE world = $1 AND kind = 'post' AND valid_to IS NULL"
        )
        posts = int(await conn.fetchval(f"SELECT count(*) {current_posts}", WORLD))
        middle_key = await conn.fetchval(
            f"SELECT ekey {current_posts} ORDER BY ekey OFFSET $2 LIMIT 1", WORLD, posts // 2
        )
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        config = WebConfig(ctx.dsn)
        server = asyncio.create_task(serve(config, "127.0.0.1", 0, stop=stop, on_ready=ready.set_result))
        try:
            url = await asyncio.wait_for(ready, 60)
            rows = await _time_views(ctx, conn, httpx, url, reps, views(frames, posts, middle_key), built)
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server, 30)
    finally:
        await conn.close()
    worst = max(rows, key=lambda r: r.ours or 0.0)
    ctx.say(f"web: slowest view {worst.name}: p95 {worst.ours:.1f} ms")
    return rows


async def _time_views(
    ctx: Context,
    conn: asyncpg.Connection,
    httpx: Any,
    url: str,
    reps: int,
    todo: list[View],
    built: dict[str, int],
) -> list[Row]:
    rows = []
    base = {
        "entities": built["entities"],
        "versions": built["versions"],
        "frames": built["frames"],
        "deltas": built["deltas"],
        "reps": reps,
    }
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def get(path: str, params: dict[str, Any]) -> Any:
            response = await http.get(f"/api/{path}", params=params)
            response.raise_for_status()
            return response.json()

        for view in todo:
            sql = view.raw if " " in view.raw else query(view.raw)
            ours = await _samples(reps, lambda v=view: get(v.path, v.params))  # type: ignore[misc]
            statements = [(sql, view.raw_args)] + [(query(name), args) for name, args in view.more]

            async def ceiling(todo: list[tuple[str, tuple[Any, ...]]] = statements) -> None:
                for statement, args in todo:
                    await conn.fetch(statement, *args)

            raw = await _samples(reps, ceiling)
            doc = await get(view.path, view.params)
            size = next(
                (
                    len(v)
                    for k in ("items", "points", "versions", "fields", "worlds")
                    if isinstance(v := doc.get(k), list)
                ),
                1,
            )
            rows.append(_row(view.name, ours, raw, view.note, {**base, "rows_returned": size}))
            ctx.say(
                f"web: {view.name} p50 {percentile(ours, 50):.1f} ms, p95 {percentile(ours, 95):.1f} ms "
                f"(raw p95 {percentile(raw, 95):.1f} ms)"
            )

        last = built["frames"] - 1
        opening = [("meta", {}), ("worlds", {}), ("world", {"world": WORLD})]
        together = [
            ("frame", {"world": WORLD, "frame": last}),
            ("timeline", {"world": WORLD, "from": max(0, last - 300), "to": last, "points": 300}),
            ("state", {"world": WORLD, "frame": last}),
        ]

        async def page() -> None:
            for path, params in opening:
                await get(path, params)
            await asyncio.gather(*(get(path, params) for path, params in together))

        raw_page = [
            ("web_world_summaries", ([WORLD],)),
            ("web_kinds", (WORLD,)),
            ("web_state_page", (WORLD, "post", last, None, 51)),
        ]

        async def raw_statements() -> None:
            for name, args in raw_page:
                await conn.fetch(query(name), *args)

        ours, raw_ms = await _samples(reps, page), await _samples(reps, raw_statements)
        rows.append(_row("web_page", ours, raw_ms, "the time-travel page opening: its 6 requests", base))
    return rows
