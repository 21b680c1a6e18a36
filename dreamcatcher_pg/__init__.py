"""dreamcatcher_pg: the Dream Catcher protocol on PostgreSQL.

Workers append deltas with :class:`DeltaClient` (or, without an event loop,
:class:`SyncDeltaClient`); a :class:`Merger` applies each closed frame to the
projected state in one transaction. The design and the layout of the package:
docs/design.md.
"""

from __future__ import annotations

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
from .models import MergeResult, Receipt

if TYPE_CHECKING:
    from .merger import Merger
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
    """Imported on first use: ``Merger`` (a worker importing the package never loads the merge
    loop) and ``SyncDeltaClient``, which needs psycopg (the ``sync`` extra) that a worker of the
    async client does not install; it is left out of ``__all__`` for the same reason (``import *``
    would need psycopg)."""
    if name == "Merger":
        from . import merger

        return getattr(merger, name)
    if name == "SyncDeltaClient":
        try:
            from .sync_client import SyncDeltaClient
        except ImportError as exc:
            raise ImportError(
                f"SyncDeltaClient needs psycopg 3 ({exc}): pip install 'dreamcatcher-pg[sync]'"
            ) from exc
        return SyncDeltaClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
