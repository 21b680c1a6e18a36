"""The ``dreamcatcher`` command line: the only code that prints or uses rich."""

from .command import build_parser, main

__all__ = ["build_parser", "main"]
