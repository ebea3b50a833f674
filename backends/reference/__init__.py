"""The reference backend: runs the plan node by node with the registry's numpy kernels.

It is the oracle every other backend is tested against, so it favours obviously-correct over fast: each node
calls its op's ``compute``; a value is dropped as soon as its last reader has run.
"""

from .executor import ReferenceExecutable, compile

__all__ = ["ReferenceExecutable", "compile"]
