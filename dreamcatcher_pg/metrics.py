"""Prometheus metrics of the merger (being written)."""

from __future__ import annotations

from typing import Any


def start_metrics_server(port: int, mergers: list[Any]) -> None:
    """Serve the mergers' metrics on ``port`` (all interfaces)."""
    raise NotImplementedError("--metrics-port is not implemented yet")
