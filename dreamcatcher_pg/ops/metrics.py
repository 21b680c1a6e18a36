"""Prometheus metrics of the merger process (``dreamcatcher merger --metrics-port``).

Two sources, one registry per server:

* **The mergers in this process**: :class:`MergerCollector` reads each
  ``Merger.get_stats()`` at scrape time (frames and deltas merged, reconnects,
  errors, leader state), and :class:`MergeObserver` wraps each merger's
  ``on_merged`` callback to fill the two histograms (merge duration,
  close→merged latency).
* **The database**, for what other processes do: deltas are ingested by the
  workers, late attempts and quarantine are recorded by the log itself.
  :class:`DatabaseRefresher` is an asyncio task in the merger's own event loop
  that reads these every ``refresh_interval`` seconds over ONE dedicated
  connection, with a statement timeout, and keeps the last snapshot; a scrape
  only reads that snapshot. So a scrape never waits on the database, the load
  on the database does not grow with the number of scrapers, and a database
  outage shows as stale numbers plus ``dreamcatcher_metrics_refresh_errors_total``
  rather than as failed scrapes. (A collector querying at scrape time would be
  fresher by at most one refresh interval, at the price of one connection per
  scrape from the HTTP thread.) A world not read yet has no DB-derived series:
  absent, never a made-up zero.

Every series carries the label ``world``. Counters restart from zero when the
process restarts, except the DB-derived ones (``deltas_ingested``,
``late_deltas``, ``quarantined_items``), which are the database's totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Histogram,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..db.connect import connect
from ..db.queries import query
from ..db.schema_version import dreamcatcher_version
from ..errors import DRIVER_ERRORS, DreamcatcherError
from .health import SchemaState, schema_ready
from .status import world_counts

log = logging.getLogger(__name__)

#: Seconds between two reads of the database-derived numbers, unless given: five poll
#: intervals of the mergers (5 s at the default poll interval of 1 s), kept within these bounds.
DEFAULT_REFRESH_INTERVAL = 5.0
REFRESH_INTERVAL_BOUNDS = (1.0, 15.0)
#: Upper bound of one refresh (connect, or the whole metrics_world query of a world).
DEFAULT_REFRESH_TIMEOUT = 5.0

MERGE_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CLOSE_TO_MERGED_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MergerLike(Protocol):
    """What the metrics need of a :class:`~dreamcatcher_pg.merger.Merger`."""

    dsn: str
    world: str
    on_merged: Callable[[Any], None] | None

    def get_stats(self) -> dict[str, Any]: ...

    def loop_state(self) -> dict[str, Any]: ...


# -- the database side ------------------------------------------------------------


class SchemaNotReadyError(Exception):
    """The schema check of a refresh failed (the world numbers are not read)."""


@dataclass(frozen=True, slots=True)
class WorldCounts:
    """One world's database-derived numbers, as of the last refresh."""

    deltas_ingested: int
    late_attempts: int
    quarantined: int
    frames_open: int
    merge_lag_frames: int
    merge_lag_seconds: float
    #: sessions idle while they hold one of the world's fences: (pid, session name, idle seconds)
    idle_fence_holders: tuple[tuple[int, str, float], ...] = ()


