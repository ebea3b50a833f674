"""Ops: normalization (being written)."""
