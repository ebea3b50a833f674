"""A deterministic, seeded corpus of malformed, mutated and hostile models.

Every case must end in a :class:`graphc.GraphcError` (at compile time or at run time), never another exception,
a hang, or a crash of the interpreter. ``generate(seed)`` returns the same list of :class:`Case` for the same
seed; ``get_case(case_id)`` looks one up (the isolated runner uses it in a child process).

Kinds (categories):
  truncated, byte_flip, multi_byte_flip, wrong_attr_type, bad_attr_value, dangling_input, duplicate_output,
  cycle, bad_dims, initializer_size, unknown_op, deep_subgraph, external_data, not_onnx, no_graph_or_opset,
  invalid_utf8, bad_subgraph, type_mismatch, runtime_feed, runtime_data.

Only the byte-flip kinds may legitimately produce a valid model (a flip inside a float weight or a doc string);
everything else is malformed by construction.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
SEED = 20240501

#: kinds where a mutation can, by chance, leave a perfectly valid model behind
MAY_SUCCEED_KINDS = {"byte_flip", "multi_byte_flip"}


@dataclasses.dataclass
class Case:
    case_id: str
    kind: str
    #: bytes, onnx.ModelProto, any other object handed to compile, or a callable ``make(tmpdir) -> model``
    model: Any
    feeds: dict | None = None
    #: run in a child process (deep recursion, potential interpreter crashes, large allocations)
    isolate: bool = False
    #: the GraphcError subclass name expected (None: any GraphcError)
    expect: str | None = None
    #: substrings the error message must contain (actionable messages name the offender)
    must_mention: tuple[str, ...] = ()
    #: for UnsupportedOpError: the op types that must all be listed
    unsupported: tuple[str, ...] = ()

    @property
    def may_succeed(self) -> bool:
        return self.kind in MAY_SUCCEED_KINDS

    def materialize(self, tmpdir: str) -> Any:
        model = self.model
        if callable(model) and not isinstance(model, (bytes, onnx.ModelProto)):
            model = model(tmpdir)
        return model


# ----------------------------------------------------------------------------------------------- seed models

def _vi(name, elem=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits=(), opsets=(("", OPSET),), name="g", value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _w(name, shape, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def seed_mlp() -> onnx.ModelProto:
    """x[N,4] -> MatMul -> Add -> Relu -> MatMul -> Softmax."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="bias1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("MatMul", ["h2", "w2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    return _model(nodes, [_vi("x", shape=["N", 4])], [_vi("probs", shape=["N", 3])],
                  [_w("w1", (4, 3), 1), _w("b1", (3,), 2), _w("w2", (3, 3), 3)], name="mlp")


def seed_gemm() -> onnx.ModelProto:
    """x[2,3] -> Gemm(transB) -> ReduceSum(axes=[1], keepdims) -> y[2,1]."""
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1, alpha=1.0, name="gemm"),
        helper.make_node("ReduceSum", ["g", "axes"], ["y"], keepdims=1, name="rsum"),
    ]
    return _model(nodes, [_vi("x", shape=[2, 3])], [_vi("y", shape=[2, 1])],
                  [_w("w", (2, 3), 4), _w("b", (2,), 5),
                   numpy_helper.from_array(np.array([1], np.int64), "axes")], name="gemm")


def seed_einsum() -> onnx.ModelProto:
    """x[2,3] -> Einsum(ij,jk->ik) -> Reshape[4,2] -> Transpose -> Concat(axis 0)."""
    nodes = [
        helper.make_node("Einsum", ["x", "w"], ["e"], equation="ij,jk->ik", name="einsum"),
        helper.make_node("Reshape", ["e", "shape"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0], name="transpose"),
        helper.make_node("Concat", ["t", "t"], ["y"], axis=0, name="concat"),
    ]
    return _model(nodes, [_vi("x", shape=[2, 3])], [_vi("y", shape=[4, 4])],
                  [_w("w", (3, 4), 6), numpy_helper.from_array(np.array([4, 2], np.int64), "shape")],
                  name="einsum")


def _branch(name, op, out):
    return helper.make_graph([helper.make_node(op, ["x", "x"], [out], name=f"{name}_{op}")], name, [],
                             [_vi(out, shape=[2, 3])])


def seed_if() -> onnx.ModelProto:
    """If(c) then x+x else x*x."""
    node = helper.make_node("If", ["c"], ["y"], name="branch",
                            then_branch=_branch("then", "Add", "t"), else_branch=_branch("else", "Mul", "e"))
    return _model([node], [_vi("c", TensorProto.BOOL, []), _vi("x", shape=[2, 3])], [_vi("y", shape=[2, 3])],
                  name="ifmodel")


def _loop_body():
    return helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("Add", ["acc_in", "x"], ["acc_out"], name="accumulate")],
        "body", [_vi("iter", TensorProto.INT64, []), _vi("cond_in", TensorProto.BOOL, []), _vi("acc_in", shape=[2])],
        [_vi("cond_out", TensorProto.BOOL, []), _vi("acc_out", shape=[2])])


def seed_loop() -> onnx.ModelProto:
    """Loop M times: acc += x (trip count and condition come from feeds, so flips cannot make it endless)."""
    node = helper.make_node("Loop", ["M", "cond", "acc0"], ["acc"], body=_loop_body(), name="loop")
    return _model([node], [_vi("M", TensorProto.INT64, []), _vi("cond", TensorProto.BOOL, []),
                           _vi("acc0", shape=[2]), _vi("x", shape=[2])], [_vi("acc", shape=[2])], name="loopmodel")


def _feeds(name: str) -> dict:
    rng = np.random.default_rng(7)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return {
        "mlp": {"x": f32(2, 4)},
        "gemm": {"x": f32(2, 3)},
        "einsum": {"x": f32(2, 3)},
        "if": {"c": np.array(True), "x": f32(2, 3)},
        "loop": {"M": np.array(3, np.int64), "cond": np.array(True), "acc0": f32(2), "x": f32(2)},
    }[name]


SEEDS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": seed_mlp, "gemm": seed_gemm, "einsum": seed_einsum, "if": seed_if, "loop": seed_loop,
}


def seed_feeds(name: str) -> dict:
    return _feeds(name)


# ----------------------------------------------------------------------------------------------- helpers

def _copy(m: onnx.ModelProto) -> onnx.ModelProto:
    c = onnx.ModelProto()
    c.CopyFrom(m)
    return c


def _attr(name: str, kind: int, **fields) -> onnx.AttributeProto:
    a = onnx.AttributeProto()
    a.name, a.type = name, kind
    for k, v in fields.items():
        if isinstance(v, (list, tuple)):
            getattr(a, k).extend(v)
        elif k in ("g", "t"):
            getattr(a, k).CopyFrom(v)
        else:
            setattr(a, k, v)
    return a


def _set_attr(model: onnx.ModelProto, node_name: str, attr: onnx.AttributeProto, replace: bool = True):
    for node in model.graph.node:
        if node.name == node_name:
            if replace:
                keep = [a for a in node.attribute if a.name != attr.name]
                del node.attribute[:]
                node.attribute.extend(keep)
            node.attribute.append(attr)
            return model
    raise KeyError(node_name)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, wire: int) -> bytes:
    return _varint((num << 3) | wire)


