"""deploy/: the Prometheus alert rules and the Grafana dashboard use only metrics the merger serves.

No YAML library: the rule file is read line by line (``expr:`` lines, and the shape of each
rule), which its simple layout allows; the dashboard is JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from dreamcatcher_pg import Merger
from dreamcatcher_pg.ops.metrics import DatabaseRefresher, WorldCounts, build_registry

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
METRIC = re.compile(r"\b(dreamcatcher_[a-z0-9_]+)")


def served_series() -> set[str]:
    """Every series name the merger's registry can serve (histograms with their suffixes)."""
    merger = Merger("postgresql://unused", "w")
    refresher = DatabaseRefresher("postgresql://unused", ["w"])
    refresher._snapshot["w"] = WorldCounts(1, 0, 0, 0, 0, 0.0)
    names: set[str] = set()
    for family in build_registry([merger], refresher, process_metrics=False).collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def alert_rules() -> list[dict[str, str]]:
    """The rules of alerts.yml: one dict per ``- alert:`` item, with its scalar keys."""
    rules: list[dict[str, str]] = []
    for line in ALERTS.read_text(encoding="utf-8").splitlines():
        stripped = line.split(" #", 1)[0].strip() if not line.strip().startswith("#") else ""
        if stripped.startswith("- alert:"):
            rules.append({"alert": stripped.split(":", 1)[1].strip()})
        elif rules and re.match(r"^[a-z_]+:", stripped):
            key, _, value = stripped.partition(":")
            rules[-1].setdefault(key, value.strip())
    return rules


def test_alert_rules_are_well_formed() -> None:
    text = ALERTS.read_text(encoding="utf-8")
    assert "\t" not in text
    assert text.startswith("#") and "\ngroups:\n" in text
    rules = alert_rules()
    assert len(rules) >= 6
    names = [r["alert"] for r in rules]
    assert len(set(names)) == len(names)
    for rule in rules:
        assert rule["alert"].startswith("Dreamcatcher"), rule
        assert rule.get("expr"), rule
        assert "severity" in rule and rule["severity"] in {"critical", "warning", "info"}, rule
        assert "summary" in rule and "description" in rule, rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
    # the four the issue asks for: no leader, merge lag, stale metrics, quarantine growth
    exprs = " ".join(r["expr"] for r in rules)
    for metric in (
        "dreamcatcher_leader",
        "dreamcatcher_merge_lag_seconds",
        "dreamcatcher_metrics_refresh_timestamp_seconds",
        "dreamcatcher_quarantined_items_total",
    ):
        assert metric in exprs, metric


def test_every_metric_the_alerts_and_the_dashboard_use_is_served() -> None:
    served = served_series()
    used_by_alerts = {m for r in alert_rules() for m in METRIC.findall(r["expr"])}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["definition"])
    used_by_dashboard = {m for e in exprs for m in METRIC.findall(e)}
    assert used_by_alerts and used_by_dashboard
    assert used_by_alerts - served == set(), "alerts.yml uses metrics the merger does not serve"
    assert used_by_dashboard - served == set(), "dashboard.json uses metrics the merger does not serve"


def test_the_dashboard_is_importable_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"])
        assert panel["datasource"]["uid"] == "${datasource}"
