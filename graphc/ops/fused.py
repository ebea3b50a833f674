"""Ops internal to graphc (fused kernels); being written."""
