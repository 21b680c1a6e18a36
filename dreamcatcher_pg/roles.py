"""Old import path of :mod:`dreamcatcher_pg.ops.roles`, kept only until tests/web follows the move."""

from .ops.roles import create_roles, grant_stream, role_names

__all__ = ["create_roles", "grant_stream", "role_names"]
