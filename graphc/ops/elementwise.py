"""Ops: elementwise (being written)."""
