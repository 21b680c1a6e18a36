"""dreamcatcher_pg: the Dream Catcher protocol on PostgreSQL.

Workers append deltas with :class:`DeltaClient`; a :class:`Merger` applies each
closed frame to the projected state in one transaction. The design and the
layout of the package: docs/design.md.
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
)
from .models import MergeResult, Receipt

if TYPE_CHECKING:
    from .merger import Merger

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
    "configure_world",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``Merger`` on first use: a worker importing the package never loads the merge loop."""
    if name == "Merger":
        from . import merger

        return getattr(merger, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
