"""Time travel: the state at any frame, diffs, replay, portable snapshots, the git layout.

The Python API (async; every function takes a DSN or an open asyncpg connection,
and never closes a connection it did not open):

* :func:`state_at` -- the whole state (or one kind) right after a frame;
* :func:`diff` -- per entity, what was added, changed (field by field), removed;
* :func:`replay_verify` -- rebuild the projection from the log alone and compare
  every frame's hash, and the projection, with what is recorded (:mod:`.replay`);
* :func:`export_snapshot` / :func:`import_snapshot` -- one self-describing,
  verified archive of a world at a frame (:mod:`.snapshot`);
* :func:`export_dir` -- the log as ``frame-<N>-<stream>.json`` files, which
  ``dreamcatcher ingest`` reads back.

Modules: :mod:`.state` (state and diff), :mod:`.replay`, :mod:`.snapshot`
(export and import), :mod:`.archive` (the snapshot's format), :mod:`.gitdir`
(the git layout). The commands are in
:mod:`dreamcatcher_pg.cli.timetravel`.
"""

from ..errors import (
    ExportDirError,
    FrameNotMergedError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotFormatError,
    SnapshotVerificationError,
    TimeTravelError,
    UnknownWorldError,
    WorldNotEmptyError,
)
from .archive import check_archive
from .gitdir import ExportDirReport, export_dir
from .replay import Divergence, ReplayReport, replay_verify
from .snapshot import SnapshotReport, export_snapshot, import_snapshot
from .state import Diff, EntityChange, EntityState, diff, state_at

__all__ = [
    "Diff",
    "Divergence",
    "EntityChange",
    "EntityState",
    "ExportDirError",
    "ExportDirReport",
    "FrameNotMergedError",
    "ReplayReport",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotFormatError",
    "SnapshotReport",
    "SnapshotVerificationError",
    "TimeTravelError",
    "UnknownWorldError",
    "WorldNotEmptyError",
    "check_archive",
    "diff",
    "export_dir",
    "export_snapshot",
    "import_snapshot",
    "replay_verify",
    "state_at",
]
