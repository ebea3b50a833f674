"""Running compiled plans: input binding and checking (multi-device execution arrives with partitioning)."""

from .binding import check_inputs

__all__ = ["check_inputs"]
