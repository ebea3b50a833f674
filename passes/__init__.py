"""graphc's pass infrastructure (import name ``graphc.passes``).

    from graphc.passes import PassContext, PassManager, resolve_pipeline

    ctx = PassContext(target="llvm", properties={"shapes_inferred"})
    result = PassManager(resolve_pipeline("llvm", {"passes": ["+myplugin"]})).run(graph, ctx)
    print(result.to_dict(), ctx.format_log())

- :mod:`.base`: :class:`Pass` (name, requires/ensures/invalidates, ``run(graph, ctx) -> bool``) and
  :class:`PassContext` (options, established properties, decision log);
- :mod:`.registry`: :func:`register_pass`, :func:`get_pass`, :func:`available_passes`, and discovery of
  plugins from the entry-point group ``graphc.passes``;
- :mod:`.manager`: :class:`PassManager`, which checks requires, verifies the IR and times each pass;
- :mod:`.pipeline`: :func:`default_pipeline` per target and the ``passes=`` option;
- one module per built-in pass (:mod:`.dce`, ...). See docs/passes.md for writing a plugin.
"""

from .base import PROPERTIES, Decision, Pass, PassContext
from .registry import (ENTRY_POINT_GROUP, available_passes, discover_plugins, get_pass, register_pass,
                       unregister_pass)
from .manager import PassManager, PassRecord, PipelineResult
from .pipeline import default_pipeline, resolve_pipeline

# Built-in passes register themselves on import; later issues add their modules here.
from . import batchnorm_folding, constant_folding, cse, dce, fusion, memory_planning, noop_elimination  # noqa: E402,F401
from . import partitioning, precision, tensor_split  # noqa: E402,F401

__all__ = [
    "Pass", "PassContext", "Decision", "PROPERTIES", "PassManager", "PassRecord", "PipelineResult",
    "register_pass", "unregister_pass", "get_pass", "available_passes", "discover_plugins", "ENTRY_POINT_GROUP",
    "default_pipeline", "resolve_pipeline",
]
