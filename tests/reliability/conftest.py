"""Fault-injection tests (issue 3). The scenarios live in ``bench/reliability/``, so that
``python -m bench.reliability`` runs the same code and prints the reliability table; these
tests run them CI-sized and assert on their reports.

``DREAMCATCHER_RELIABILITY_LONG=1`` runs the long sizes (``bench.reliability.SIZES[True]``).
Nothing here asserts a timing: takeover and reconnect times are printed (``pytest -s``).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def long_run() -> bool:
    """The long sizes, by ``DREAMCATCHER_RELIABILITY_LONG=1``."""
    return os.environ.get("DREAMCATCHER_RELIABILITY_LONG", "").strip() not in ("", "0")
