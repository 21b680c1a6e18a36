"""Shared test setup: the dreamcatcher pytest plugin (real PostgreSQL, a fresh db per test)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

pytest_plugins = ["dreamcatcher_pg.testing"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``cli.main`` configures logging for a process; put it back for the next tests.

    Modules that call ``cli.main`` use it for every test:
    ``pytestmark = pytest.mark.usefixtures("restore_logging")``.
    """
    root = logging.getLogger()
    package = logging.getLogger("dreamcatcher_pg")
    handlers, root_level, package_level = root.handlers[:], root.level, package.level
    yield
    root.handlers[:] = handlers
    root.setLevel(root_level)
    package.setLevel(package_level)
