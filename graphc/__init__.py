"""graphc: a graph compiler for neural networks.

    import graphc
    model = graphc.compile("model.onnx")          # or "zoo:resnet50", a ModelProto, a torch module
    outputs = model.run({"input": array})
"""

from ._layout import install as _install_checkout_layout

_install_checkout_layout()

from .errors import (ArtifactError, DeviceError, ExecutionError, GraphcError, InputError,  # noqa: E402
                     InvalidModelError, ModelLoadError, OptionError, PassError, ShapeInferenceError,
                     UnsupportedOpError, VerificationError)

__version__ = "0.1.0"

from .api import compile, load  # noqa: E402
from .compiled import CompiledModel  # noqa: E402

__all__ = [
    "compile", "load", "CompiledModel", "GraphcError", "ArtifactError", "DeviceError", "ExecutionError",
    "InputError", "InvalidModelError", "ModelLoadError", "OptionError", "PassError", "ShapeInferenceError",
    "UnsupportedOpError", "VerificationError", "__version__",
]
