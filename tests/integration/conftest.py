"""Fixtures of the integration tests: ``cast``, the roles of ``dreamcatcher init --roles`` and
their login users (used by test_roles, test_ingest_copy and test_rules_declared)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dreamcatcher_pg.ops.roles import create_roles, grant_stream, role_names
from tests.support.roles import OTHER, Cast, W, cleanup_roles, connect, unique_prefix


@pytest.fixture
async def cast(dreamcatcher_dsn: str) -> AsyncIterator[Cast]:
    prefix = unique_prefix()
    names = role_names(prefix)
    users = {kind: f"{prefix}_{kind}_u" for kind in ("w1", "w2", "m1", "r1")}
    with cleanup_roles([dreamcatcher_dsn], [*names, *users.values()]):
        assert await create_roles(dreamcatcher_dsn, prefix=prefix) == list(names)
        async with connect(dreamcatcher_dsn) as admin:
            for kind, group in (
                ("w1", names.worker),
                ("w2", names.worker),
                ("m1", names.merger),
                ("r1", names.reader),
            ):
                await admin.execute(f'CREATE ROLE "{users[kind]}" LOGIN IN ROLE "{group}"')
            await grant_stream(admin, W, "s1", users["w1"])
            await grant_stream(admin, W, "s2", users["w2"])
            await grant_stream(admin, OTHER, "o1", users["w2"])
        yield Cast(dreamcatcher_dsn, names, users["w1"], users["w2"], users["m1"], users["r1"])
