"""Ops: tensor (being written)."""
