"""Log lines on stderr, as text or as one JSON object per line (``--log-format``)."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, plus fields.

    Fields: whatever the call site passed as ``extra={...}`` (the library passes
    ``world``, ``frame``, ``stream``, ``duration_ms``, ... on every line about them),
    with their types: the message text is never parsed.
    """

    _RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        for key, value in record.__dict__.items():
            if key not in self._RESERVED and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure_logging(fmt: str, verbose: int, *, service: bool = False) -> None:
    """Log to stderr. Services (the merger) log at INFO; one-shot commands only warn unless -v."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    quiet = logging.INFO if service else logging.WARNING
    logging.getLogger("dreamcatcher_pg").setLevel(
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else quiet
    )
