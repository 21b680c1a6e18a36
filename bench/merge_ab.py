"""merge_ab: the compiled rules against the hand-written merge they replaced, in one run.

``bench/baseline_merge.sql`` is ``sql/merge.sql`` as it was before the rules became a
declaration (commit a7f4642): its ``merge_frame`` and readers are installed beside today's under
``bench_before_*`` names, in the same scratch database, on the same tables. Per size N, each
repetition writes three frames of N deltas (untimed, COPY) and times one merge of each, in an
order that rotates between repetitions:

* ``before``: the hand-written merge, on the bench's usual deltas (a post and two comments);
* ``default``: today's ``merge_frame`` with the default rule set, on the same deltas (its frame
  hash must equal ``before``'s: same rules, same bytes);
* ``user``: today's ``merge_frame`` with a 6-kind user rule set (units lww, votes first by
  (target, voter), findings by content, events append, stock sum, labels set), on deltas of three
  items each, like the others.

Rows: ``merge_ab_default@N`` (µs per delta, default / before, target ≤ 1.0) and
``merge_ab_user@N`` (user / before, target ≤ 1.25): the means over the repetitions, whose
order rotates, of the server process's CPU time per delta when the server runs on this machine
(read from /proc: on a shared machine, wall time mostly measures the neighbours), else of the
wall time. Both are in the row's detail.
"""

from __future__ import annotations

import os
import random
import statistics
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from bench.context import Context
from bench.merge import (
    FRAME_STATUS,
    LOG_COLUMNS,
    WARM_READ,
    _checkpoint,
    _timed_transaction,
    clone_frame,
    write_frame,
)
from bench.payloads import EPOCH, WORDS
from bench.report import Row, Target
from dreamcatcher_pg.rules import apply_rules, parse_rules

CLOSED_FRAME = (
    "INSERT INTO dreamcatcher.frame_log (world, frame, status, closed_at) VALUES ($1, $2, 'closed', now())"
)
BASELINE = Path(__file__).with_name("baseline_merge.sql")
SIZES = {"tiny": (1_000,), "small": (10_000, 100_000), "full": (10_000, 100_000)}
REPS = {1_000: 3, 10_000: 3, 100_000: 3}

USER_RULES = """
[kinds.unit]
from  = ["units_spawned", "units_moved"]
key   = ["id"]
types = { id = "int" }
merge = "lww"
[kinds.vote]
from  = ["votes"]
key   = ["target", "voter"]
merge = "first"
[kinds.finding]
from  = ["findings"]
key   = "content"
merge = "first"
[kinds.event]
from  = ["events"]
merge = "append"
[kinds.stock]
from   = ["stock_changes"]
key    = ["item"]
merge  = "sum"
fields = ["qty"]
[kinds.label]
from   = ["labels"]
key    = ["target"]
merge  = "set"
fields = ["tags"]
"""


def baseline_sql() -> str:
    """The hand-written merge under other names (its helpers are today's, byte for byte)."""
    text = BASELINE.read_text(encoding="utf-8")
    for name in ("merge_frame(", "read_", "rule_rank("):
        text = text.replace(f"dreamcatcher.{name}", f"dreamcatcher.bench_before_{name}")
    return text


def user_payload(rng: random.Random, serial: int, key_range: int) -> dict[str, Any]:
    """Three items, like the bench's usual delta: units/votes/stock, or events/labels/findings."""
    word = rng.choice(WORDS)
    if serial % 2 == 0:
        return {
            "units_moved": [
                {"id": rng.randrange(key_range), "x": rng.randrange(100), "y": rng.randrange(100)}
            ],
            "votes": [
                {
                    "target": f"p{rng.randrange(key_range)}",
                    "voter": f"agent-{rng.randrange(100):02d}",
                    "value": rng.choice([-1, 1]),
                }
            ],
            "stock_changes": [
                {"item": f"{word}-{rng.randrange(key_range // 10)}", "qty": rng.randrange(-5, 10)}
            ],
        }
    return {
        "events": [{"what": word, "serial": serial}],
        "labels": [{"target": f"p{rng.randrange(key_range)}", "tags": [word, rng.choice(WORDS)]}],
        "findings": [f"{word} {rng.choice(WORDS)} in module {rng.randrange(key_range)}"],
    }


def user_records(world: str, frame: int, n: int, key_range: int) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(frame * 7919 + n)
    for i in range(n):
        stream = f"stream-{i % 16:03d}"
        utc = EPOCH + timedelta(minutes=frame, microseconds=i)
        yield world, frame, stream, utc, orjson.dumps(user_payload(rng, i, key_range)).decode()


async def _write_user_frame(conn: asyncpg.Connection, world: str, frame: int, n: int, key_range: int) -> None:
    await conn.execute("INSERT INTO dreamcatcher.worlds (world) VALUES ($1) ON CONFLICT DO NOTHING", world)
    await conn.copy_records_to_table(
        "delta_log",
        schema_name="dreamcatcher",
        columns=LOG_COLUMNS,
        records=user_records(world, frame, n, key_range),
    )
    await _close(conn, world, frame)


