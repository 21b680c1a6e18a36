"""dreamcatcher_pg: the Dream Catcher protocol on PostgreSQL.

Workers append deltas with :class:`DeltaClient` (or, without an event loop,
:class:`SyncDeltaClient`); a :class:`Merger` applies each closed frame to the
projected state in one transaction.
"""

from typing import TYPE_CHECKING, Any

from .client import DeltaClient, configure_world
from .errors import (
    AppendOnlyViolation,
    ConnectionLostError,
    DatabaseError,
    DeltaConflictError,
    DreamcatcherError,
    FrameClosedError,
    InvalidDeltaError,
    SchemaVersionError,
)
from .merger import Merger, MergeResult
from .models import Receipt

if TYPE_CHECKING:
    from .sync_client import SyncDeltaClient as SyncDeltaClient

__all__ = [
    "AppendOnlyViolation",
    "ConnectionLostError",
    "DatabaseError",
    "DeltaClient",
    "DeltaConflictError",
    "DreamcatcherError",
    "FrameClosedError",
    "InvalidDeltaError",
    "MergeResult",
    "Merger",
    "Receipt",
    "SchemaVersionError",
    "configure_world",
]

#: The one place the version is written (pyproject.toml reads it from here).
__version__ = "0.2.0.dev0"


def __getattr__(name: str) -> Any:
    """``SyncDeltaClient`` is imported on first use: it needs psycopg (the ``sync`` extra), which
    a worker of the async client does not install. It is left out of ``__all__`` for the same
    reason (``import *`` would need psycopg)."""
    if name == "SyncDeltaClient":
        try:
            from .sync_client import SyncDeltaClient
        except ImportError as exc:
            raise ImportError(
                f"SyncDeltaClient needs psycopg 3 ({exc}): pip install 'dreamcatcher-pg[sync]'"
            ) from exc
        return SyncDeltaClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
