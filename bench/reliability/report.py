"""The report of one scenario."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .verdict import Verdict

# -- reports ---------------------------------------------------------------------------


@dataclass
class Report:
    """What one scenario did and found. ``row()`` is its line of the table."""

    scenario: str
    verdict: Verdict
    seconds: float = 0.0
    seed: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    takeover_s: list[float] = field(default_factory=list)
    reconnect_s: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    fuzzed: int | None = None
    stalled: int | None = None  #: worlds found stalled (the hostile-writer row)

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.notes.get("failures")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc


def fault_counts(faults: dict[str, int]) -> dict[str, int]:
    """Faults per kind: ``"kind"`` counts, else the sum of its ``"kind/detail"`` counts."""
    kinds: dict[str, int] = {}
    for key, n in faults.items():
        kind, _, detail = key.partition("/")
        if not detail:
            kinds[kind] = n
        elif kind not in faults:
            kinds[kind] = kinds.get(kind, 0) + n
    return kinds


def _faults_text(faults: dict[str, int], *, details: bool = True) -> str:
    parts = []
    for kind, n in fault_counts(faults).items():
        prefix = f"{kind}/"
        subs = [f"{m} {k.removeprefix(prefix)}" for k, m in faults.items() if k.startswith(prefix) and m]
        parts.append(f"{n} {kind}" + (f" ({', '.join(subs)})" if subs and details else ""))
    return ", ".join(parts) or "-"


def _secs(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{max(values):.2f}" if len(values) == 1 else f"{min(values):.2f}-{max(values):.2f}"
