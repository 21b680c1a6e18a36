"""The demo's simulated content: what each stream writes in each frame (pure).

The content is a pure function of ``(seed, streams, deltas_per_frame, stream,
frame)`` (:func:`plan_frame`), utc included (a simulated clock: one minute per
frame from :data:`SIM_EPOCH`), so the same seed yields the same log, the same
merged state and the same state hashes, whatever the timing. It exercises
every merge rule: posts several streams create and retitle (last-write-wins),
comments from several streams on the same posts, the same comment sent by two
streams (with an id, and without one: content dedupe), reactions as objects
and as ``"NODE:TYPE"`` strings, agent updates, chapters toward books with a
target (books compile during the run), observations, a few unreadable items
(quarantined) and a few retried inserts (acknowledged as ``"duplicate"``).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

#: The simulated clock: frame f spans the minute starting SIM_EPOCH + f minutes.
SIM_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
FRAME_SPAN_US = 60_000_000
COORDINATOR = "demo-coordinator"

TOPICS = (
    "tidepools",
    "lanterns",
    "orbital gardens",
    "glass bees",
    "paper boats",
    "night trains",
    "salt maps",
    "clockwork owls",
    "fog harbors",
    "moss libraries",
    "quiet engines",
    "dune choirs",
)
CHANNELS = ("general", "research", "stories", "meta")
REACTIONS = ("like", "heart", "laugh", "insight", "rocket")
MOODS = ("curious", "sleepy", "bold", "wistful", "focused")
#: Unreadable on purpose: each ends in dreamcatcher.quarantine with its reason.
UNREADABLE: tuple[tuple[str, Any], ...] = (
    ("posts_created", {"title": "a draft that lost its number", "channel": "meta"}),
    ("chapters", {"agent": "agent-01", "chapter": 1, "title": "a chapter of no book"}),
    ("reactions_added", "applause"),
    ("agents_updated", {"bio": "a bio for nobody"}),
)


# -- the deterministic plan -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedDelta:
    """One delta a stream will write; ``retry`` means it is sent twice (same utc)."""

    stream_id: str
    frame: int
    utc: datetime
    payload: dict[str, Any]
    retry: bool


def stream_name(index: int, streams: int) -> str:
    return f"stream-{index + 1:0{max(2, len(str(streams)))}d}"


def agent_name(index: int) -> str:
    return f"agent-{index + 1:02d}"


def _agents(streams: int) -> int:
    return 4 + 2 * streams


def _post_pool(frame: int) -> range:
    """Post numbers in play at a frame: two new ones per frame, at most 20, so streams
    keep touching the same ones."""
    return range(1000 + max(0, 2 * frame - 16), 1004 + 2 * frame)


def _book(frame: int) -> tuple[str, int]:
    """The book chapters go to in a frame (a new one every two frames) and its target."""
    number = frame // 2
    return f"book-{number}", 3 + number % 3


def _base_slot(seed: int, streams: int, stream: int, frame: int, slot: int, first: bool) -> dict[str, Any]:
    """The content of one delta before cross-stream echoes are added."""
    rng = random.Random(f"{seed}:{stream}:{frame}:{slot}")
    me = stream_name(stream, streams)
    agents = [agent_name(i) for i in range(_agents(streams))]
    posts = _post_pool(frame)
    payload: dict[str, Any] = {"_meta": {"status": "ok", "demo": True, "slot": slot}}

    if slot == 0 or rng.random() < 0.6:  # posts: created by one stream, retitled by others
        number = rng.choice(posts)
        title = f"{rng.choice(TOPICS)} #{number} by {me} at frame {frame}"
        if slot == 0 or rng.random() < 0.5:
            author = rng.choice(agents)
            payload["posts_created"] = [
                {"number": number, "title": title, "channel": rng.choice(CHANNELS), "author": author}
            ]
        else:
            payload["posts_updated"] = [{"number": number, "title": title}]
    if rng.random() < 0.8:  # comments: with an id, or identified by their content
        comments = []
        for n in range(rng.randint(1, 2)):
            author, discussion = rng.choice(agents), rng.choice(posts)
            comment: dict[str, Any] = {
                "author": author,
                "discussion": discussion,
                "body": f"{author} on #{discussion}: {rng.choice(TOPICS)} ({rng.randint(1, 999)})",
            }
            if rng.random() < 0.75:
                comment = {"id": f"c-{frame}-{stream + 1}-{slot}-{n}", **comment}
            comments.append(comment)
        payload["comments_added"] = comments
    if rng.random() < 0.6:  # reactions: object form, or "NODE:TYPE" (author unknown)
        node, kind = f"post-{rng.choice(posts)}", rng.choice(REACTIONS)
        if rng.random() < 0.5:
            payload["reactions_added"] = [{"target": node, "type": kind, "author": rng.choice(agents)}]
        else:
            payload["reactions_added"] = [f"{node}:{kind}"]
    if rng.random() < 0.4:  # agent bios: last write wins
        agent = rng.choice(agents)
        payload["agents_updated"] = [
            {"id": agent, "bio": f"{agent}, as {me} saw it at frame {frame}", "mood": rng.choice(MOODS)}
        ]
    if slot == 0 or rng.random() < 0.4:  # chapters toward this frame's book
        book, target = _book(frame)
        payload["chapters"] = [
            {
                "book": book,
                "agent": rng.choice(agents),
                "chapter": rng.randint(1, target),
                "target": target,
                "title": f"on {rng.choice(TOPICS)}",
            }
        ]
    if rng.random() < 0.5:  # observations: every one kept
        payload["observations"] = [
            {"agent": rng.choice(agents), "note": f"{rng.choice(TOPICS)} seen", "score": rng.randint(1, 100)}
        ]
    if (first and stream == 0 and slot == 0) or rng.random() < 0.03:
        key, item = rng.choice(UNREADABLE)
        payload.setdefault(key, []).append(item)
    return payload


def plan_frame(
    seed: int, streams: int, deltas_per_frame: int, stream: int, frame: int, first_frame: int = 0
) -> list[PlannedDelta]:
    """The deltas stream ``stream`` (an index) writes in ``frame``, in a run from ``first_frame``.

    Pure: depends only on its arguments. The last delta also re-sends a comment
    with an id and one without an id from a neighbour stream's same frame (or,
    with a single stream, from its previous frame), so the dedupe rules bite.
    """
    first = frame == first_frame  # every run retries and quarantines something at least once
    slots = [_base_slot(seed, streams, stream, frame, j, first) for j in range(deltas_per_frame)]
    source = ((stream + 1) % streams, frame) if streams > 1 else (stream, frame - 1)
    if source[1] >= 0:
        theirs = [
            c
            for j in range(deltas_per_frame)
            for c in _base_slot(seed, streams, *source, j, source[1] == first_frame).get("comments_added", [])
        ]
        echoes = [
            next((c for c in theirs if "id" in c), None),
            next((c for c in theirs if "id" not in c), None),
        ]
        slots[-1].setdefault("comments_added", []).extend(c for c in echoes if c is not None)
    rng = random.Random(f"{seed}:{stream}:{frame}:clock")
    start = SIM_EPOCH + timedelta(minutes=frame)
    offsets = sorted(rng.sample(range(FRAME_SPAN_US), deltas_per_frame))
    return [
        PlannedDelta(
            stream_id=stream_name(stream, streams),
            frame=frame,
            utc=start + timedelta(microseconds=offset),
            payload=payload,
            retry=(first and stream == 0 and j == 0) or rng.random() < 0.06,
        )
        for j, (offset, payload) in enumerate(zip(offsets, slots, strict=True))
    ]