def _ld(num: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _field(num, 2) + _varint(len(payload)) + payload


def deep_if_bytes(levels: int) -> bytes:
    """ModelProto bytes with If nodes nested ``levels`` deep, built without recursion (O(levels))."""
    # GraphProto: node=1, name=2, input=11, output=12;  NodeProto: input=1, output=2, name=3, op_type=4,
    # attribute=5;  AttributeProto: name=1, g=6, type=20 (GRAPH=5);  ModelProto: ir_version=1, graph=7,
    # opset_import=8;  OperatorSetIdProto: domain=1, version=2;  ValueInfoProto: name=1.
    # innermost graph: Identity(c) -> out
    leaf = (_ld(1, _ld(1, b"c") + _ld(2, b"out") + _ld(4, b"Identity")) + _ld(2, b"leaf") + _ld(12, _ld(1, b"out")))
    # each level wraps the inner graph G as: graph{ node{ input c, output out, op If, attr then=G, attr else=G' } }
    # To stay linear, only then_branch nests; else_branch is the small leaf.
    else_attr = _ld(1, b"else_branch") + _ld(6, leaf) + _field(20, 0) + _varint(5)
    prefixes, suffixes = [], []
    inner_len = len(leaf)
    for _ in range(levels):
        # attribute then_branch = { name, g=<inner>, type }
        attr_pre = _ld(1, b"then_branch") + _field(6, 2) + _varint(inner_len)
        attr_suf = _field(20, 0) + _varint(5)
        attr_len = len(attr_pre) + inner_len + len(attr_suf)
        node_pre = _ld(1, b"c") + _ld(2, b"out") + _ld(4, b"If") + _field(5, 2) + _varint(attr_len)
        node_suf = attr_suf + _ld(5, else_attr)
        node_len = len(node_pre) + len(attr_pre) + inner_len + len(attr_suf) + len(_ld(5, else_attr))
        graph_pre = _field(1, 2) + _varint(node_len) + node_pre + attr_pre
        graph_suf = node_suf + _ld(2, b"lvl") + _ld(12, _ld(1, b"out"))
        prefixes.append(graph_pre)
        suffixes.append(graph_suf)
        inner_len = len(graph_pre) + inner_len + len(graph_suf)
    # the top-level graph also declares input c (bool scalar) and output out
    body = b"".join(reversed(prefixes)) + leaf + b"".join(suffixes)
    bool_scalar = _ld(1, _ld(1, _field(1, 0) + _varint(TensorProto.BOOL) + _ld(2, b"")))
    top_graph = body + _ld(11, _ld(1, b"c") + _ld(2, bool_scalar))
    return (_field(1, 0) + _varint(8) + _ld(7, top_graph) + _ld(8, _field(2, 0) + _varint(OPSET)))


def deep_if_proto(levels: int) -> onnx.ModelProto:
    """The same nesting as a ModelProto, built top-down by mutating sub-messages (no recursion, O(levels))."""
    model = helper.make_model(helper.make_graph([], "top", [_vi("c", TensorProto.BOOL, [])], [_vi("out")]),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    leaf = helper.make_graph([helper.make_node("Identity", ["c"], ["out"])], "leaf", [], [_vi("out")])
    g = model.graph
    for _ in range(levels):
        node = g.node.add()
        node.op_type = "If"
        node.input.append("c")
        node.output.append("out")
        els = node.attribute.add()
        els.name, els.type = "else_branch", onnx.AttributeProto.GRAPH
        els.g.CopyFrom(leaf)
        then = node.attribute.add()
        then.name, then.type = "then_branch", onnx.AttributeProto.GRAPH
        then.g.name = "lvl"
        then.g.output.add().name = "out"
        g = then.g
    g.node.add().CopyFrom(leaf.node[0])
    return model


# ----------------------------------------------------------------------------------------------- categories

def _truncated(cases: list[Case]) -> None:
    for name, make in SEEDS.items():
        data = make().SerializeToString()
        n = len(data)
        offsets = sorted({1, 2, 3, 4, 5, 7, 9, 12, 17, n // 5, n // 4, n // 3, n // 2, (2 * n) // 3, (3 * n) // 4,
                          n - 9, n - 4, n - 2, n - 1})
        for off in offsets:
            if 0 < off < n:
                cases.append(Case(f"truncated/{name}@{off}", "truncated", data[:off], _feeds(name)))


def _flips(cases: list[Case], rng: random.Random) -> None:
    for name, make in SEEDS.items():
        data = make().SerializeToString()
        for i in range(14):
            pos = rng.randrange(len(data))
            b = bytearray(data)
            if i % 2:
                b[pos] ^= 1 << rng.randrange(8)  # a single bit
            else:
                b[pos] ^= rng.randrange(1, 256)  # a whole byte
            cases.append(Case(f"byte_flip/{name}#{i}@{pos}", "byte_flip", bytes(b), _feeds(name)))
        for i in range(8):
            b = bytearray(data)
            count = rng.randrange(2, 9)
            positions = sorted(rng.sample(range(len(data)), count))
            for pos in positions:
                b[pos] = rng.randrange(256) if b[pos] != 0 else rng.randrange(1, 256)
            cases.append(Case(f"multi_byte_flip/{name}#{i}x{count}", "multi_byte_flip", bytes(b), _feeds(name)))
        # a burst: a contiguous run of random bytes
        for i in range(2):
            b = bytearray(data)
            start = rng.randrange(len(data) - 8)
            length = rng.randrange(4, 17)
            for pos in range(start, min(len(b), start + length)):
                b[pos] = rng.randrange(256)
            cases.append(Case(f"multi_byte_flip/{name}#burst{i}@{start}+{length}", "multi_byte_flip", bytes(b),
                              _feeds(name)))


def _wrong_attr_types(cases: list[Case]) -> None:
    A = onnx.AttributeProto
    sub = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "body", [], [_vi("z")])
    variants = [
        ("softmax", "mlp", _attr("axis", A.INTS, ints=[1, 2])),
        ("softmax", "mlp", _attr("axis", A.FLOAT, f=1.0)),
        ("softmax", "mlp", _attr("axis", A.STRING, s=b"last")),
        ("softmax", "mlp", _attr("axis", A.TENSOR, t=numpy_helper.from_array(np.array(1, np.int64)))),
        ("softmax", "mlp", _attr("axis", A.GRAPH, g=sub)),
        ("softmax", "mlp", _attr("axis", A.UNDEFINED)),
        ("fc1", "mlp", _attr("body", A.GRAPH, g=sub)),            # a GRAPH attribute on MatMul
        ("fc1", "mlp", _attr("transA", A.INT, i=1)),              # an attribute MatMul does not have
        ("relu1", "mlp", _attr("alpha", A.FLOAT, f=0.1)),          # an attribute Relu does not have
        ("gemm", "gemm", _attr("transB", A.FLOAT, f=1.0)),
        ("gemm", "gemm", _attr("transB", A.INTS, ints=[1])),
        ("gemm", "gemm", _attr("alpha", A.STRING, s=b"one")),
        ("gemm", "gemm", _attr("alpha", A.GRAPHS, graphs=[sub, sub])),
        ("gemm", "gemm", _attr("beta", A.TENSORS, tensors=[numpy_helper.from_array(np.ones(1, np.float32))])),
        ("rsum", "gemm", _attr("keepdims", A.STRING, s=b"yes")),
        ("rsum", "gemm", _attr("noop_with_empty_axes", A.FLOATS, floats=[0.0, 1.0])),
        ("einsum", "einsum", _attr("equation", A.INT, i=3)),
        ("einsum", "einsum", _attr("equation", A.STRINGS, strings=[b"ij,jk->ik"])),
        ("transpose", "einsum", _attr("perm", A.INT, i=1)),
        ("transpose", "einsum", _attr("perm", A.FLOATS, floats=[1.0, 0.0])),
        ("concat", "einsum", _attr("axis", A.STRING, s=b"0")),
        ("branch", "if", _attr("then_branch", A.INT, i=1)),
        ("branch", "if", _attr("else_branch", A.TENSOR, t=numpy_helper.from_array(np.ones(2, np.float32)))),
        ("branch", "if", _attr("then_branch", A.GRAPHS, graphs=[sub])),
        ("loop", "loop", _attr("body", A.STRING, s=b"body")),
    ]
    for i, (node, seed, attr) in enumerate(variants):
        m = _set_attr(SEEDS[seed](), node, attr)
        kind_name = A.AttributeType.Name(attr.type)
        cases.append(Case(f"wrong_attr_type/{seed}.{node}.{attr.name}={kind_name}#{i}", "wrong_attr_type", m,
                          _feeds(seed), must_mention=(node,) if i < 3 else ()))
    # the declared type says INT but the payload sits in another field
    m = SEEDS["mlp"]()
    _set_attr(m, "softmax", _attr("axis", A.INT, floats=[1.0]))
    cases.append(Case("wrong_attr_type/mlp.softmax.axis=INT-with-floats", "wrong_attr_type", m, _feeds("mlp")))
    # a duplicated attribute
    m = SEEDS["mlp"]()
    _set_attr(m, "softmax", _attr("axis", A.INT, i=0), replace=False)
    cases.append(Case("wrong_attr_type/mlp.softmax.axis-twice", "wrong_attr_type", m, _feeds("mlp")))
    # an attribute reference outside a function
    m = SEEDS["mlp"]()
    a = _attr("axis", A.INT)
    a.ref_attr_name = "outer_axis"
    _set_attr(m, "softmax", a)
    cases.append(Case("wrong_attr_type/mlp.softmax.axis-ref_attr", "wrong_attr_type", m, _feeds("mlp")))


def _bad_attr_values(cases: list[Case]) -> None:
    variants = [
        ("softmax", "mlp", helper.make_attribute("axis", 5)),
        ("softmax", "mlp", helper.make_attribute("axis", -7)),
        ("transpose", "einsum", helper.make_attribute("perm", [0, 0])),
        ("transpose", "einsum", helper.make_attribute("perm", [0, 1, 2])),
        ("transpose", "einsum", helper.make_attribute("perm", [5, -9])),
        ("concat", "einsum", helper.make_attribute("axis", 3)),
        ("einsum", "einsum", helper.make_attribute("equation", "ij,jk->iz")),
        ("einsum", "einsum", helper.make_attribute("equation", "ijk,jk->ik")),
        ("einsum", "einsum", helper.make_attribute("equation", "i$,jk->ik")),
        ("einsum", "einsum", helper.make_attribute("equation", "")),
        ("einsum", "einsum", helper.make_attribute("equation", "ij,jk,kl->il")),
        ("gemm", "gemm", helper.make_attribute("transA", 1)),          # [3,2] x [3,2]^T: inner dims clash
        ("gemm", "gemm", helper.make_attribute("transB", 0)),
    ]
    for i, (node, seed, attr) in enumerate(variants):
        m = _set_attr(SEEDS[seed](), node, attr)
        cases.append(Case(f"bad_attr_value/{seed}.{node}.{attr.name}#{i}", "bad_attr_value", m, _feeds(seed)))
    # ReduceSum axes (an input since opset 13) out of range
    for axes in ([5], [-3], [2, 0]):
        m = SEEDS["gemm"]()
        m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
        cases.append(Case(f"bad_attr_value/gemm.rsum.axes={axes}", "bad_attr_value", m, _feeds("gemm")))
    # Reshape to a shape with a different element count, two -1s, a negative other than -1
    for shape in ([3, 3], [-1, -1], [-2, 4], [0, 0, 0]):
        m = SEEDS["einsum"]()
        m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array(shape, np.int64), "shape"))
        cases.append(Case(f"bad_attr_value/einsum.reshape.shape={shape}", "bad_attr_value", m, _feeds("einsum")))


