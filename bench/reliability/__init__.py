"""Fault injection: ``python -m bench.reliability [--dsn DSN] [--long] [--only NAME,...]``.

One module per scenario (merger_kill, two_mergers, pg_restart, soak, late), what they
share (common: the ledger; verdict; report; the merger subprocess is bench.mergerproc's) and the
run (run.py: the sizes, the table, the command line).

Breaks things on purpose (issue 3) and checks that nothing is lost or doubled:

* ``merger_kill``: a fleet writes while the merger (a subprocess, as users run it) is
  SIGKILLed again and again -- at random, in the middle of a merge, right after a close,
  right after it takes the lead -- and restarted. Every acknowledged delta must be merged
  exactly once, no frame merged twice, and every frame's hash must equal a replay.
* ``two_mergers``: a leader and a standby subprocess; the leader is SIGKILLed and the
  standby takes over by itself. Takeover time is measured; one merger at a time is checked.
* ``pg_restart``: a private embedded PostgreSQL is stopped (``fast`` and ``immediate``) and
  started again on the same data directory and socket, under writers and a merger.
* ``soak``: 64 concurrent writers racing frame closes for a bounded time.
* ``late``: late deltas under ``reject`` and ``defer``, as ``dreamcatcher status`` counts them.

Each scenario is an ``async`` function returning a report; ``tests/reliability`` runs them
CI-sized and asserts on the reports. :func:`main` runs them all and prints ONE table, then
ONE JSON line (the last line of stdout). Times are reported, never asserted; the exit
status is 1 when a scenario lost, doubled or mis-merged anything.

Fuzzing (issue 3, item 5) plugs in through a hook: ``bench.fuzz.run_fuzz(dsn, *, long)``
returns the number of inputs it tried (the "inputs fuzzed" column) and the problems it
found (any fails the run); without that module the column shows ``-``.

How "exactly once" is observed: every delta carries one observation ``{"id": marker}``
unique to it, and observations are never deduplicated, so a delta merged twice shows up
twice. A test-side trigger on ``frame_log`` (:func:`install_merge_audit`) records every
committed merge with the backend that made it.
"""

from __future__ import annotations

from .common import T0, Ledger, connection, insert_acked, marker
from .late import late
from .merger_kill import merger_kill
from .pg_restart import pg_restart
from .report import Report
from .run import COLUMNS, SIZES, render_table, run_all, table_rows
from .soak import soak
from .two_mergers import two_mergers
from .verdict import Verdict, install_merge_audit, merge_all, replay_hashes, verify

__all__ = [
    "COLUMNS",
    "SIZES",
    "T0",
    "Ledger",
    "Report",
    "Verdict",
    "connection",
    "insert_acked",
    "install_merge_audit",
    "late",
    "marker",
    "merge_all",
    "merger_kill",
    "pg_restart",
    "render_table",
    "replay_hashes",
    "run_all",
    "soak",
    "table_rows",
    "two_mergers",
    "verify",
]
