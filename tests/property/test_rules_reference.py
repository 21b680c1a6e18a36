"""Generated rule sets: the compiled SQL merge equals the Python reference, in any arrival order.

Hypothesis writes a rules file (1-3 kinds: lww / first / sum / set / append / content keys,
int and text keys, composite keys, aliases, deletions, a derived kind), and shuffled,
duplicated, utc-tied deltas for three frames. The rules are applied to two worlds, the deltas
inserted in two different orders; after every frame each world's state must equal
:mod:`tests.support.reference_rules`, and the two worlds' frame hashes must be equal.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from dreamcatcher_pg.rules import apply_rules, parse_rules
from tests.support.reference_rules import State, merge_frame, pg_text
from tests.support.strategies import STREAMS, T0, db_settings, new_world

Delta = tuple[int, str, Any, dict[str, Any]]
FRAMES = (1, 2, 3)


@st.composite
def rule_files(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]]]:
    """A rules file and, per kind, what its items may hold."""
    lines: list[str] = []
    specs: list[dict[str, Any]] = []
    for n in range(1, draw(st.integers(1, 3)) + 1):
        name = f"k{n}"
        merge = draw(st.sampled_from(["lww", "first", "sum", "set", "append", "content"]))
        spec: dict[str, Any] = {"name": name, "merge": merge, "from": [f"{name}_add", f"{name}_more"]}
        lines += [f"[kinds.{name}]", f'from = ["{name}_add", "{name}_more"]']
        if merge == "append":
            lines.append('merge = "append"')
        elif merge == "content":
            lines += ['key = "content"', 'merge = "first"']
        else:
            key = draw(st.sampled_from([["a"], ["a", "b"], ["b", "a"]]))
            types = {f: draw(st.sampled_from(["int", "text"])) for f in key}
            spec.update(key=key, types=types)
            lines += [f"key = {json.dumps(key)}", f'merge = "{merge}"']
            lines.append("types = { " + ", ".join(f'{f} = "{t}"' for f, t in types.items()) + " }")
            if len(key) == 2 and draw(st.booleans()):
                lines.append('optional = ["b"]')
                spec["optional"] = True
            if draw(st.booleans()):
                lines.append('aliases = { a = ["aa"] }')
            if merge in ("sum", "set"):
                field = "q" if merge == "sum" else "tags"
                lines.append(f'fields = ["{field}"]')
            if draw(st.booleans()):
                lines.append(f'delete = ["{name}_del"]')
                spec["delete"] = f"{name}_del"
        specs.append(spec)
        lines.append("")
    keyed = [s for s in specs if "key" in s and "delete" not in s and "b" not in s["key"][:1]]
    if keyed and draw(st.booleans()):
        src = keyed[0]
        lines += [
            "[kinds.tally_of]",
            f'derive = "{src["name"]}"',
            'group = "a"',
            'count = "n"',
            'target = "need"',
            f"target_default = {draw(st.integers(1, 3))}",
        ]
        src["derived"] = True
    return "\n".join(lines) + "\n", specs


def _key_value(draw: st.DrawFn) -> Any:
    return draw(st.sampled_from([0, 1, 2, "1", " 2 ", "x", "y"]))


@st.composite
def item_for(draw: st.DrawFn, spec: dict[str, Any], deletion: bool = False) -> Any:
    if spec["merge"] in ("append", "content"):
        return draw(st.sampled_from([{"v": 1}, {"v": 2}, "s", 3, None, [1], {"v": 1, "w": "x"}]))
    item: dict[str, Any] = {}
    for f in spec["key"]:
        if draw(st.integers(0, 9)) == 0:
            continue  # a key field missing: unreadable (unless optional)
        item["aa" if f == "a" and draw(st.booleans()) else f] = _key_value(draw)
    if deletion:
        return item
    for f in draw(st.lists(st.sampled_from(["x", "y"]), max_size=2, unique=True)):
        item[f] = draw(st.sampled_from([0, 1, "p", "q", None]))
    if spec["merge"] == "sum" and draw(st.booleans()):
        item["q"] = draw(st.sampled_from([1, 2, -3, 10, None, "bad"]))
    if spec["merge"] == "set" and draw(st.booleans()):
        item["tags"] = draw(st.sampled_from([["t1"], ["t2", "t1"], "t3", [], None, [1]]))
    if spec.get("derived") and draw(st.integers(0, 3)) == 0:
        item["need"] = draw(st.sampled_from([1, 2, 3, 0]))
    return item


@st.composite
def frame_logs(draw: st.DrawFn, specs: list[dict[str, Any]]) -> list[Delta]:
    deltas: list[Delta] = []
    seen: set[tuple[int, str, Any]] = set()
    for frame in FRAMES:
        for _ in range(draw(st.integers(1, 5))):
            stream = draw(st.sampled_from(STREAMS))
            utc = T0 + timedelta(minutes=frame, seconds=draw(st.integers(0, 2)))
            if (frame, stream, utc) in seen:
                continue
            seen.add((frame, stream, utc))
            payload: dict[str, Any] = {}
            for spec in draw(
                st.lists(st.sampled_from(specs), min_size=1, max_size=3, unique_by=lambda s: s["name"])
            ):
                key = draw(st.sampled_from(spec["from"] + ([spec["delete"]] if "delete" in spec else [])))
                items = draw(
                    st.lists(item_for(spec, deletion=key == spec.get("delete")), min_size=1, max_size=4)
                )
                payload[key] = items if len(items) > 1 or draw(st.booleans()) else items[0]
            if draw(st.integers(0, 4)) == 0:
                payload["not_a_rule_key"] = [1]
            deltas.append((frame, stream, utc, payload))
    # the same content again under another stream and clock: a duplicate of every item in it
    if deltas and draw(st.booleans()):
        frame, _, utc, payload = draw(st.sampled_from(deltas))
        deltas.append((frame, "dup", utc, payload))
    return deltas


async def _load(pool: asyncpg.Pool, world: str, deltas: list[Delta]) -> None:
    async with pool.acquire() as conn:
        for frame, stream, utc, payload in deltas:
            status = await conn.fetchval(
                "SELECT dreamcatcher.append_delta($1, $2, $3, $4, $5::jsonb)",
                world,
                stream,
                frame,
                utc,
                json.dumps(payload),
            )
            assert status == "stored"
        for frame in FRAMES:
            await conn.execute("SELECT dreamcatcher.close_frame($1, $2)", world, frame)
        for frame in FRAMES:
            async with conn.transaction():
                assert await conn.fetchval("SELECT dreamcatcher.claim_next_frame($1)", world) == frame
                assert (
                    await conn.fetchval("SELECT dreamcatcher.merge_frame($1, $2)", world, frame) is not None
                )


async def _state(conn: asyncpg.Connection, world: str, frame: int) -> dict[tuple[str, str], tuple[str, int]]:
    rows = await conn.fetch(
        "SELECT kind, ekey, data::text AS data, first_frame FROM dreamcatcher.entity_versions "
        "WHERE world = $1 AND valid_from <= $2 AND (valid_to IS NULL OR valid_to > $2)",
        world,
        frame,
    )
    return {(r["kind"], r["ekey"]): (r["data"], r["first_frame"]) for r in rows}


@db_settings(40)
@given(data=st.data())
async def test_compiled_merge_equals_the_reference(pool: asyncpg.Pool, data: st.DataObject) -> None:
    source, specs = data.draw(rule_files())
    rules = parse_rules(source)
    deltas = data.draw(frame_logs(specs))
    shuffled = data.draw(st.permutations(deltas))
    one, two = new_world("rules-a"), new_world("rules-b")
    async with pool.acquire() as conn:
        for world in (one, two):
            await apply_rules(conn, world, rules)
    await _load(pool, one, deltas)
    await _load(pool, two, list(shuffled))

    state: State = {}
    async with pool.acquire() as conn:
        for frame in FRAMES:
            bad = merge_frame(rules, state, frame, [d for d in deltas if d[0] == frame])
            expected = {k: (pg_text(v[0]), v[1]) for k, v in state.items()}
            assert await _state(conn, one, frame) == expected, (source, frame)
            stats = json.loads(
                await conn.fetchval(
                    "SELECT stats::text FROM dreamcatcher.frame_log WHERE world = $1 AND frame = $2",
                    one,
                    frame,
                )
            )
            assert stats["quarantined"] == bad
        hashes = [
            await conn.fetch(
                "SELECT frame, state_hash, rules FROM dreamcatcher.frame_log WHERE world = $1 ORDER BY frame",
                w,
            )
            for w in (one, two)
        ]
    assert [tuple(r) for r in hashes[0]] == [tuple(r) for r in hashes[1]]
    assert {r["rules"] for r in hashes[0]} == {rules.id}