def _dangling(cases: list[Case]) -> None:
    m = SEEDS["mlp"]()
    m.graph.node[1].input[1] = "b_missing"
    cases.append(Case("dangling_input/mlp.bias1<-b_missing", "dangling_input", m, _feeds("mlp"),
                      expect="InvalidModelError", must_mention=("b_missing",)))
    m = SEEDS["mlp"]()
    m.graph.node[2].input[0] = "ghost"
    cases.append(Case("dangling_input/mlp.relu1<-ghost", "dangling_input", m, _feeds("mlp"), must_mention=("ghost",)))
    m = SEEDS["mlp"]()
    del m.graph.initializer[2]   # w2 gone
    cases.append(Case("dangling_input/mlp.initializer_w2_removed", "dangling_input", m, _feeds("mlp"),
                      must_mention=("w2",)))
    m = SEEDS["mlp"]()
    m.graph.output[0].name = "nowhere"
    cases.append(Case("dangling_input/mlp.output_nowhere", "dangling_input", m, _feeds("mlp"),
                      must_mention=("nowhere",)))
    m = SEEDS["mlp"]()
    del m.graph.input[:]
    cases.append(Case("dangling_input/mlp.no_graph_inputs", "dangling_input", m, _feeds("mlp"), must_mention=("x",)))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[0].g.node[0].input[0] = "outer_ghost"
    cases.append(Case("dangling_input/if.then_reads_outer_ghost", "dangling_input", m, _feeds("if"),
                      must_mention=("outer_ghost",)))
    m = SEEDS["loop"]()
    body = m.graph.node[0].attribute[0].g
    body.node[1].input[1] = "y_outer"
    cases.append(Case("dangling_input/loop.body_reads_y_outer", "dangling_input", m, _feeds("loop"),
                      must_mention=("y_outer",)))
    m = SEEDS["if"]()
    m.graph.node[0].input[0] = "cc"
    cases.append(Case("dangling_input/if.cond_cc", "dangling_input", m, _feeds("if"), must_mention=("cc",)))
    # a subgraph value read from a sibling branch (not in scope)
    m = SEEDS["if"]()
    m.graph.node[0].attribute[1].g.node[0].input[0] = "t"
    cases.append(Case("dangling_input/if.else_reads_then_value", "dangling_input", m, _feeds("if")))
    # an empty input name where a required input belongs
    m = SEEDS["mlp"]()
    m.graph.node[0].input[1] = ""
    cases.append(Case("dangling_input/mlp.fc1_empty_input", "dangling_input", m, _feeds("mlp")))


def _duplicates(cases: list[Case]) -> None:
    m = SEEDS["mlp"]()
    m.graph.node[2].output[0] = "h0"   # relu writes h0 again
    cases.append(Case("duplicate_output/mlp.relu_writes_h0", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("h0",)))
    m = SEEDS["mlp"]()
    m.graph.node[0].output[0] = "x"    # overwrites the graph input
    cases.append(Case("duplicate_output/mlp.fc1_writes_input_x", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("x",)))
    m = SEEDS["mlp"]()
    m.graph.node[0].output[0] = "w2"   # overwrites an initializer
    cases.append(Case("duplicate_output/mlp.fc1_writes_initializer_w2", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("w2",)))
    m = SEEDS["mlp"]()
    m.graph.initializer.append(_w("w1", (4, 3), 9))  # a second initializer with the same name
    cases.append(Case("duplicate_output/mlp.initializer_w1_twice", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("w1",)))
    m = SEEDS["mlp"]()
    m.graph.input.append(_vi("x", shape=["N", 4]))
    cases.append(Case("duplicate_output/mlp.input_x_twice", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("x",)))
    m = SEEDS["mlp"]()
    m.graph.node.append(helper.make_node("Relu", ["logits"], ["probs"], name="again"))
    cases.append(Case("duplicate_output/mlp.probs_twice", "duplicate_output", m, _feeds("mlp"),
                      must_mention=("probs",)))
    m = SEEDS["if"]()
    then = m.graph.node[0].attribute[0].g
    then.node.append(helper.make_node("Mul", ["x", "x"], ["t"], name="then_again"))
    cases.append(Case("duplicate_output/if.then_defines_t_twice", "duplicate_output", m, _feeds("if")))
    m = SEEDS["gemm"]()
    m.graph.node[0].output.append("g")  # one node with the same output name twice
    cases.append(Case("duplicate_output/gemm.gemm_outputs_g_g", "duplicate_output", m, _feeds("gemm")))


