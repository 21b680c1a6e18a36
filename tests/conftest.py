"""Shared test setup: the dreamcatcher pytest plugin (real PostgreSQL, a fresh db per test)."""

pytest_plugins = ["dreamcatcher_pg.testing"]
