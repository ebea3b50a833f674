"""Ops: pooling (being written)."""
