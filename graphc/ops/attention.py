"""Ops: attention (being written)."""