class DatabaseRefresher:
    """Reads each world's database-derived numbers every ``interval`` seconds.

    ``await refresher.run()`` until cancelled. One connection, opened lazily and
    reopened after an error. Deltas ingested are summed incrementally (see the
    ``metrics_world`` query), so a refresh costs the frames merged since the last
    one plus the unmerged tail of the log, not the whole log.
    """

    def __init__(
        self,
        dsn: str,
        worlds: Sequence[str],
        *,
        interval: float = DEFAULT_REFRESH_INTERVAL,
        timeout: float = DEFAULT_REFRESH_TIMEOUT,
    ) -> None:
        self.dsn = dsn
        self.worlds = list(dict.fromkeys(worlds))
        self.interval = interval
        self.timeout = timeout
        self.errors = 0
        self._conn: asyncpg.Connection | None = None
        self._merged_through: dict[str, int | None] = {}
        self._merged_deltas: dict[str, int] = {}
        self._snapshot: dict[str, WorldCounts] = {}
        self._lock = threading.Lock()  # the snapshot is read from the HTTP server's thread
        self._failing = False
        #: the last schema check (for /readyz), and the time.time() of the last complete refresh
        self.schema = SchemaState()
        self.refreshed_at: float | None = None

    def snapshot(self) -> dict[str, WorldCounts]:
        """The last numbers read, by world (a copy; safe from any thread)."""
        with self._lock:
            return dict(self._snapshot)

    async def refresh_once(self) -> None:
        """Read every world once; raises on a database error (the snapshot keeps its old values)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(
                self.dsn,
                application_name="dreamcatcher metrics",
                map_errors=False,
                timeout=self.timeout,
                command_timeout=self.timeout,
            )
        ok, why = await schema_ready(self._conn)
        self.schema.set(ok, why)
        if not ok:
            raise SchemaNotReadyError(why)
        for world in self.worlds:
            row = await self._conn.fetchrow(query("metrics_world"), world, self._merged_through.get(world))
            assert row is not None
            shared = await world_counts(self._conn, world)
            holders = await self._conn.fetch(query("stuck_writers"), world)
            merged = self._merged_deltas.get(world, 0) + int(row["merged_deltas"])
            counts = WorldCounts(
                deltas_ingested=merged + int(row["unmerged_deltas"]) + int(row["deferred_waiting"]),
                late_attempts=int(shared["late_attempts"]),
                quarantined=int(shared["quarantined"]),
                frames_open=int(shared["frames_open"]),
                merge_lag_frames=int(shared["frames_closed"]),
                merge_lag_seconds=float(shared["merge_lag_seconds"]),
                idle_fence_holders=tuple(
                    (int(h["pid"]), str(h["application_name"] or h["usename"] or ""), float(h["idle_for"]))
                    for h in holders
                    if str(h["state"]).startswith("idle")
                ),
            )
            self._merged_deltas[world] = merged
            self._merged_through[world] = row["merged_through"]
            with self._lock:
                self._snapshot[world] = counts
        self.refreshed_at = time.time()

    async def run(self) -> None:
        """Refresh every ``interval`` seconds until cancelled; errors are counted and logged once."""
        try:
            while True:
                try:
                    await self.refresh_once()
                    if self._failing:
                        log.info("metrics: reading the database works again")
                    self._failing = False
                except (*DRIVER_ERRORS, TimeoutError, SchemaNotReadyError, DreamcatcherError) as exc:
                    self.errors += 1
                    if not isinstance(exc, SchemaNotReadyError):
                        self.schema.set(False, f"cannot read the database: {type(exc).__name__}: {exc}")
                    if not self._failing:
                        log.warning(
                            "metrics: cannot read the database (%s); retrying every %.0fs", exc, self.interval
                        )
                    self._failing = True
                    await self.aclose()
                await asyncio.sleep(self.interval)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)


# -- the merger side -------------------------------------------------------------


class MergeObserver:
    """Fills the merge histograms from each merger's ``on_merged`` (keeping any callback already set)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.merge_duration = Histogram(
            "dreamcatcher_merge_duration_seconds",
            "Time the merge transaction of one frame took, as the merger timed it.",
            ["world"],
            buckets=MERGE_DURATION_BUCKETS,
            registry=registry,
        )
        self.close_to_merged = Histogram(
            "dreamcatcher_close_to_merged_seconds",
            "From a frame's close to its merge, in the database's clock.",
            ["world"],
            buckets=CLOSE_TO_MERGED_BUCKETS,
            registry=registry,
        )

    def attach(self, merger: MergerLike) -> None:
        previous = merger.on_merged
        # every world's series exists from the start (count 0), so rates and alerts see it
        self.merge_duration.labels(merger.world)
        self.close_to_merged.labels(merger.world)

        def on_merged(result: Any) -> None:
            self.merge_duration.labels(result.world).observe(result.seconds)
            self.close_to_merged.labels(result.world).observe(result.close_to_merged)
            if previous is not None:
                previous(result)

        merger.on_merged = on_merged


