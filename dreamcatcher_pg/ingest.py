"""Placeholder: being written (``dreamcatcher ingest``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("ingest", help="load a directory of frame-N-<stream>.json delta files")
    p.set_defaults(func=_todo)


def _todo(args: argparse.Namespace, dsn: str) -> int:
    raise NotImplementedError
