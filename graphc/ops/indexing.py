"""Ops: indexing (being written)."""
