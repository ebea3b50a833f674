"""The user-facing error tree.

Every failure a user can cause (a bad model, a bad input, an unsupported op, a missing device) is raised as
a subclass of :class:`GraphcError`, with a message that says what was wrong and what to do about it.
Anything else escaping graphc is a bug in graphc.
"""

from __future__ import annotations


class GraphcError(Exception):
    """Base class of every error graphc reports to its users."""


class ModelLoadError(GraphcError):
    """The model file or proto could not be read (missing, truncated, not ONNX, hostile paths)."""


class InvalidModelError(GraphcError):
    """The model was read but is not a valid graph (dangling inputs, cycles, bad attributes, bad shapes)."""


class UnsupportedOpError(GraphcError):
    """One or more ops have no implementation; ``ops`` lists every one of them as (domain, op_type, opset)."""

    def __init__(self, ops: list[tuple[str, str, int]]):
        self.ops = sorted(set(ops))
        listed = ", ".join(f"{(d + '::') if d else ''}{t} (opset {v})" for d, t, v in self.ops)
        super().__init__(
            f"{len(self.ops)} unsupported op type(s): {listed}. "
            "See docs/supported_ops.md for what graphc implements."
        )


class ShapeInferenceError(InvalidModelError):
    """An op's inputs have types or shapes its rule does not accept."""


class InputError(GraphcError):
    """Inputs given at run time do not match the compiled model's signature."""


class ExecutionError(GraphcError):
    """A kernel failed at run time on the given inputs (e.g. an out-of-range index in the data)."""


class PassError(GraphcError):
    """A compiler pass failed, or left the IR in a state the verifier rejects."""


class VerificationError(PassError):
    """The IR breaks one of its invariants (SSA, typing, topological order, dangling uses)."""


class ArtifactError(GraphcError):
    """A saved artifact is missing, corrupted, tampered with, or from an incompatible graphc."""


class DeviceError(GraphcError):
    """A requested device or target is absent or cannot be used on this machine."""


class OptionError(GraphcError):
    """An option passed to compile() or the CLI has an invalid value."""
