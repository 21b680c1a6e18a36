"""Typical small deltas (~300 bytes of JSON: a post and two comments), deterministic."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
WORDS = (
    "tidepool",
    "lantern",
    "orbit",
    "garden",
    "glass",
    "bee",
    "paper",
    "boat",
    "night",
    "train",
    "salt",
    "map",
    "owl",
    "harbor",
    "moss",
    "library",
    "engine",
    "dune",
    "choir",
    "signal",
)
CHANNELS = ("general", "research", "stories", "meta")


@dataclass(frozen=True, slots=True)
class BenchDelta:
    frame: int
    stream_id: str
    utc: datetime
    payload: dict[str, Any]

    def record(self, world: str) -> tuple[str, int, str, datetime, str]:
        """The row for a plain table / COPY: (world, frame, stream_id, utc, payload JSON)."""
        return (world, self.frame, self.stream_id, self.utc, orjson.dumps(self.payload).decode())


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def payload(rng: random.Random, serial: int, post_range: int) -> dict[str, Any]:
    """One delta: creates/retitles a post (numbers repeat across deltas) and adds two comments."""
    number = rng.randrange(1, post_range + 1)
    author = f"agent-{rng.randrange(100):02d}"
    return {
        "posts_created": [
            {"number": number, "title": _words(rng, 4), "channel": rng.choice(CHANNELS), "author": author}
        ],
        "comments_added": [
            {
                "id": f"c{serial}-{k}",
                "discussion": number,
                "author": f"agent-{rng.randrange(100):02d}",
                "body": _words(rng, 6),
            }
            for k in range(2)
        ],
    }


def stream_name(index: int) -> str:
    return f"stream-{index:03d}"


def deltas(
    *,
    seed: int,
    frame: int,
    stream: int,
    count: int,
    post_range: int = 1000,
    serial_base: int = 0,
) -> Iterator[BenchDelta]:
    """``count`` deltas of one stream for one frame, utc one microsecond apart."""
    rng = random.Random(seed * 1_000_003 + frame * 1009 + stream)
    sid = stream_name(stream)
    base = EPOCH + timedelta(minutes=frame)
    for i in range(count):
        yield BenchDelta(
            frame,
            sid,
            base + timedelta(microseconds=i),
            payload(rng, serial_base + stream * 10_000_000 + i, post_range),
        )