def _cycles(cases: list[Case], rng: random.Random) -> None:
    m = SEEDS["mlp"]()
    nodes = list(m.graph.node)[::-1]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    cases.append(Case("cycle/mlp.reversed_order", "cycle", m, _feeds("mlp")))
    base = list(seed_mlp().graph.node)
    seen = set()
    while len(seen) < 8:
        order = list(range(len(base)))
        rng.shuffle(order)
        if order == sorted(order) or tuple(order) in seen:
            continue
        seen.add(tuple(order))
        m = SEEDS["mlp"]()
        del m.graph.node[:]
        m.graph.node.extend(base[i] for i in order)
        cases.append(Case(f"cycle/mlp.permuted_{''.join(map(str, order))}", "cycle", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.node[2].input[0] = "h2"  # Relu reads its own output
    cases.append(Case("cycle/mlp.relu_self_loop", "cycle", m, _feeds("mlp"), must_mention=("h2",)))
    m = SEEDS["mlp"]()
    m.graph.node[1].input[0] = "h2"  # Add reads Relu's output, Relu reads Add's: a 2-cycle
    cases.append(Case("cycle/mlp.add_relu_two_cycle", "cycle", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.node[0].input[0] = "probs"  # the first node reads the last node's output
    cases.append(Case("cycle/mlp.whole_graph_loop", "cycle", m, _feeds("mlp")))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[0].g.node[0].input[0] = "y"  # a branch reads the If's own output
    cases.append(Case("cycle/if.branch_reads_if_output", "cycle", m, _feeds("if")))
    m = SEEDS["einsum"]()
    m.graph.node[3].input[1] = "y"  # Concat reads its own output
    cases.append(Case("cycle/einsum.concat_self_loop", "cycle", m, _feeds("einsum")))


def _dims(cases: list[Case]) -> None:
    huge = 2 ** 40
    m = SEEDS["mlp"]()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -4
    cases.append(Case("bad_dims/mlp.input_dim_-4", "bad_dims", m, _feeds("mlp")))
    m = SEEDS["gemm"]()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    cases.append(Case("bad_dims/gemm.input_dim_-1", "bad_dims", m, _feeds("gemm")))
    m = SEEDS["mlp"]()
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = -3
    cases.append(Case("bad_dims/mlp.output_dim_-3", "bad_dims", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.value_info.append(_vi("h1", shape=[-2, 3]))
    cases.append(Case("bad_dims/mlp.value_info_dim_-2", "bad_dims", m, _feeds("mlp")))
    m = SEEDS["gemm"]()
    for d in m.graph.input[0].type.tensor_type.shape.dim:
        d.dim_value = huge
    cases.append(Case("bad_dims/gemm.input_dims_2^40x2^40", "bad_dims", m, _feeds("gemm")))
    m = SEEDS["mlp"]()
    m.graph.value_info.append(_vi("h1", shape=[huge, huge]))
    cases.append(Case("bad_dims/mlp.value_info_2^40x2^40", "bad_dims", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2 ** 62
    cases.append(Case("bad_dims/mlp.input_dim_2^62", "bad_dims", m, _feeds("mlp")))
    # initializers with negative / huge / mismatching dims
    for label, dims in (("neg", [-4, 3]), ("huge", [huge, huge]), ("huge1d", [2 ** 62]), ("zero", [0, 3]),
                        ("extra_rank", [4, 3, 1, 1])):
        m = SEEDS["mlp"]()
        w = m.graph.initializer[0]
        del w.dims[:]
        w.dims.extend(dims)
        cases.append(Case(f"bad_dims/mlp.initializer_w1_{label}", "bad_dims", m, _feeds("mlp"),
                          must_mention=("w1",) if label in ("neg", "huge") else ()))
    # a float_data tensor claiming a huge shape
    m = SEEDS["gemm"]()
    t = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, 0.25])
    del t.dims[:]
    t.dims.extend([huge, huge])
    m.graph.initializer[1].CopyFrom(t)
    cases.append(Case("bad_dims/gemm.float_data_b_2^40x2^40", "bad_dims", m, _feeds("gemm"), must_mention=("b",)))
    # hostile shape tensors: ops that would allocate astronomically
    for op, label in (("ConstantOfShape", "cos"), ("Expand", "expand")):
        shape = numpy_helper.from_array(np.array([huge, huge], np.int64), "big_shape")
        if op == "ConstantOfShape":
            nodes = [helper.make_node("ConstantOfShape", ["big_shape"], ["big"], name="cos"),
                     helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0, name="rs")]
            inputs = [_vi("x", shape=[2])]
        else:
            nodes = [helper.make_node("Expand", ["x", "big_shape"], ["big"], name="expand"),
                     helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0, name="rs")]
            inputs = [_vi("x", shape=[1])]
        m = _model(nodes, inputs, [_vi("y", shape=[])], [shape])
        feeds = {"x": np.ones([2] if op == "ConstantOfShape" else [1], np.float32)}
        cases.append(Case(f"bad_dims/{label}_2^40x2^40", "bad_dims", m, feeds, isolate=True))
    # Reshape to a huge target shape
    m = SEEDS["einsum"]()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([huge, huge], np.int64), "shape"))
    cases.append(Case("bad_dims/einsum.reshape_to_2^40x2^40", "bad_dims", m, _feeds("einsum")))
    # Range with a count of 2^62 elements
    nodes = [helper.make_node("Range", ["start", "limit", "delta"], ["r"], name="range"),
             helper.make_node("ReduceSum", ["r"], ["y"], keepdims=0, name="rs")]
    m = _model(nodes, [_vi("x", shape=[1])], [_vi("y", TensorProto.INT64, [])],
               [numpy_helper.from_array(np.array(0, np.int64), "start"),
                numpy_helper.from_array(np.array(2 ** 62, np.int64), "limit"),
                numpy_helper.from_array(np.array(1, np.int64), "delta")])
    cases.append(Case("bad_dims/range_2^62", "bad_dims", m, {"x": np.ones(1, np.float32)}, isolate=True))


def _with_dims(t: onnx.TensorProto, dims) -> onnx.TensorProto:
    del t.dims[:]
    t.dims.extend(dims)
    return t


def _init_sizes(cases: list[Case]) -> None:
    def raw(name, arr):
        return numpy_helper.from_array(arr, name)

    for label, nbytes in (("short", 4 * 12 - 4), ("long", 4 * 12 + 8), ("odd", 4 * 12 - 1), ("empty_raw", 0)):
        m = SEEDS["mlp"]()
        t = raw("w1", np.ones((4, 3), np.float32))
        t.raw_data = t.raw_data[:nbytes] if nbytes <= len(t.raw_data) else t.raw_data + b"\0" * (nbytes - 48)
        if nbytes == 0:
            t.ClearField("raw_data")
        m.graph.initializer[0].CopyFrom(t)
        cases.append(Case(f"initializer_size/mlp.w1_raw_{label}", "initializer_size", m, _feeds("mlp"),
                          must_mention=("w1",)))
    m = SEEDS["mlp"]()
    m.graph.initializer[1].CopyFrom(_with_dims(helper.make_tensor("b1", TensorProto.FLOAT, [2], [1.0, 2.0]), [3]))
    cases.append(Case("initializer_size/mlp.b1_float_data_short", "initializer_size", m, _feeds("mlp"),
                      must_mention=("b1",)))
    m = SEEDS["mlp"]()
    longer = helper.make_tensor("b1", TensorProto.FLOAT, [5], [1.0, 2.0, 3.0, 4.0, 5.0])
    m.graph.initializer[1].CopyFrom(_with_dims(longer, [3]))
    cases.append(Case("initializer_size/mlp.b1_float_data_long", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["gemm"]()
    t = raw("axes", np.array([1], np.int64))
    t.raw_data = t.raw_data[:5]
    m.graph.initializer[2].CopyFrom(t)
    cases.append(Case("initializer_size/gemm.axes_int64_raw_5_bytes", "initializer_size", m, _feeds("gemm")))
    m = SEEDS["einsum"]()
    m.graph.initializer[1].CopyFrom(_with_dims(helper.make_tensor("shape", TensorProto.INT64, [1], [4]), [2]))
    cases.append(Case("initializer_size/einsum.shape_int64_data_short", "initializer_size", m, _feeds("einsum")))
    m = SEEDS["mlp"]()
    t = m.graph.initializer[0]
    t.float_data.extend([1.0] * 12)  # both raw_data and float_data set
    cases.append(Case("initializer_size/mlp.w1_raw_and_float_data", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.initializer[0].data_type = 12345  # an element type code that does not exist
    cases.append(Case("initializer_size/mlp.w1_dtype_12345", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.initializer[0].data_type = TensorProto.UNDEFINED
    cases.append(Case("initializer_size/mlp.w1_dtype_undefined", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.initializer[0].data_type = TensorProto.STRING  # raw bytes reinterpreted as strings
    cases.append(Case("initializer_size/mlp.w1_dtype_string", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.initializer[0].data_type = TensorProto.DOUBLE  # 48 raw bytes cannot be 12 doubles
    cases.append(Case("initializer_size/mlp.w1_dtype_double", "initializer_size", m, _feeds("mlp")))
    # a sparse initializer with indices outside its dense shape
    m = SEEDS["mlp"]()
    del m.graph.initializer[1]
    sp = helper.make_sparse_tensor(helper.make_tensor("b1", TensorProto.FLOAT, [2], [1.0, 2.0]),
                                   helper.make_tensor("b1_idx", TensorProto.INT64, [2], [0, 99]), [3])
    m.graph.sparse_initializer.append(sp)
    cases.append(Case("initializer_size/mlp.sparse_b1_index_99", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    del m.graph.initializer[1]
    sp = helper.make_sparse_tensor(helper.make_tensor("b1", TensorProto.FLOAT, [2], [1.0, 2.0]),
                                   helper.make_tensor("b1_idx", TensorProto.INT64, [2], [0, -5]), [3])
    m.graph.sparse_initializer.append(sp)
    cases.append(Case("initializer_size/mlp.sparse_b1_index_-5", "initializer_size", m, _feeds("mlp")))
    # a Constant node whose tensor is short
    m = SEEDS["mlp"]()
    del m.graph.initializer[1]
    t = raw("b1c", np.ones(3, np.float32))
    t.raw_data = t.raw_data[:7]
    m.graph.node.insert(0, helper.make_node("Constant", [], ["b1"], value=t, name="const_b1"))
    cases.append(Case("initializer_size/mlp.constant_b1_raw_7_bytes", "initializer_size", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    del m.graph.initializer[1]
    m.graph.node.insert(0, helper.make_node("Constant", [], ["b1"], name="const_b1"))  # no value at all
    cases.append(Case("initializer_size/mlp.constant_b1_no_value", "initializer_size", m, _feeds("mlp")))


def _unknown_ops(cases: list[Case]) -> None:
    # several unknown ops at once, in a custom domain and a subgraph: all must be listed
    def three_unknown(default_domain_op: bool) -> onnx.ModelProto:
        first = ("", "FancyNorm") if default_domain_op else ("com.acme", "FancyNorm")
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
            helper.make_node(first[1], ["h0"], ["h1"], domain=first[0], name="n1"),
            helper.make_node("WarpDrive", ["h1"], ["h2"], domain="com.acme", name="n2"),
            helper.make_node("Teleport", ["h2"], ["h3"], domain="com.acme", name="n3"),
            helper.make_node(first[1], ["h3"], ["probs"], domain=first[0], name="n4"),
        ]
        return _model(nodes, [_vi("x", shape=["N", 4])], [_vi("probs", shape=["N", 3])], [_w("w1", (4, 3), 1)],
                      opsets=(("", OPSET), ("com.acme", 3)))

    cases.append(Case("unknown_op/three_unknown_ops_custom_domain", "unknown_op", three_unknown(False),
                      _feeds("mlp"), expect="UnsupportedOpError", unsupported=("FancyNorm", "WarpDrive", "Teleport"),
                      must_mention=("com.acme",)))
    # the same with an op name ONNX does not know in the default domain: still all of them at once
    cases.append(Case("unknown_op/three_unknown_ops_two_domains", "unknown_op", three_unknown(True), _feeds("mlp"),
                      expect="UnsupportedOpError", unsupported=("FancyNorm", "WarpDrive", "Teleport")))

    def in_subgraphs(domain: str) -> onnx.ModelProto:
        then_g = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["t"], domain=domain, name="frob")],
                                   "then", [], [_vi("t", shape=[2, 3])])
        else_g = helper.make_graph([helper.make_node("Defrobnicate", ["x"], ["e"], domain=domain, name="defrob")],
                                   "else", [], [_vi("e", shape=[2, 3])])
        opsets = (("", OPSET),) + (((domain, 1),) if domain else ())
        return _model([helper.make_node("Quux", ["x"], ["q"], domain=domain, name="quux"),
                       helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")],
                      [_vi("c", TensorProto.BOOL, []), _vi("x", shape=[2, 3])],
                      [_vi("y", shape=[2, 3]), _vi("q", shape=[2, 3])], opsets=opsets)

    cases.append(Case("unknown_op/unknown_ops_inside_subgraphs", "unknown_op", in_subgraphs("com.acme"),
                      _feeds("if"), expect="UnsupportedOpError", unsupported=("Quux", "Frobnicate", "Defrobnicate")))
    cases.append(Case("unknown_op/unknown_default_domain_ops_inside_subgraphs", "unknown_op", in_subgraphs(""),
                      _feeds("if"), expect="UnsupportedOpError", unsupported=("Quux", "Frobnicate", "Defrobnicate")))
    for op in ("NotARealOp", "matmul", "MATMUL", "Relu ", "", "Conv2D", "Dense"):
        m = SEEDS["mlp"]()
        m.graph.node[2].op_type = op
        cases.append(Case(f"unknown_op/mlp.relu_as_{op.strip() or 'empty'}{'_sp' if op.endswith(' ') else ''}",
                          "unknown_op", m, _feeds("mlp"), must_mention=(op,) if op.isalnum() else ()))
    # a node in a domain the model never imports
    m = SEEDS["mlp"]()
    m.graph.node[2].domain = "com.evil"
    cases.append(Case("unknown_op/mlp.relu_in_unimported_domain", "unknown_op", m, _feeds("mlp"),
                      must_mention=("com.evil",)))
    # an imported custom domain holding a standard-looking name
    m = SEEDS["mlp"]()
    m.graph.node[2].domain = "com.microsoft"
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    cases.append(Case("unknown_op/mlp.relu_in_com_microsoft", "unknown_op", m, _feeds("mlp"),
                      expect="UnsupportedOpError", unsupported=("Relu",)))
    # opset versions that do not exist
    for version in (0, 10_000, -3):
        m = SEEDS["mlp"]()
        m.opset_import[0].version = version
        cases.append(Case(f"unknown_op/mlp.opset_{version}", "unknown_op", m, _feeds("mlp")))
    # an op that exists, at an opset before it was introduced (Einsum: opset 12)
    m = SEEDS["einsum"]()
    m.opset_import[0].version = 9
    cases.append(Case("unknown_op/einsum.at_opset_9", "unknown_op", m, _feeds("einsum")))
    # a model local function whose body uses an unknown op
    fn = helper.make_function("com.local", "MyFn", ["a"], ["b"],
                              [helper.make_node("Zorp", ["a"], ["b"], name="zorp")],
                              [helper.make_opsetid("", OPSET)])
    m = _model([helper.make_node("MyFn", ["x"], ["y"], domain="com.local", name="call")],
               [_vi("x", shape=[2, 3])], [_vi("y", shape=[2, 3])], opsets=(("", OPSET), ("com.local", 1)))
    m.functions.append(fn)
    cases.append(Case("unknown_op/local_function_calls_unknown_op", "unknown_op", m, _feeds("einsum")))


def _deep(cases: list[Case]) -> None:
    for levels in (40, 200, 5000):
        cases.append(Case(f"deep_subgraph/if_bytes_{levels}", "deep_subgraph",
                          (lambda _tmp, n=levels: deep_if_bytes(n)), {"c": np.array(True)}, isolate=True))
    for levels in (33, 40, 200, 5000):
        cases.append(Case(f"deep_subgraph/if_proto_{levels}", "deep_subgraph",
                          (lambda _tmp, n=levels: deep_if_proto(n)), {"c": np.array(True)}, isolate=True,
                          must_mention=("nest",)))

    def as_file(tmp, n=5000):
        path = os.path.join(tmp, "deep.onnx")
        with open(path, "wb") as f:
            f.write(deep_if_bytes(n))
        return path

    cases.append(Case("deep_subgraph/if_file_5000", "deep_subgraph", as_file, {"c": np.array(True)}, isolate=True))


def _external(cases: list[Case]) -> None:
    data = np.arange(12, dtype=np.float32)

    def model_with(location, offset="0", length=str(data.nbytes), dims=(4, 3)):
        w = numpy_helper.from_array(data.reshape(4, 3), "w")
        w.ClearField("raw_data")
        del w.dims[:]
        w.dims.extend(dims)
        w.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", offset), ("length", length)):
            if v is not None:
                e = w.external_data.add()
                e.key, e.value = k, v
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "ext",
                                  [_vi("x", shape=[2, 4])], [_vi("y", shape=[2, 3])], [w])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    feeds = {"x": np.ones((2, 4), np.float32)}

    def writer(location, *, payload=data.tobytes(), payload_name="weights.bin", sub="m", link=None, **kw):
        def make(tmp):
            root = os.path.join(tmp, sub)
            os.makedirs(root, exist_ok=True)
            with open(os.path.join(tmp, "secret.bin"), "wb") as f:   # outside the model directory
                f.write(data.tobytes())
            if payload_name is not None:
                with open(os.path.join(root, payload_name), "wb") as f:
                    f.write(payload)
            if link is not None:
                os.symlink(link(tmp), os.path.join(root, "link.bin"))
            loc = location(tmp) if callable(location) else location
            path = os.path.join(root, "model.onnx")
            onnx.save(model_with(loc, **kw), path)
            return path
        return make

    variants = [
        ("dotdot", writer("../secret.bin"), ("../secret.bin",)),
        ("dotdot_nested", writer("sub/../../secret.bin"), ()),
        ("dotdot_backslash", writer("..\\secret.bin"), ()),
        ("absolute", writer(lambda tmp: os.path.join(tmp, "secret.bin")), ()),
        ("etc_passwd", writer("/etc/passwd"), ("/etc/passwd",)),
        ("missing_file", writer("nope.bin"), ("nope.bin",)),
        ("empty_location", writer(""), ()),
        ("drive_letter", writer("C:secret.bin"), ()),
        ("symlink_out", writer("link.bin", link=lambda tmp: os.path.join(tmp, "secret.bin")), ()),
        ("offset_past_end", writer("weights.bin", offset="4096"), ()),
        ("length_past_end", writer("weights.bin", length="4096"), ()),
        ("length_short", writer("weights.bin", length="40"), ()),
        ("negative_offset", writer("weights.bin", offset="-8"), ()),
        ("offset_not_a_number", writer("weights.bin", offset="zero"), ()),
        ("file_too_short", writer("weights.bin", payload=data.tobytes()[:20], length=None), ()),
        ("huge_dims", writer("weights.bin", dims=(2 ** 40, 2 ** 40), length=None), ()),
        ("location_is_directory", writer(".", payload_name=None), ()),
    ]
    for label, make, mention in variants:
        cases.append(Case(f"external_data/{label}", "external_data", make, feeds, expect=None,
                          must_mention=mention))
    # external data but handed over as bytes / as a ModelProto: there is no directory to read it from
    cases.append(Case("external_data/from_bytes", "external_data", model_with("weights.bin").SerializeToString(),
                      feeds, must_mention=("weights.bin",)))
    cases.append(Case("external_data/from_proto", "external_data", model_with("weights.bin"), feeds))


_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"


def _not_onnx(cases: list[Case], rng: random.Random) -> None:
    blobs = {
        "empty_bytes": b"",
        "text": b"this is not a model, it is a text file\n",
        "png_header": _PNG,
        "jpeg_header": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
        "gzip_header": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(20),
        "zip_header": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(20),
        "json": b'{"graph": {"node": []}, "opset_import": [{"version": 17}]}',
        "pytorch_pickle": b"\x80\x02}q\x00(X\x05\x00\x00\x00state",
        "random_64": bytes(rng.randrange(256) for _ in range(64)),
        "random_4k": bytes(rng.randrange(256) for _ in range(4096)),
        "zeros_1k": bytes(1024),
        "ff_1k": b"\xff" * 1024,
        "onnx_text_format": b'ir_version: 8\ngraph { name: "g" }\nopset_import { version: 17 }\n',
        "varint_overflow": b"\x08" + b"\xff" * 11,
        "huge_length_prefix": b"\x3a" + b"\xff\xff\xff\xff\x0f" + b"\x0a\x00",
    }
    for label, blob in blobs.items():
        cases.append(Case(f"not_onnx/bytes_{label}", "not_onnx", blob, expect="ModelLoadError"))

    def file_of(blob, name="model.onnx"):
        def make(tmp):
            path = os.path.join(tmp, name)
            with open(path, "wb") as f:
                f.write(blob)
            return path
        return make

    for label in ("empty_bytes", "text", "png_header", "random_4k"):
        cases.append(Case(f"not_onnx/file_{label}", "not_onnx", file_of(blobs[label]), expect="ModelLoadError"))
    cases.append(Case("not_onnx/missing_path", "not_onnx", lambda tmp: os.path.join(tmp, "absent.onnx"),
                      expect="ModelLoadError", must_mention=("absent.onnx",)))
    cases.append(Case("not_onnx/directory_path", "not_onnx", lambda tmp: tmp, expect="ModelLoadError"))
    cases.append(Case("not_onnx/pathlib_missing", "not_onnx",
                      lambda tmp: __import__("pathlib").Path(tmp) / "nope.onnx", expect="ModelLoadError"))
    cases.append(Case("not_onnx/zoo_unknown_name", "not_onnx", lambda tmp: "zoo:definitely_not_a_model"))
    for label, obj in (("int", 42), ("none", None), ("list", [1, 2, 3]), ("dict", {"graph": None}),
                       ("ndarray", np.zeros(3)), ("graphproto", helper.make_graph([], "g", [], []))):
        cases.append(Case(f"not_onnx/object_{label}", "not_onnx", (lambda _tmp, o=obj: o)))


def _no_graph(cases: list[Case]) -> None:
    m = onnx.ModelProto()
    m.ir_version = 8
    m.opset_import.append(helper.make_opsetid("", OPSET))
    cases.append(Case("no_graph_or_opset/proto_without_graph", "no_graph_or_opset", m))
    cases.append(Case("no_graph_or_opset/bytes_without_graph", "no_graph_or_opset", m.SerializeToString(),
                      expect="ModelLoadError"))
    cases.append(Case("no_graph_or_opset/empty_modelproto", "no_graph_or_opset", onnx.ModelProto()))
    m = SEEDS["mlp"]()
    del m.opset_import[:]
    cases.append(Case("no_graph_or_opset/mlp_no_opset_import", "no_graph_or_opset", m, _feeds("mlp"),
                      must_mention=("opset",)))
    cases.append(Case("no_graph_or_opset/mlp_no_opset_import_bytes", "no_graph_or_opset", m.SerializeToString(),
                      _feeds("mlp"), must_mention=("opset",)))
    m = SEEDS["mlp"]()
    m.ir_version = 0
    cases.append(Case("no_graph_or_opset/mlp_ir_version_0", "no_graph_or_opset", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.ir_version = 10_000
    cases.append(Case("no_graph_or_opset/mlp_ir_version_10000", "no_graph_or_opset", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.opset_import[0].domain = "com.other"  # the default domain is not imported at all
    cases.append(Case("no_graph_or_opset/mlp_only_custom_opset", "no_graph_or_opset", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.ClearField("node")
    cases.append(Case("no_graph_or_opset/mlp_no_nodes", "no_graph_or_opset", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.opset_import.append(helper.make_opsetid("", 13))  # the default domain imported twice, differently
    cases.append(Case("no_graph_or_opset/mlp_default_opset_twice", "no_graph_or_opset", m, _feeds("mlp")))


def _invalid_utf8(cases: list[Case]) -> None:
    """ONNX strings must be UTF-8; protobuf (proto2) does not enforce it, so graphc must."""
    data = seed_mlp().SerializeToString()
    cases.append(Case("invalid_utf8/mlp.weight_name", "invalid_utf8", data.replace(b"w1", b"\xc3\x28"),
                      _feeds("mlp")))
    cases.append(Case("invalid_utf8/mlp.value_name", "invalid_utf8", data.replace(b"logits", b"log\xff\xfes"),
                      _feeds("mlp")))


def _bad_subgraphs(cases: list[Case]) -> None:
    m = SEEDS["if"]()
    node = m.graph.node[0]
    keep = [a for a in node.attribute if a.name != "else_branch"]
    del node.attribute[:]
    node.attribute.extend(keep)
    cases.append(Case("bad_subgraph/if_missing_else", "bad_subgraph", m, _feeds("if"), must_mention=("else",)))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[1].g.output.append(_vi("x2"))  # else has two outputs, then one
    cases.append(Case("bad_subgraph/if_branch_output_counts_differ", "bad_subgraph", m, _feeds("if")))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[1].g.node[0].op_type = "Equal"  # else yields bool, then float
    m.graph.node[0].attribute[1].g.output[0].type.tensor_type.elem_type = TensorProto.BOOL
    cases.append(Case("bad_subgraph/if_branch_dtypes_differ", "bad_subgraph", m, _feeds("if")))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[0].g.input.append(_vi("unexpected"))  # If branches take no inputs
    cases.append(Case("bad_subgraph/if_branch_with_inputs", "bad_subgraph", m, _feeds("if")))
    m = SEEDS["loop"]()
    body = m.graph.node[0].attribute[0].g
    del body.input[0]  # the body lost its iteration-number input
    cases.append(Case("bad_subgraph/loop_body_missing_iter_input", "bad_subgraph", m, _feeds("loop")))
    m = SEEDS["loop"]()
    body = m.graph.node[0].attribute[0].g
    del body.output[0]  # the body no longer returns the condition
    cases.append(Case("bad_subgraph/loop_body_missing_cond_output", "bad_subgraph", m, _feeds("loop")))
    m = SEEDS["loop"]()
    m.graph.node[0].input.append("acc0")  # two loop-carried inputs, one carried output
    cases.append(Case("bad_subgraph/loop_carried_count_mismatch", "bad_subgraph", m, _feeds("loop")))
    m = SEEDS["loop"]()
    body = m.graph.node[0].attribute[0].g
    body.output[1].type.tensor_type.elem_type = TensorProto.INT64
    body.node[1].op_type = "Cast"
    del body.node[1].input[1:]
    body.node[1].attribute.append(helper.make_attribute("to", TensorProto.INT64))
    cases.append(Case("bad_subgraph/loop_carried_dtype_changes", "bad_subgraph", m, _feeds("loop")))
    m = SEEDS["if"]()
    m.graph.node[0].attribute[0].g.name = ""
    m.graph.node[0].attribute[0].g.ClearField("output")
    cases.append(Case("bad_subgraph/if_then_no_outputs", "bad_subgraph", m, _feeds("if")))


def _type_mismatch(cases: list[Case]) -> None:
    m = SEEDS["mlp"]()
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((4, 3), np.int64), "w1"))
    cases.append(Case("type_mismatch/mlp.matmul_float_x_int64", "type_mismatch", m, _feeds("mlp"),
                      must_mention=("fc1",)))
    m = SEEDS["mlp"]()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones(3, np.float64), "b1"))
    cases.append(Case("type_mismatch/mlp.add_float_double", "type_mismatch", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((5, 3), np.float32), "w1"))
    cases.append(Case("type_mismatch/mlp.matmul_inner_4_vs_5", "type_mismatch", m, _feeds("mlp"),
                      must_mention=("fc1",)))
    m = SEEDS["mlp"]()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones(4, np.float32), "b1"))
    cases.append(Case("type_mismatch/mlp.add_not_broadcastable", "type_mismatch", m, _feeds("mlp"),
                      must_mention=("bias1",)))
    m = SEEDS["gemm"]()
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((2, 2, 3), np.float32), "w"))
    cases.append(Case("type_mismatch/gemm.rank3_weight", "type_mismatch", m, _feeds("gemm")))
    m = SEEDS["gemm"]()
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.array([1.0], np.float32), "axes"))
    cases.append(Case("type_mismatch/gemm.axes_float", "type_mismatch", m, _feeds("gemm")))
    m = SEEDS["einsum"]()
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.array([4.0, 2.0], np.float32), "shape"))
    cases.append(Case("type_mismatch/einsum.reshape_shape_float", "type_mismatch", m, _feeds("einsum")))
    m = SEEDS["if"]()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT  # a float condition
    cases.append(Case("type_mismatch/if.float_condition", "type_mismatch", m,
                      {"c": np.array(1.0, np.float32), "x": _feeds("if")["x"]}))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.tensor_type.elem_type = 12345
    cases.append(Case("type_mismatch/mlp.input_elem_type_12345", "type_mismatch", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    cases.append(Case("type_mismatch/mlp.input_string", "type_mismatch", m,
                      {"x": np.array([["a"] * 4] * 2, dtype=object)}))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.CopyFrom(helper.make_sequence_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [2, 4])))
    cases.append(Case("type_mismatch/mlp.input_is_sequence", "type_mismatch", m,
                      {"x": [np.ones((2, 4), np.float32)]}))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.CopyFrom(onnx.TypeProto())  # no type at all
    m.graph.input[0].type.map_type.key_type = TensorProto.INT64
    cases.append(Case("type_mismatch/mlp.input_is_map", "type_mismatch", m, _feeds("mlp")))
    m = SEEDS["mlp"]()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5  # declared [N,5] but MatMul needs [.,4]
    cases.append(Case("type_mismatch/mlp.input_declared_N_5", "type_mismatch", m,
                      {"x": np.ones((2, 5), np.float32)}))


def _runtime(cases: list[Case]) -> None:
    f = _feeds
    x = f("mlp")["x"]
    variants = [
        ("mlp", "wrong_dtype_float64", {"x": x.astype(np.float64)}, ("x", "float")),
        ("mlp", "wrong_dtype_int32", {"x": x.astype(np.int32)}, ("x",)),
        ("mlp", "wrong_inner_dim", {"x": np.ones((2, 5), np.float32)}, ("x",)),
        ("mlp", "wrong_rank_1", {"x": np.ones(4, np.float32)}, ("x", "rank")),
        ("mlp", "wrong_rank_3", {"x": np.ones((1, 2, 4), np.float32)}, ("x",)),
        ("mlp", "missing_feed", {}, ("x",)),
        ("mlp", "extra_feed", {"x": x, "bogus": x}, ("bogus",)),
        ("mlp", "misnamed_feed", {"X": x}, ("X", "x")),
        ("mlp", "feed_is_string", {"x": "not an array"}, ("x",)),
        ("mlp", "feed_is_none", {"x": None}, ("x",)),
        ("mlp", "feed_is_object_array", {"x": np.array([[object()] * 4] * 2, dtype=object)}, ("x",)),
        ("mlp", "feed_ragged_list", {"x": [[1.0, 2.0], [3.0]]}, ("x",)),
        ("mlp", "feed_is_dict", {"x": {"a": 1}}, ("x",)),
        ("mlp", "feeds_not_a_dict", [x], ()),
        ("mlp", "feeds_is_none", None, ()),
        ("gemm", "wrong_shape_3x2", {"x": np.ones((3, 2), np.float32)}, ("x",)),
        ("gemm", "empty_batch", {"x": np.ones((0, 3), np.float32)}, ("x",)),
        ("if", "cond_float", {"c": np.array(1.0), "x": f("if")["x"]}, ("c",)),
        ("if", "cond_vector", {"c": np.array([True, False]), "x": f("if")["x"]}, ("c",)),
        ("loop", "trip_count_int32", {**f("loop"), "M": np.array(3, np.int32)}, ("M",)),
        ("loop", "acc0_wrong_len", {**f("loop"), "acc0": np.ones(3, np.float32)}, ("acc0",)),
        ("einsum", "x_fortran_transposed", {"x": np.asfortranarray(np.ones((3, 2), np.float32))}, ("x",)),
    ]
    for seed, label, feeds, mention in variants:
        cases.append(Case(f"runtime_feed/{seed}.{label}", "runtime_feed", SEEDS[seed](), feeds,
                          expect="InputError", must_mention=mention))
    # symbolic dims must agree across inputs
    nodes = [helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    m = _model(nodes, [_vi("a", shape=["N", 3]), _vi("b", shape=["N", 3])], [_vi("y", shape=["N", 3])])
    cases.append(Case("runtime_feed/symbolic_N_disagrees", "runtime_feed", m,
                      {"a": np.ones((2, 3), np.float32), "b": np.ones((4, 3), np.float32)},
                      expect="InputError", must_mention=("N",)))


def _runtime_data(cases: list[Case]) -> None:
    """Well-formed models whose run-time data is hostile: ExecutionError (or InputError), never a crash."""
    huge = 2 ** 40
    I64 = TensorProto.INT64
    # Expand / Reshape / ConstantOfShape / Range / Tile driven by a shape fed at run time
    specs = [
        ("expand_fed_huge_shape", [helper.make_node("Expand", ["x", "s"], ["y"], name="expand")],
         [_vi("x", shape=[1]), _vi("s", I64, [2])], {"x": np.ones(1, np.float32), "s": np.array([huge, huge])}),
        ("expand_fed_negative_shape", [helper.make_node("Expand", ["x", "s"], ["y"], name="expand")],
         [_vi("x", shape=[1]), _vi("s", I64, [2])], {"x": np.ones(1, np.float32), "s": np.array([-3, 2])}),
        ("reshape_fed_bad_shape", [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
         [_vi("x", shape=[2, 3]), _vi("s", I64, [2])], {"x": np.ones((2, 3), np.float32), "s": np.array([4, 4])}),
        ("reshape_fed_huge_shape", [helper.make_node("Reshape", ["x", "s"], ["y"], name="reshape")],
         [_vi("x", shape=[2, 3]), _vi("s", I64, [2])],
         {"x": np.ones((2, 3), np.float32), "s": np.array([huge, huge])}),
        ("constantofshape_fed_negative", [helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
         [_vi("s", I64, [2])], {"s": np.array([-1, 4])}),
        ("constantofshape_fed_huge", [helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
         [_vi("s", I64, [2])], {"s": np.array([huge, huge])}),
        ("tile_fed_huge_repeats", [helper.make_node("Tile", ["x", "r"], ["y"], name="tile")],
         [_vi("x", shape=[2]), _vi("r", I64, [1])], {"x": np.ones(2, np.float32), "r": np.array([2 ** 62])}),
        ("range_fed_huge", [helper.make_node("Range", ["a", "b", "d"], ["y"], name="range")],
         [_vi("a", I64, []), _vi("b", I64, []), _vi("d", I64, [])],
         {"a": np.array(0), "b": np.array(2 ** 62), "d": np.array(1)}),
        ("constantofshape_fed_8GB_isolated", [helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos")],
         [_vi("s", I64, [1])], {"s": np.array([2 ** 31])}),
        ("range_fed_zero_delta", [helper.make_node("Range", ["a", "b", "d"], ["y"], name="range")],
         [_vi("a", I64, []), _vi("b", I64, []), _vi("d", I64, [])],
         {"a": np.array(0), "b": np.array(10), "d": np.array(0)}),
        ("if_cond_empty", [helper.make_node("If", ["c"], ["y"], name="branch", then_branch=_branch("then", "Add", "t"),
                                            else_branch=_branch("else", "Mul", "e"))],
         [_vi("c", TensorProto.BOOL, ["K"]), _vi("x", shape=[2, 3])],
         {"c": np.zeros(0, bool), "x": np.ones((2, 3), np.float32)}),
        ("loop_cond_empty", [helper.make_node("Loop", ["M", "cond", "acc0"], ["acc"], body=_loop_body(), name="loop")],
         [_vi("M", I64, []), _vi("cond", TensorProto.BOOL, ["K"]), _vi("acc0", shape=[2]), _vi("x", shape=[2])],
         {"M": np.array(2), "cond": np.zeros(0, bool), "acc0": np.ones(2, np.float32), "x": np.ones(2, np.float32)}),
    ]
    for label, nodes, inputs, feeds in specs:
        elem = TensorProto.INT64 if label.startswith("range") else TensorProto.FLOAT
        rank = {"tile": 1, "range": 1, "if_c": 2, "loop": 1}.get(label[:4].rstrip("_"), 2)
        out = _vi(nodes[-1].output[0], elem, [f"d{i}" for i in range(rank)])
        m = _model(nodes, inputs, [out])
        isolate = "huge" in label or "isolated" in label  # allocations that must fail under a memory cap
        cases.append(Case(f"runtime_data/{label}", "runtime_data", m, feeds, isolate=isolate))


# ----------------------------------------------------------------------------------------------- the corpus

def generate(seed: int = SEED) -> list[Case]:
    rng = random.Random(seed)
    cases: list[Case] = []
    _truncated(cases)
    _flips(cases, rng)
    _wrong_attr_types(cases)
    _bad_attr_values(cases)
    _dangling(cases)
    _duplicates(cases)
    _cycles(cases, rng)
    _dims(cases)
    _init_sizes(cases)
    _unknown_ops(cases)
    _deep(cases)
    _external(cases)
    _not_onnx(cases, rng)
    _no_graph(cases)
    _invalid_utf8(cases)
    _bad_subgraphs(cases)
    _type_mismatch(cases)
    _runtime(cases)
    _runtime_data(cases)
    ids = [c.case_id for c in cases]
    dupes = {i for i in ids if ids.count(i) > 1}
    assert not dupes, f"duplicate case ids: {sorted(dupes)}"
    return cases


_CACHE: dict[int, dict[str, Case]] = {}


def get_case(case_id: str, seed: int = SEED) -> Case:
    if seed not in _CACHE:
        _CACHE[seed] = {c.case_id: c for c in generate(seed)}
    return _CACHE[seed][case_id]


def counts(cases: list[Case]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cases:
        out[c.kind] = out.get(c.kind, 0) + 1
    return out


def zoo_cases(seed: int = SEED, name: str = "squeezenet") -> list[Case]:
    """Extra truncations and flips of a real zoo model (optional: only where the zoo model compiles)."""
    from graphc import zoo

    with open(zoo.path(name), "rb") as f:
        data = f.read()
    model = onnx.load_from_string(data)
    weights = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in weights:
            shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = np.zeros(shape, np.float32)
    rng = random.Random(seed + 1)
    cases = []
    n = len(data)
    for off in sorted({1, 10, 100, n // 7, n // 3, n // 2, n - 100, n - 1}):
        cases.append(Case(f"truncated/zoo_{name}@{off}", "truncated", data[:off], feeds))
    for i in range(12):
        b = bytearray(data)
        for _ in range(1 + i % 3):
            b[rng.randrange(n)] ^= rng.randrange(1, 256)
        cases.append(Case(f"byte_flip/zoo_{name}#{i}", "byte_flip", bytes(b), feeds))
    return cases


__all__ = ["Case", "SEEDS", "generate", "get_case", "counts", "seed_feeds", "deep_if_bytes", "deep_if_proto",
           "MAY_SUCCEED_KINDS", "zoo_cases"]
