"""Ingest: a directory of delta files written by a fleet, loaded into a world.

:mod:`.parse` reads one file (pure), :mod:`.load` reads a directory, stores,
closes and merges, :mod:`.report` is what one run did.
"""

from ..validation import parse_timestamp
from .load import ingest_directory, read_directory
from .parse import (
    FALLBACK_UTC,
    PREVIEW_CHARS,
    UTC_SOURCES,
    ParsedDelta,
    Unreadable,
    parse_delta_file,
    parse_file_name,
)
from .report import IngestReport

__all__ = [
    "FALLBACK_UTC",
    "PREVIEW_CHARS",
    "UTC_SOURCES",
    "IngestReport",
    "ParsedDelta",
    "Unreadable",
    "ingest_directory",
    "parse_delta_file",
    "parse_file_name",
    "parse_timestamp",
    "read_directory",
]
