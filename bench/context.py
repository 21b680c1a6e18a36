"""What every benchmark gets: the scratch database, the size, a progress line, timing helpers."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.sizes import Size


@dataclass
class Context:
    dsn: str
    size: Size
    quiet: bool = False
    #: (world, frame) of closed frames already written by merge_throughput, by size
    built_frames: dict[int, tuple[str, int]] = field(default_factory=dict)

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the maximum: honest for small runs)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), -(-len(ordered) * pct // 100)))
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


Clock = Callable[[], float]
now: Clock = time.perf_counter
