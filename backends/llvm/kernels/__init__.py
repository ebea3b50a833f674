"""Code generators, one module per op family; importing this package registers them all."""

from . import reduce  # noqa: F401,E402  (Reduce*, ArgMax/ArgMin, Hardmax)
from . import gemm  # noqa: F401,E402  (MatMul, Gemm, and their fused epilogues)
from . import pointwise  # noqa: F401,E402  (elementwise nodes and fused elementwise bodies)
from . import softmax  # noqa: F401,E402  (Softmax, LogSoftmax)
from . import normalization  # noqa: F401,E402  (Layer/RMS/Batch/Instance/Group/Lp/MeanVariance normalization)
from . import conv  # noqa: F401,E402  (Conv, and its fused epilogues)
from . import rowfusion  # noqa: F401,E402  (fused bodies of kind "reduction": row-wise kernels)
from . import injective  # noqa: F401,E402  (Transpose, Slice, Concat, Pad, Gather... as strided copies)
from . import rnn  # noqa: F401,E402  (LSTM as one kernel)
from . import pool  # noqa: F401,E402  (MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool)
