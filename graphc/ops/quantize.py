"""Ops: quantize (being written)."""
