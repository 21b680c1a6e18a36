"""A benchmark row, the rich table and the one-line JSON report."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True, slots=True)
class Target:
    """What a row's ``ratio`` (or, with ``on_ours``, its own value) must satisfy."""

    op: str  # "<=" or ">="
    value: float
    on_ours: bool = False

    def check(self, ours: float | None, ratio: float | None) -> bool | None:
        subject = ours if self.on_ours else ratio
        if subject is None or math.isnan(subject):
            return None
        return subject <= self.value if self.op == "<=" else subject >= self.value

    def describe(self, unit: str) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        return f"{sign} {self.value:g} {unit}" if self.on_ours else f"ratio {sign} {self.value:g}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report. ``ceiling`` is the raw-PostgreSQL reference of the same run."""

    name: str
    ours: float | None
    ceiling: float | None
    unit: str
    target: Target | None = None
    note: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.ceiling:
            return None
        return self.ours / self.ceiling

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else self.target.check(self.ours, self.ratio)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ours": _round(self.ours),
            "ceiling": _round(self.ceiling),
            "unit": self.unit,
            "ratio": _round(self.ratio),
            "target": "info" if self.target is None else self.target.describe(self.unit),
            "ok": self.ok,
            "skipped": self.skipped,
            "note": self.note,
            "detail": dict(self.detail),
        }


def skipped(name: str, why: str) -> Row:
    return Row(name, None, None, "", note=f"skipped ({why})", skipped=True)


def _round(value: float | None) -> float | None:
    if value is None:
        return None
    return float(f"{value:.4g}")


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("row", "ours", "raw ceiling", "unit", "ratio", "target", "ok", "note"):
        table.add_column(column, justify="right" if column in ("ours", "raw ceiling", "ratio") else "left")
    for row in rows:
        ok = row.ok
        verdict = "—" if ok is None else "[green]pass[/]" if ok else "[red]FAIL[/]"
        table.add_row(
            row.name,
            _fmt(row.ours),
            _fmt(row.ceiling),
            row.unit,
            _fmt(row.ratio),
            "info" if row.target is None else row.target.describe(row.unit),
            verdict,
            row.note,
        )
    return table


def print_report(rows: Sequence[Row], report: Mapping[str, Any], *, json_only: bool) -> None:
    """The table (unless ``json_only``), then the JSON line: always the last line of stdout."""
    if not json_only:
        machine = report["machine"]
        title = (
            f"dreamcatcher bench — size {report['size']} — PostgreSQL {machine['pg_version']} "
            f"({machine['server']}), {machine['cores']} cores"
        )
        Console(width=160).print(render_table(rows, title))
    print(orjson.dumps(report).decode(), flush=True)
