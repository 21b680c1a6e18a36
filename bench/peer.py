"""peer and peer_batch: the single-insert load of ingest_single through the ``eventsourcing``
library (its PostgreSQL persistence, psycopg 3), on the same server and database, beside
our own ``insert_delta`` rate on the same load in the same run.

``eventsourcing`` is an optional extra (``pip install -e '.[peer]'``); without it both rows
say so and are skipped. It is synchronous, so the load runs on ``single_workers`` threads
sharing one ``Application`` (``PERSISTENCE_MODULE=eventsourcing.postgres``, its defaults
otherwise) whose connection pool holds one connection per thread: each
thread owns one aggregate (a stream) and calls ``save()`` after every event (``peer``), or
after every ``PEER_BATCH`` events (``peer_batch``, against our ``insert_deltas`` of the same
``PEER_BATCH``). The event's state is the delta's payload dict. The rows' ``ceiling`` is the
peer's rate, so ``ratio`` = ours / eventsourcing (info: no target).

Ours runs as the README tells a worker to (``DeltaClient.connect`` per worker, its defaults,
defaults; warmed up, set-up not timed: bench/ingest.py). Rounds alternate which side goes
first; the best of each side is kept, as in bench/sides.py.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from bench.context import Context, now
from bench.ingest import ours_batch, ours_single, single_plan
from bench.payloads import BenchDelta
from bench.report import Row, skipped
from bench.sides import timed

#: events per ``save()`` (peer_batch) and deltas per ``insert_deltas`` on our side
PEER_BATCH = 100
INSTALL_HINT = "eventsourcing not installed; pip install -e '.[peer]'"
ROW_NAMES = ("peer", "peer_batch")


def eventsourcing_env(dsn: str, pool_size: int) -> dict[str, str]:
    """The ``Application`` env for the server and database of ``dsn`` (a URI or keywords).

    A Unix-socket server (``?host=/socket/dir&port=N``) is reached through its socket:
    the host is passed to psycopg as the socket directory, as libpq does.
    """
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": params.get("dbname", ""),
        "POSTGRES_HOST": params.get("host", ""),
        "POSTGRES_PORT": params.get("port", "5432"),
        "POSTGRES_USER": params.get("user", ""),
        "POSTGRES_PASSWORD": params.get("password", ""),
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "0",
        "CREATE_TABLE": "y",
    }


def _chunks(items: Sequence[BenchDelta], size: int) -> Iterator[Sequence[BenchDelta]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.cache
def _eventsourcing() -> tuple[Any, Any]:
    """eventsourcing's ``Application`` class and our aggregate class (defined once per process:
    eventsourcing refuses a second class under the same topic)."""
    # Imported here: eventsourcing is an optional extra, absent when CI type-checks bench/
    # (hence ``unused-ignore``: the same lines are clean when it is installed).
    from eventsourcing.application import Application  # type: ignore[import-not-found, unused-ignore]
    from eventsourcing.domain import Aggregate, event  # type: ignore[import-not-found, unused-ignore]

    class PeerStream(Aggregate):  # type: ignore[misc, unused-ignore]
        """One writer's stream: every delta is one event carrying its payload."""

        @event("Started")  # type: ignore[untyped-decorator, unused-ignore]
        def __init__(self) -> None:
            self.deltas = 0

        @event("DeltaAppended")  # type: ignore[untyped-decorator, unused-ignore]
        def append(self, payload: dict[str, Any]) -> None:
            self.deltas += 1

    return Application, PeerStream


class EventsourcingPeer:
    """eventsourcing ``Application``s on the bench database, timed on a plan of deltas."""

    def __init__(self, dsn: str, workers: int) -> None:
        self.workers = workers
        self.version = version("eventsourcing")
        self.env = eventsourcing_env(dsn, workers)

    def seconds(self, plan: Sequence[Sequence[BenchDelta]], per_save: int) -> float:
        """Seconds for every worker to save its deltas, ``per_save`` events per ``save()``.

        Each call has an ``Application`` of its own (its pool is closed at the end: our side
        then runs on the connections it held). Not timed: the application (its tables are
        created once), the threads, the aggregates and their creation events (one concurrent
        ``save()`` each), and the pool reaching its size.
        """
        application, stream_class = _eventsourcing()
        app = application(env=self.env)
        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="peer") as pool:

                def start(_: object) -> Any:
                    stream = stream_class()
                    app.save(stream)
                    return stream

                streams = list(pool.map(start, plan))
                app.recorder.datastore.pool.wait(timeout=60.0)

                def run(stream: Any, items: Sequence[BenchDelta]) -> None:
                    for chunk in _chunks(items, per_save):
                        for d in chunk:
                            stream.append(d.payload)
                        app.save(stream)

                started = now()
                for future in [pool.submit(run, s, items) for s, items in zip(streams, plan, strict=True)]:
                    future.result()
                return now() - started
        finally:
            app.close()


def _note(peer: EventsourcingPeer, per_save: int, ours: str) -> str:
    events = "one event" if per_save == 1 else f"{per_save} events"
    ceiling = f"eventsourcing {peer.version} save() of {events} per call, {peer.workers} threads"
    return f"ceiling: {ceiling}; {ours}"


async def bench_peer(ctx: Context) -> list[Row]:
    if importlib.util.find_spec("eventsourcing") is None:
        return [skipped(name, INSTALL_HINT) for name in ROW_NAMES]
    size = ctx.size
    workers = size.single_workers
    plan = single_plan(ctx, seed=1)  # ingest_single's deltas
    batches = [list(_chunks(items, PEER_BATCH)) for items in plan]
    count = sum(len(items) for items in plan)
    per_batch = min(PEER_BATCH, size.single_per_worker)
    best: dict[str, float] = dict.fromkeys(("ours", "peer", "ours_batch", "peer_batch"), 0.0)

    def keep(label: str, round_: int, seconds: float) -> None:
        best[label] = max(best[label], count / seconds)
        ctx.say(f"peer round {round_ + 1}: {label} {count / seconds:,.0f} deltas/s")

    peer = EventsourcingPeer(ctx.dsn, workers)
    for r in range(size.repeats):
        ours_first = r % 2 == 0  # the order turns each round, as in bench/sides.py
        for first in (ours_first, not ours_first):
            if first:
                keep("ours", r, await timed(ours_single(ctx.dsn, plan), f"peer_ours_{r}"))
                keep("ours_batch", r, await timed(ours_batch(ctx.dsn, batches), f"peer_batch_ours_{r}"))
            else:
                keep("peer", r, await asyncio.to_thread(peer.seconds, plan, 1))
                keep("peer_batch", r, await asyncio.to_thread(peer.seconds, plan, PEER_BATCH))

    detail: Mapping[str, Any] = {
        "threads": workers,
        "deltas": count,
        "rounds": size.repeats,
        "peer": f"eventsourcing {peer.version}",
        "persistence": "eventsourcing.postgres (psycopg 3), Application.save()",
    }
    return [
        Row(
            "peer",
            best["ours"],
            best["peer"],
            "deltas/s",
            note=_note(peer, 1, f"ours: insert_delta, {workers} DeltaClient.connect"),
            detail={**detail, "events_per_save": 1},
        ),
        Row(
            "peer_batch",
            best["ours_batch"],
            best["peer_batch"],
            "deltas/s",
            note=_note(peer, per_batch, f"ours: insert_deltas of {per_batch}"),
            detail={**detail, "events_per_save": per_batch},
        ),
    ]
