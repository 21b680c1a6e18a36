"""dreamcatcher_pg: the Dream Catcher protocol on PostgreSQL.

Workers append deltas with :class:`DeltaClient`; a :class:`Merger` applies each
closed frame to the projected state in one transaction.
"""

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

__version__ = "0.1.0"