async def _close(conn: asyncpg.Connection, world: str, frame: int) -> None:
    await conn.execute(CLOSED_FRAME, world, frame)


def backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the server process ``pid`` has used, when it runs on this machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _time(
    conn: asyncpg.Connection, variant: str, world: str, timeout: float
) -> tuple[float, float | None]:
    """Merge frame 1 (untimed), then time frame 2's merge: the same steps for every variant
    (a warm read of the frame, a checkpoint, one transaction with the merge, commit included).
    Returns wall seconds and the server process's CPU seconds (None when it is not local)."""
    merge = "bench_before_merge_frame" if variant == "before" else "merge_frame"
    pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
    wall, cpu = 0.0, None
    for frame in (1, 2):
        await conn.fetchval(WARM_READ, world, frame)
        await _checkpoint(conn)
        cpu_before = backend_cpu(pid)
        wall = await _timed_transaction(conn, timeout, (f"SELECT dreamcatcher.{merge}($1, $2)", world, frame))
        cpu_after = backend_cpu(pid)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        status = await conn.fetchval(FRAME_STATUS, world, frame)
        if status != "merged":
            raise RuntimeError(f"{merge}({world!r}, {frame}) did not merge the frame (status {status!r})")
    return wall, cpu


async def _one_size(ctx: Context, conn: asyncpg.Connection, n: int) -> dict[str, list[float]]:
    key_range = max(100, n // 4)
    small = max(100, n // 10)
    ctx.say(f"merge_ab {n:,}: writing the source frames (COPY)")
    await write_frame(conn, f"ab_src_{n}", 1, small, key_range, status="open")
    await write_frame(conn, f"ab_src_{n}", 2, n, key_range, status="open")
    await _write_user_frame(conn, f"ab_usrc_{n}", 1, small, key_range)
    await _write_user_frame(conn, f"ab_usrc_{n}", 2, n, key_range)
    user_rules = parse_rules(USER_RULES, "user.toml")
    times: dict[str, list[float]] = {"before": [], "default": [], "user": []}
    cpus: dict[str, list[float]] = {"before": [], "default": [], "user": []}
    hashes: dict[str, str] = {}
    order = ["before", "default", "user"]
    for rep in range(REPS.get(n, 2)):
        for variant in order[rep % 3 :] + order[: rep % 3]:
            world = f"ab_{variant}_{n}_{rep}"
            source = f"ab_usrc_{n}" if variant == "user" else f"ab_src_{n}"
            if variant == "user":
                await apply_rules(conn, world, user_rules)
            for frame in (1, 2):
                await clone_frame(conn, (source, frame), world, frame)
                await _close(conn, world, frame)
            await conn.execute("ANALYZE dreamcatcher.delta_log")
            seconds, cpu = await _time(conn, variant, world, ctx.size.merge_timeout)
            times[variant].append(seconds / n * 1e6)
            if cpu is not None:
                cpus[variant].append(cpu / n * 1e6)
            hashes[variant] = await conn.fetchval(
                "SELECT state_hash FROM dreamcatcher.frame_log WHERE world = $1 AND frame = 2", world
            )
            cpu_note = f", server CPU {cpu / n * 1e6:.1f} µs/delta" if cpu is not None else ""
            ctx.say(f"merge_ab {n:,} rep {rep + 1}: {variant} {seconds / n * 1e6:.1f} µs/delta{cpu_note}")
    if hashes["before"] != hashes["default"]:
        raise RuntimeError(
            f"merge_ab {n}: the default rules hash {hashes['default']}, "
            f"the hand-written merge {hashes['before']}"
        )
    return {**times, **{f"{v}_cpu": xs for v, xs in cpus.items() if xs}}


async def bench_merge_ab(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    conn = await asyncpg.connect(ctx.dsn)
    try:
        await conn.execute("SET client_min_messages = warning")
        await conn.execute(baseline_sql())
        for n in SIZES.get(ctx.size.name, (10_000,)):
            t = await _one_size(ctx, conn, n)
            detail = {f"{v}_us_per_delta": [round(x, 2) for x in xs] for v, xs in t.items()}
            # the server's CPU per delta when the server is local (contention on a shared machine
            # inflates wall time, not CPU time); else wall time
            cpu = "before_cpu" in t
            suffix = "_cpu" if cpu else ""
            before = statistics.mean(t["before" + suffix])
            default, user = statistics.mean(t["default" + suffix]), statistics.mean(t["user" + suffix])
            what = "server CPU" if cpu else "wall time"
            note = f"N={n:,}, {what}, mean of {len(t['before'])} (rotated order), same run, same database"
            rows.append(
                Row(f"merge_ab_default@{n}", default, before, "µs/delta", Target("<=", 1.0), note, detail)
            )
            user_note = note + "; 6-kind user rules"
            rows.append(
                Row(f"merge_ab_user@{n}", user, before, "µs/delta", Target("<=", 1.25), user_note, detail)
            )
    finally:
        await conn.close()
    return rows
