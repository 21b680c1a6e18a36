"""The report of one ingest (what ``dreamcatcher ingest --json`` prints)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class IngestReport:
    """What one ``ingest`` did. ``to_dict()`` is what ``--json`` prints."""

    world: str
    directory: str
    files_seen: int = 0  # directory entries looked at
    ignored: int = 0  # entries that are not regular *.json files
    stored: int = 0
    duplicate: int = 0
    late: int = 0  # refused: the frame had closed (world policy reject); see dreamcatcher.late_attempts
    deferred: int = 0  # late, accepted under policy defer: merged into the next frame to merge
    conflict: int = 0  # same (frame, stream, utc) as a stored delta, other payload: quarantined
    unreadable: list[dict[str, Any]] = field(default_factory=list)  # {file, reason}
    conflicts: list[dict[str, Any]] = field(default_factory=list)  # {file, frame, stream_id, utc}
    notes: list[dict[str, str]] = field(default_factory=list)  # {file, note}
    deltas: list[dict[str, Any]] = field(default_factory=list)  # {file, frame, stream_id, utc, status}
    quarantine_rows_added: int = 0
    merge: bool = True
    frames: list[int] = field(default_factory=list)  # frames the ingested deltas belong to
    frames_closed: list[int] = field(default_factory=list)  # closed by this run
    frames_merged: list[int] = field(default_factory=list)
    frames_unmerged: list[int] = field(default_factory=list)
    blocked_by: int | None = None  # an open frame below them, holding their merge back
    frame_hashes: dict[int, str] = field(default_factory=dict)
    merge_quarantined: int = 0  # items the merge of the ingested frames quarantined
    unmerged_keys: dict[str, int] = field(default_factory=dict)  # keys no rule reads, per delta

    @property
    def ok(self) -> bool:
        """Everything readable was stored (or was already) and, if asked, merged."""
        return not self.frames_unmerged and self.late == 0

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["frame_hashes"] = {str(k): v for k, v in self.frame_hashes.items()}
        doc["ok"] = self.ok
        return doc
