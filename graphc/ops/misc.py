"""Ops: misc (being written)."""
