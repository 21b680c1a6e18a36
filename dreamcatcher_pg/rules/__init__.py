"""Merge rules as data: a TOML declaration per world, compiled to set-based SQL."""
