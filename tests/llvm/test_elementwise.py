"""The llvm backend's elementwise code: float32 math functions, the op emitters, pointwise kernels, epilogues.

Math functions are checked against numpy on special values and random samples (ulp bounds); op emitters and
pointwise kernels through whole models against the reference target, with a check that the pointwise code (not
a fallback) ran; the Epilogue API through a fused emitter, registered for the test, that treats the first node
of an elementwise body as the "anchor" (standing in for a GEMM's accumulators).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from onnx import TensorProto, helper

pytest.importorskip("llvmlite")

import graphc  # noqa: E402
from graphc.backends.llvm import kernel as K  # noqa: E402
from graphc.backends.llvm.jit import JitModule, new_module, optimize  # noqa: E402
from graphc.backends.llvm.kernels import mathfns as M  # noqa: E402
from llvmlite import ir  # noqa: E402

F = TensorProto.FLOAT


# -- math functions ------------------------------------------------------------------------------------------------

def _jit_map(fn, width=16):
    """A compiled ``y[i] = fn(x[i])`` over float32 arrays (length a multiple of ``width``)."""
    mod = new_module("mathfn")
    f = ir.Function(mod, ir.FunctionType(ir.VoidType(), [K.F32.as_pointer(), K.F32.as_pointer(), K.I64]), "f")
    x, y, n = f.args
    b = ir.IRBuilder(f.append_basic_block())
    pre, loop, done = b.block, b.append_basic_block(), b.append_basic_block()
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(K.I64)
    i.add_incoming(ir.Constant(K.I64, 0), pre)
    vt = ir.VectorType(K.F32, width).as_pointer()
    v = b.load(b.bitcast(b.gep(x, [i]), vt), align=4)
    b.store(fn(M.Lanes(mod, b, width), v), b.bitcast(b.gep(y, [i]), vt), align=4)
    nxt = b.add(i, ir.Constant(K.I64, width))
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    jm = JitModule(optimize(mod))
    cfn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(jm.address("f"))

    def run(a):
        a = np.ascontiguousarray(a, np.float32)
        out = np.empty_like(a)
        cfn(a.ctypes.data, out.ctypes.data, a.size)
        return out

    run.keep = jm
    return run


def _samples():
    rng = np.random.default_rng(0)
    specials = [0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, 3e-39, 88.7, 88.73, 89, -87.3, -103,
                -104, -110, 1, -1, 0.5, 1e30, -1e30, 2, 10, -10, 20, -20, 1e-8, -1e-8, 0.625, -0.625, 0.3466,
                -0.3466, 4, -4, 5, -5, 9, -9, 1e-3, -1e-3, 100, -100]
    parts = [np.array(specials, np.float32), rng.uniform(-100, 100, 4096), rng.standard_normal(4096) * 3,
             rng.standard_normal(4096) * 1e-3, np.exp(rng.uniform(-100, 88, 4096))]
    x = np.concatenate([np.asarray(p, np.float32) for p in parts])
    return x[: len(x) // 16 * 16]


def _ulps(got, want32):
    same = (got == want32) | (np.isnan(got) & np.isnan(want32))
    with np.errstate(all="ignore"):
        err = np.abs(got.astype(np.float64) - want32.astype(np.float64)) / np.spacing(np.abs(want32)).astype(np.float64)
        return np.where(same, 0.0, np.nan_to_num(err, nan=np.inf, posinf=np.inf))


_ERF = np.vectorize(lambda v: math.erf(v) if not math.isnan(v) else math.nan)
_ERFC = np.vectorize(lambda v: math.erfc(v) if not math.isnan(v) else math.nan)


@pytest.mark.parametrize("name, fn, want, max_ulp, domain", [
    ("exp", M.exp, lambda x: np.exp(x), 4, None),
    ("expm1", M.expm1, lambda x: np.expm1(x.astype(np.float64)), 5, None),
    ("log", M.log, lambda x: np.log(x.astype(np.float64)), 2, None),
    ("tanh", M.tanh, lambda x: np.tanh(x.astype(np.float64)), 2, None),
    ("sigmoid", M.sigmoid, lambda x: 1 / (1 + np.exp(-x)), 5, None),
    ("erf", M.erf, lambda x: _ERF(x.astype(np.float64)), 8, None),
    ("log1p", M.log1p_nonneg, lambda x: np.log1p(x.astype(np.float64)), 2, np.abs),
    ("erfc", M.erfc_nonneg, lambda x: _ERFC(x.astype(np.float64)), 100, np.abs),
])
def test_float32_math_functions_are_accurate(name, fn, want, max_ulp, domain):
    x = _samples()
    if domain is not None:
        x = domain(x)
    with np.errstate(all="ignore"):
        expected = np.asarray(want(x)).astype(np.float32)
    got = _jit_map(fn)(x)
    err = _ulps(got, expected)
    worst = int(np.argmax(err))
    assert err.max() <= max_ulp, f"{name}({x[worst]!r}) = {got[worst]!r}, numpy {expected[worst]!r}"


# -- whole models against the reference ----------------------------------------------------------------------------

def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, inits=(), opset=20):
    graph = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _compare(model, feeds, rtol=1e-5, atol=1e-6, **options):
    got_m = graphc.compile(model, target="llvm", **options)
    want = graphc.compile(model, target="reference").run(feeds)
    got = got_m.run(feeds)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)
    return got_m.executable.describe()["specializations"][0]


def test_fused_body_with_broadcast_bias_and_two_outputs():
    rng = np.random.default_rng(1)
    bias = helper.make_tensor("b", F, [3, 1, 1], rng.standard_normal(3).astype(np.float32))
    nodes = [helper.make_node("Add", ["x", "b"], ["t"]), helper.make_node("Sigmoid", ["t"], ["s"]),
             helper.make_node("Mul", ["t", "s"], ["y"]), helper.make_node("Tanh", ["y"], ["z"])]
    model = _model(nodes, [_vi("x", [2, 3, 5, 7])], [_vi("y", [2, 3, 5, 7]), _vi("z", [2, 3, 5, 7])], [bias])
    d = _compare(model, {"x": rng.standard_normal((2, 3, 5, 7)).astype(np.float32)})
    assert d["fallbacks"] == 0 and d["emitters"] == {"pointwise": 1, "Tanh": 1}  # y, an output, ends a kernel


@pytest.mark.parametrize("shape_a, shape_b", [((4097,), (4097,)), ((3, 1), (1, 1000)), ((2, 3, 4), ()),
                                              ((1, 40, 1), (5, 1, 33)), ((0, 3), (3,))])
def test_broadcasting_shapes(shape_a, shape_b):
    rng = np.random.default_rng(2)
    out = np.broadcast_shapes(shape_a, shape_b)
    nodes = [helper.make_node("Sub", ["a", "b"], ["t"]), helper.make_node("Abs", ["t"], ["y"])]
    model = _model(nodes, [_vi("a", list(shape_a)), _vi("b", list(shape_b))], [_vi("y", list(out))])
    d = _compare(model, {"a": rng.standard_normal(shape_a).astype(np.float32),
                         "b": rng.standard_normal(shape_b).astype(np.float32)})
    assert d["fallbacks"] == 0


def test_single_threaded_and_threaded_agree():
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Gelu", ["x"], ["y"])]
    model = _model(nodes, [_vi("x", [3, 70001])], [_vi("y", [3, 70001])])
    x = rng.standard_normal((3, 70001)).astype(np.float32) * 4
    for threads in (1, 3):
        d = _compare(model, {"x": x}, rtol=1e-5, atol=1e-7, threads=threads)
        assert d["emitters"] == {"Gelu": 1}


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16])
def test_integer_div_and_mod_follow_the_reference(dtype):
    info = np.iinfo(dtype)
    a = np.array([7, -7, 7, -7, 0, 5, info.min, info.max, info.min, 3] * 4, dtype=np.int64)
    b = np.array([2, 2, -2, -2, 3, 0, -1, -1, 1, 7] * 4, dtype=np.int64)
    a, b = a.astype(dtype), b.astype(dtype)  # wraps negatives for unsigned types, as intended
    code = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Div", ["a", "b"], ["q"]), helper.make_node("Mod", ["a", "b"], ["r"]),
             helper.make_node("Mod", ["a", "b"], ["f"], fmod=1)]
    model = _model(nodes, [_vi("a", [40], code), _vi("b", [40], code)],
                   [_vi("q", [40], code), _vi("r", [40], code), _vi("f", [40], code)])
    d = _compare(model, {"a": a, "b": b})
    assert d["fallbacks"] == 0


@pytest.mark.parametrize("src, dst", [(np.float32, np.int8), (np.float32, np.uint8), (np.float64, np.int32),
                                      (np.float32, np.int64), (np.float32, np.bool_), (np.int64, np.float32),
                                      (np.uint16, np.int8), (np.bool_, np.float64), (np.float64, np.float32)])
def test_cast_matches_numpy_astype_including_out_of_range(src, dst):
    with np.errstate(all="ignore"):
        x = np.array([0, 1.5, -1.5, 300.7, -300.7, 70000.5, 3e9, -3e9, 1e20, np.nan, np.inf, -np.inf, 0.2, -0.9,
                      127.9, -128.9], dtype=np.float64).astype(src)
    s, t = helper.np_dtype_to_tensor_dtype(np.dtype(src)), helper.np_dtype_to_tensor_dtype(np.dtype(dst))
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=t)], [_vi("x", [16], s)], [_vi("y", [16], t)])
    d = _compare(model, {"x": x}, rtol=0, atol=0)
    assert d["fallbacks"] == 0


def test_unsupported_cast_is_declined_not_wrong():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.UINT32)], [_vi("x", [4])],
                   [_vi("y", [4], TensorProto.UINT32)])
    d = _compare(model, {"x": np.array([1, -1, 3e9, np.nan], np.float32)}, rtol=0, atol=0)
    assert d["fallback_ops"] == ["Cast"]


def test_clip_with_absent_min_and_scalar_input_bounds():
    nodes = [helper.make_node("Clip", ["x", "", "hi"], ["y"]), helper.make_node("Clip", ["x", "lo", "hi"], ["z"])]
    model = _model(nodes, [_vi("x", [50]), _vi("lo", []), _vi("hi", [])], [_vi("y", [50]), _vi("z", [50])])
    x = np.linspace(-3, 3, 50).astype(np.float32)
    x[7] = np.nan
    _compare(model, {"x": x, "lo": np.array(-1, np.float32), "hi": np.array(0.5, np.float32)})


def test_in_place_output_sharing_an_input_buffer():
    # the memory plan may place r and y over t; every lane is read before it is written
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Exp", ["x"], ["t"]), helper.make_node("MatMul", ["t", "w"], ["m"]),
             helper.make_node("Add", ["m", "m"], ["y"])]
    w = helper.make_tensor("w", F, [64, 64], rng.standard_normal((64, 64)).astype(np.float32) / 8)
    model = _model(nodes, [_vi("x", [16, 64])], [_vi("y", [16, 64])], [w])
    _compare(model, {"x": rng.standard_normal((16, 64)).astype(np.float32)}, rtol=1e-4)


def test_float64_and_bool_bodies():
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Less", ["x", "y"], ["c"]), helper.make_node("Not", ["c"], ["n"]),
             helper.make_node("Where", ["n", "x", "y"], ["w"]), helper.make_node("Softplus", ["w"], ["s"]),
             helper.make_node("Erf", ["s"], ["e"])]
    D = TensorProto.DOUBLE
    model = _model(nodes, [_vi("x", [10, 33], D), _vi("y", [33], D)], [_vi("e", [10, 33], D),
                                                                       _vi("n", [10, 33], TensorProto.BOOL)])
    d = _compare(model, {"x": rng.standard_normal((10, 33)), "y": rng.standard_normal(33)}, rtol=1e-12, atol=0)
    assert d["fallbacks"] == 0


# -- the Epilogue API ------------------------------------------------------------------------------------------------

@pytest.fixture
def first_node_as_anchor(monkeypatch):
    """A fused emitter, first in line, that computes a body's first node (a Neg of one input) itself and hands
    the rest to an Epilogue, calling emit on vector runs of ``width`` inside blocks of ``inner``."""
    from graphc.backends.llvm.kernels.epilogue import Epilogue
    from graphc.backends.llvm.kernels.mathfns import Lanes

    used = []

    def emitter(kb, kernel, body):
        first = body.nodes[0]
        if first.op_type != "Neg":
            raise K.Unsupported("test emitter: no Neg anchor")
        anchor, x = first.outputs[0], first.inputs[0]
        shape = kb.program.static_shape(anchor)
        inner = int(shape[-1]) * int(shape[-2])
        epi = Epilogue(kb, body, anchor, inner)
        width = 4 if inner % 4 == 0 else 1
        b = kb.builder
        ln = Lanes(kb.module, b, width)
        total = int(np.prod(shape))
        lo, hi = kb.thread_range(total // width)
        with kb.for_range(lo, hi) as i:
            flat = b.mul(i, kb.i64(width))
            p = b.gep(kb.ptr(x), [flat])
            if width > 1:
                p = b.bitcast(p, ir.VectorType(K.F32, width).as_pointer())
            epi.emit(flat, ln.b.fneg(b.load(p, align=4)))
        used.append([n.op_type for n in epi.nodes])

    monkeypatch.setattr(K, "FUSED_EMITTERS", [("test-anchor", emitter)] + list(K.FUSED_EMITTERS))
    from graphc.backends.llvm import program
    monkeypatch.setattr(program, "FUSED_EMITTERS", K.FUSED_EMITTERS)
    return used


def test_epilogue_bias_activation_residual(first_node_as_anchor):
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Neg", ["x"], ["a"]),
             helper.make_node("Unsqueeze", ["b", "axes"], ["b3"]),
             helper.make_node("Add", ["a", "b3"], ["t"]), helper.make_node("Relu", ["t"], ["r"]),
             helper.make_node("Add", ["r", "res"], ["y"])]
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    model = _model(nodes, [_vi("x", [2, 4, 3, 4]), _vi("res", [4, 3, 4]), _vi("b", [4])],
                   [_vi("y", [2, 4, 3, 4])], [axes])
    d = _compare(model, {"x": rng.standard_normal((2, 4, 3, 4)).astype(np.float32),
                         "b": rng.standard_normal(4).astype(np.float32),
                         "res": rng.standard_normal((4, 3, 4)).astype(np.float32)})
    assert d["emitters"] == {"test-anchor": 1}
    assert first_node_as_anchor == [["Unsqueeze", "Add", "Relu", "Add"]]


def test_epilogue_scalar_runs_and_per_channel_operand(first_node_as_anchor):
    # blocks of 35 elements: the test emitter passes scalars; s is constant over each block
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["g"]),
             helper.make_node("Mul", ["g", "s"], ["y"])]
    model = _model(nodes, [_vi("x", [3, 5, 7]), _vi("s", [3, 1, 1])], [_vi("y", [3, 5, 7])])
    d = _compare(model, {"x": np.linspace(-4, 4, 105, dtype=np.float32).reshape(3, 5, 7),
                         "s": np.array([1, -2, 3], np.float32).reshape(3, 1, 1)})
    assert d["emitters"] == {"test-anchor": 1}
    assert first_node_as_anchor == [["Sigmoid", "Mul"]]


def test_epilogue_declines_an_operand_that_varies_inside_a_block(first_node_as_anchor):
    # the operand (3, 1, 7) changes along the block axes (5 x 7) but is not contiguous with the anchor over them
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Mul", ["a", "s"], ["y"])]
    model = _model(nodes, [_vi("x", [3, 5, 7]), _vi("s", [3, 1, 7])], [_vi("y", [3, 5, 7])])
    rng = np.random.default_rng(7)
    d = _compare(model, {"x": rng.standard_normal((3, 5, 7)).astype(np.float32),
                         "s": rng.standard_normal((3, 1, 7)).astype(np.float32)})
    assert "test-anchor" not in d["emitters"] and d["emitters"] == {"pointwise": 1}
    assert first_node_as_anchor == []
