"""Fixtures of the property and fuzz tests: one database per test function, one pool on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest


@pytest.fixture
async def pool(dreamcatcher_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on the test's database, shared by every example of the test."""
    pool = await asyncpg.create_pool(dreamcatcher_dsn, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()