class MergerCollector(Collector):
    """Counters and gauges of the mergers in this process, plus the database snapshot."""

    def __init__(self, mergers: Sequence[MergerLike], refresher: DatabaseRefresher | None) -> None:
        self.mergers = list(mergers)
        self.refresher = refresher

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: families are built at scrape time

    def collect(self) -> Iterable[Metric]:
        stats = [m.get_stats() for m in self.mergers]

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=["world"])
            for s in stats:
                family.add_metric([s["world"]], float(s[key]))
            return family

        yield counter("dreamcatcher_frames_merged_total", "Frames merged by this process.", "frames_merged")
        yield counter(
            "dreamcatcher_deltas_merged_total",
            "Deltas merged by this process (late deferred ones included).",
            "deltas_merged",
        )
        yield counter(
            "dreamcatcher_frames_closed_total",
            "Frames this process closed (every expected stream in, or the deadline passed).",
            "frames_closed",
        )
        yield counter(
            "dreamcatcher_reconnects_total", "Times a merger lost its database connection.", "reconnects"
        )
        yield counter("dreamcatcher_merge_errors_total", "Merges that failed and were retried.", "errors")
        yield counter(
            "dreamcatcher_writers_ended_total",
            "Sessions this process ended for holding a fence of the world while idle past its "
            "idle_writer_timeout (their uncommitted deltas rolled back).",
            "writers_ended",
        )
        leader = GaugeMetricFamily(
            "dreamcatcher_leader",
            "1 while a merger of this process holds the world's leader lock.",
            labels=["world"],
        )
        last = GaugeMetricFamily(
            "dreamcatcher_last_merged_frame",
            "Frame number of the last frame this process merged.",
            labels=["world"],
        )
        loop_age = GaugeMetricFamily(
            "dreamcatcher_merge_loop_age_seconds",
            "Seconds since the merger's loop last completed an iteration (/healthz fails past its "
            "leader timeout); absent while it is not running.",
            labels=["world"],
        )
        for s in stats:
            leader.add_metric([s["world"]], 1.0 if s["is_leader"] else 0.0)
            if s["last_frame"] is not None:
                last.add_metric([s["world"]], float(s["last_frame"]))
        for m in self.mergers:
            age = m.loop_state()["loop_age_seconds"]
            if age is not None:
                loop_age.add_metric([m.world], float(age))
        yield leader
        yield last
        yield loop_age
        if self.refresher is not None:
            yield from self._database_families()

    def _database_families(self) -> Iterable[Metric]:
        assert self.refresher is not None
        snapshot = self.refresher.snapshot()
        families: list[tuple[Any, str, str, Callable[[WorldCounts], float]]] = [
            (
                CounterMetricFamily,
                "dreamcatcher_deltas_ingested_total",
                "Deltas stored in the log (all writers; read from the database).",
                lambda c: c.deltas_ingested,
            ),
            (
                CounterMetricFamily,
                "dreamcatcher_late_deltas_total",
                "Attempts to write into a closed frame, rejected or deferred (read from the database).",
                lambda c: c.late_attempts,
            ),
            (
                CounterMetricFamily,
                "dreamcatcher_quarantined_items_total",
                "Items no rule could read, kept with their reason (read from the database).",
                lambda c: c.quarantined,
            ),
            (
                GaugeMetricFamily,
                "dreamcatcher_merge_lag_frames",
                "Frames closed and waiting for the merger (read from the database).",
                lambda c: c.merge_lag_frames,
            ),
            (
                GaugeMetricFamily,
                "dreamcatcher_merge_lag_seconds",
                "Age of the oldest frame closed and waiting for the merger; 0 when none (from the database).",
                lambda c: c.merge_lag_seconds,
            ),
            (
                GaugeMetricFamily,
                "dreamcatcher_open_frames",
                "Frames open (read from the database).",
                lambda c: c.frames_open,
            ),
        ]
        for kind, name, doc, value in families:
            family = kind(name, doc, labels=["world"])
            for world, counts in sorted(snapshot.items()):
                family.add_metric([world], float(value(counts)))
            yield family
        holders = GaugeMetricFamily(
            "dreamcatcher_fence_holder_idle_seconds",
            "Sessions idle while they hold a fence of the world (a frame cannot close meanwhile): "
            "seconds idle, by backend pid and session name (a DeltaClient's is 'dreamcatcher WORLD/STREAM').",
            labels=["world", "pid", "session"],
        )
        for world, counts in sorted(snapshot.items()):
            for pid, session, idle in counts.idle_fence_holders:
                holders.add_metric([world, str(pid), session], idle)
        yield holders
        errors = CounterMetricFamily(
            "dreamcatcher_metrics_refresh_errors",
            "Failed reads of the database-derived metrics (their values are then stale).",
        )
        errors.add_metric([], float(self.refresher.errors))
        yield errors
        refreshed = GaugeMetricFamily(
            "dreamcatcher_metrics_refresh_timestamp_seconds",
            "Unix time of the last complete read of the database-derived metrics (absent before the "
            "first): alert on time() minus this for stale numbers.",
        )
        if self.refresher.refreshed_at is not None:
            refreshed.add_metric([], self.refresher.refreshed_at)
        yield refreshed


class BuildInfoCollector(Collector):
    """``dreamcatcher_build_info{version, python} 1``."""

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "dreamcatcher_build_info",
            "Always 1: the dreamcatcher-pg version and the Python running it.",
            labels=["version", "python"],
        )
        info.add_metric([dreamcatcher_version(), platform.python_version()], 1.0)
        yield info


def build_registry(
    mergers: Sequence[MergerLike], refresher: DatabaseRefresher | None, *, process_metrics: bool = True
) -> CollectorRegistry:
    """A registry with the mergers' metrics (and attach the histograms to their ``on_merged``)."""
    registry = CollectorRegistry(auto_describe=False)
    observer = MergeObserver(registry)
    for merger in mergers:
        observer.attach(merger)
    registry.register(MergerCollector(mergers, refresher))
    registry.register(BuildInfoCollector())
    if process_metrics:  # process_*, python_gc_*, python_info, as a default registry would have
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry


def refresh_interval_for(mergers: Sequence[Any]) -> float:
    """Five poll intervals of the fastest merger, within :data:`REFRESH_INTERVAL_BOUNDS`."""
    polls = [float(getattr(m, "poll_interval", 1.0)) for m in mergers] or [1.0]
    low, high = REFRESH_INTERVAL_BOUNDS
    return min(max(5 * min(polls), low), high)
