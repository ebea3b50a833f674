"""Shared by the conformance test and tools: the exclusions list of the ONNX backend suite."""

from __future__ import annotations

import os
import re

EXCLUSIONS_FILE = os.path.join(os.path.dirname(__file__), "conformance_exclusions.txt")
_LINE = re.compile(r"^(test_[A-Za-z0-9_]+)\s+#\s*(\S.*)$")


def load_exclusions(path: str = EXCLUSIONS_FILE) -> dict[str, str]:
    """{test name: reason}. Every line must be an exact test name followed by '# reason'."""
    out: dict[str, str] = {}
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: expected 'test_name  # reason', got {line!r}")
            name, reason = match.groups()
            if name in out:
                raise ValueError(f"{path}:{number}: {name} listed twice")
            out[name] = reason
    return out
