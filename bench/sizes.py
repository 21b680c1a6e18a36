"""How big each benchmark runs at ``--size tiny|small|full``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Size:
    name: str
    #: rounds of (raw, ours) for the ingest rows (the order turning each round; the best of each
    #: side is kept), and for latency (its frames split between the rounds)
    repeats: int
    #: ingest_single / notify_ceiling: concurrent connections, inserts per connection
    single_workers: int
    single_per_worker: int
    #: ingest_batch: concurrent writers, batches per writer, deltas per batch
    batch_writers: int
    batches_per_writer: int
    batch_size: int
    #: latency: measured frames, deltas per frame, writers
    latency_frames: int
    latency_frame_deltas: int
    latency_writers: int
    notify_round_trips: int
    #: merge_throughput: frame sizes (deltas); the last is the biggest
    merge_sizes: tuple[int, ...]
    #: seconds a merge (ours, the ceiling, the merger_rss merge) may take before it is given up
    merge_timeout: float
    #: asof: frames of history, live posts, post updates per frame, timing repetitions
    asof_frames: int
    asof_posts: int
    asof_updates_per_frame: int
    asof_reps: int


SIZES: dict[str, Size] = {
    "tiny": Size(
        name="tiny",
        repeats=1,
        single_workers=64,
        single_per_worker=5,
        batch_writers=4,
        batches_per_writer=1,
        batch_size=1000,
        latency_frames=3,
        latency_frame_deltas=200,
        latency_writers=4,
        notify_round_trips=50,
        merge_sizes=(1_000,),
        merge_timeout=60.0,
        asof_frames=100,
        asof_posts=200,
        asof_updates_per_frame=10,
        asof_reps=5,
    ),
    "small": Size(
        name="small",
        repeats=3,
        single_workers=64,
        single_per_worker=200,
        batch_writers=4,
        batches_per_writer=10,
        batch_size=1000,
        latency_frames=20,
        latency_frame_deltas=1_000,
        latency_writers=8,
        notify_round_trips=300,
        merge_sizes=(10_000,),
        merge_timeout=300.0,
        asof_frames=2_000,
        asof_posts=1_000,
        asof_updates_per_frame=20,
        asof_reps=15,
    ),
    "full": Size(
        name="full",
        repeats=3,
        single_workers=64,
        single_per_worker=300,
        batch_writers=4,
        batches_per_writer=25,
        batch_size=1000,
        latency_frames=50,
        latency_frame_deltas=1_000,
        latency_writers=8,
        notify_round_trips=1_000,
        merge_sizes=(10_000, 100_000, 1_000_000),
        merge_timeout=600.0,
        asof_frames=10_000,
        asof_posts=1_000,
        asof_updates_per_frame=20,
        asof_reps=25,
    ),
}
