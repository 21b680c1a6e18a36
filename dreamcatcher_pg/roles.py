"""Database roles for untrusted writers (being written)."""

from __future__ import annotations


async def create_roles(dsn: str, *, prefix: str = "dreamcatcher") -> list[str]:
    """Create the worker, merger and reader roles; returns their names."""
    raise NotImplementedError("dreamcatcher init --roles is not implemented yet")
