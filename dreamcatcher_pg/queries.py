"""Old import path of :mod:`dreamcatcher_pg.db.queries`, kept only until tests/web follows the move."""

from .db.queries import all_queries, query

__all__ = ["all_queries", "query"]
