"""Issue 3.3: PostgreSQL stopped and started under writers, a merger and probes.

The server is a private embedded PostgreSQL (the shared one cannot be restarted), stopped
with ``fast`` (sessions terminated) and ``immediate`` (a crash: recovery at the next start)
and started again on the same data directory and socket, so every DSN stays valid. Clients
and the merger reconnect by themselves and carry on; notifications lost while down are made
up by polling; nothing is lost or doubled. An insert in flight during the outage either
succeeds or raises ``ConnectionLostError``, and retrying it with the same utc answers
``stored`` or ``duplicate`` (when the lost call had committed). Reconnect times are printed.
"""

from __future__ import annotations

import pytest

from bench.reliability import SIZES, pg_restart, render_table
from dreamcatcher_pg import ConnectionLostError, DreamcatcherError


@pytest.mark.slow
async def test_clients_and_merger_ride_out_server_restarts(long_run: bool) -> None:
    restarts = SIZES[long_run]["pg_restart"]["restarts"]
    report = await pg_restart(restarts=restarts)
    print("\n" + render_table([report]))
    for restart in report.notes["restarts"]:
        print(f"  {restart}")
    print(f"  in flight: {report.notes['in-flight inserts']}")
    print(f"  writers: {report.notes['writer inserts retried']}")
    v = report.verdict
    assert v.ok, f"seed={report.seed}: {v.problems}"
    assert report.faults["PG restart/fast"] >= 1
    assert report.faults["PG restart/immediate"] >= 1
    assert len(report.reconnect_s) == restarts  # clients and merger came back after every restart
    assert report.notes["probe connection errors"] >= restarts  # the clients did see each outage
    assert report.notes["merger reconnects"] >= restarts
    inflight = report.notes["in-flight inserts"]
    assert inflight["raised ConnectionLostError"] >= 1
    retried = inflight["retry stored"] + inflight["retry duplicate (had committed)"]
    assert retried == inflight["raised ConnectionLostError"]  # every retry stored, or found it stored
    assert (v.lost, v.doubled, v.phantom, v.frames_unmerged, v.frames_merged_twice) == (0, 0, 0, 0, 0)
    assert v.acked == v.merged > 0
    assert v.hash_mismatches == 0


def test_connection_lost_is_a_dreamcatcher_error() -> None:
    """What an in-flight insert may raise is part of the one error hierarchy."""
    assert issubclass(ConnectionLostError, DreamcatcherError)
    assert issubclass(ConnectionLostError, ConnectionError)
