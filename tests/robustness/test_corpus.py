"""Every malformed, mutated or hostile model in the corpus ends in a GraphcError — never another exception,
a hang, or a crash of the interpreter.

Cases run in this process under a per-case alarm (``harness.CASE_TIME_LIMIT``); the ones marked ``isolate``
(recursion-deep subgraphs, astronomically large shapes) run in a child process with a memory cap, so a stack
overflow or an allocation storm there is reported as a failure of that case instead of taking pytest down.
"""

from __future__ import annotations

import collections
import functools

import numpy as np
import pytest

import graphc
from graphc.errors import InputError

from .corpus import MAY_SUCCEED_KINDS, SEEDS, counts, generate, seed_feeds, zoo_cases
from .harness import Outcome, run_case, run_isolated

CASES = generate()
_BY_ID = {c.case_id: c for c in CASES}
_OUTCOMES: dict[str, Outcome] = {}

#: Cases that fail today because of a product-code problem (see the robustness report); remove an entry once
#: its fix lands (the case then shows as XPASS).
KNOWN_PRODUCT_ISSUES: dict[str, str] = {}


def _outcome(case) -> Outcome:
    if case.case_id not in _OUTCOMES:
        if case.isolate:
            _OUTCOMES[case.case_id] = run_isolated(case.case_id)
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="graphc-robust-") as tmp:
                _OUTCOMES[case.case_id] = run_case(case, tmp)
    return _OUTCOMES[case.case_id]


def _check(case, outcome: Outcome) -> None:
    where = f"[{case.case_id}]"
    if outcome.status == "foreign":
        pytest.fail(f"{where} {outcome.stage}: {outcome.exc_type} escaped instead of a GraphcError: "
                    f"{outcome.message}\n{outcome.detail}", pytrace=False)
    if outcome.status == "timeout":
        pytest.fail(f"{where} hung at {outcome.stage}: {outcome.message}\n{outcome.detail}", pytrace=False)
    if outcome.status == "crash":
        pytest.fail(f"{where} crashed the interpreter: {outcome.message}\n{outcome.detail}", pytrace=False)
    if outcome.status == "success":
        if case.may_succeed:
            return  # a flip inside a weight or a doc string: counted in test_flip_successes_are_a_minority
        pytest.fail(f"{where} a malformed model compiled and ran without any error", pytrace=False)
    assert outcome.status == "error"
    if case.expect is not None:
        assert case.expect in outcome.exc_mro, \
            f"{where} expected {case.expect}, got {outcome.exc_type}: {outcome.message}"
    for text in case.must_mention:
        assert text in outcome.message, \
            f"{where} the message does not mention {text!r}, so the user cannot find the culprit: {outcome.message}"
    if case.unsupported:
        assert outcome.exc_type == "UnsupportedOpError", f"{where} got {outcome.exc_type}: {outcome.message}"
        listed = {op for _, op, _ in outcome.ops}
        missing = [op for op in case.unsupported if op not in listed or op not in outcome.message]
        assert not missing, f"{where} UnsupportedOpError does not list {missing}: {outcome.message}"


def _params(cases):
    out = []
    for c in cases:
        marks = []
        if c.case_id in KNOWN_PRODUCT_ISSUES:
            marks.append(pytest.mark.xfail(reason=KNOWN_PRODUCT_ISSUES[c.case_id], strict=False))
        out.append(pytest.param(c, id=c.case_id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params(CASES))
def test_case_ends_in_graphc_error(case):
    _check(case, _outcome(case))


def test_corpus_is_large_deterministic_and_covers_every_category():
    assert len(CASES) >= 300
    kinds = counts(CASES)
    for kind in ("truncated", "byte_flip", "multi_byte_flip", "wrong_attr_type", "bad_attr_value", "dangling_input",
                 "duplicate_output", "cycle", "bad_dims", "initializer_size", "unknown_op", "deep_subgraph",
                 "external_data", "not_onnx", "no_graph_or_opset", "bad_subgraph", "type_mismatch", "runtime_feed",
                 "runtime_data", "invalid_utf8"):
        assert kinds.get(kind, 0) > 0, kind
    again = generate()
    assert [c.case_id for c in again] == [c.case_id for c in CASES]
    for a, b in zip(CASES, again):
        if isinstance(a.model, bytes):
            assert a.model == b.model, a.case_id
        elif hasattr(a.model, "SerializeToString"):
            assert a.model.SerializeToString() == b.model.SerializeToString(), a.case_id


def test_seed_models_are_valid():
    """The mutations start from models graphc accepts, so an error is the mutation's doing."""
    for name, make in SEEDS.items():
        model = graphc.compile(make(), target="reference")
        model.run(seed_feeds(name))


def test_flip_successes_are_a_minority():
    flips = [c for c in CASES if c.kind in MAY_SUCCEED_KINDS]
    outcomes = [_outcome(c) for c in flips]
    succeeded = [o.case_id for o in outcomes if o.status == "success"]
    assert len(succeeded) < len(flips) / 2, f"{len(succeeded)}/{len(flips)} flipped models were valid: {succeeded}"


def test_a_bad_feed_loses_nothing():
    """After InputErrors, the same compiled model still runs and gives the same answer."""
    model = graphc.compile(SEEDS["mlp"](), target="reference")
    feeds = seed_feeds("mlp")
    before = model.run(feeds)["probs"]
    bad = [{}, {"x": feeds["x"].astype(np.float64)}, {"x": np.ones((2, 5), np.float32)}, {"x": feeds["x"], "y": 1},
           {"x": "text"}]
    for b in bad:
        with pytest.raises(InputError):
            model.run(b)
    with pytest.raises(InputError):
        model()
    after = model.run(feeds)["probs"]
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(feeds["x"], seed_feeds("mlp")["x"])  # the caller's array was not touched


def test_unsupported_ops_are_all_listed_at_once():
    case = _BY_ID["unknown_op/three_unknown_ops_custom_domain"]
    with pytest.raises(graphc.errors.UnsupportedOpError) as info:
        graphc.compile(case.model, target="reference")
    text = str(info.value)
    for op in ("FancyNorm", "WarpDrive", "Teleport"):
        assert op in text
    assert [(d, t) for d, t, _ in info.value.ops] == [("com.acme", "FancyNorm"), ("com.acme", "Teleport"),
                                                      ("com.acme", "WarpDrive")]
    assert "3 unsupported" in text


#: representative kinds and the words their message must hold (the offending value, node, file or input)
ACTIONABLE = {
    "dangling_input/mlp.bias1<-b_missing": ("b_missing", "bias1"),
    "duplicate_output/mlp.relu_writes_h0": ("h0",),
    "initializer_size/mlp.w1_raw_short": ("w1",),
    "bad_dims/mlp.initializer_w1_neg": ("w1",),
    "external_data/dotdot": ("../secret.bin",),
    "external_data/missing_file": ("nope.bin",),
    "not_onnx/missing_path": ("absent.onnx",),
    "no_graph_or_opset/mlp_no_opset_import": ("opset",),
    "unknown_op/mlp.relu_in_unimported_domain": ("com.evil",),
    "runtime_feed/mlp.wrong_dtype_float64": ("'x'", "float32", "float64"),
    "runtime_feed/mlp.missing_feed": ("'x'",),
    "runtime_feed/mlp.extra_feed": ("bogus",),
    "type_mismatch/mlp.matmul_inner_4_vs_5": ("fc1",),
    "type_mismatch/mlp.add_not_broadcastable": ("bias1",),
    "cycle/mlp.relu_self_loop": ("h2", "relu1"),
}
MESSAGE_ISSUES: dict[str, str] = {}


@pytest.mark.parametrize("case_id", [pytest.param(
    k, id=k, marks=[pytest.mark.xfail(reason=MESSAGE_ISSUES[k], strict=False)] if k in MESSAGE_ISSUES else [])
    for k in ACTIONABLE])
def test_actionable_message(case_id):
    outcome = _outcome(_BY_ID[case_id])
    assert outcome.status == "error", (case_id, outcome)
    for word in ACTIONABLE[case_id]:
        assert word in outcome.message, f"[{case_id}] message lacks {word!r}: {outcome.message}"


def _zoo_params():
    try:
        return _params(zoo_cases())
    except Exception:  # noqa: BLE001 - the zoo model is optional for this suite
        return []


@functools.lru_cache(maxsize=1)
def _zoo_problem() -> str | None:
    """Why the unmutated zoo model cannot seed mutations (None when it compiles)."""
    try:
        from graphc import zoo

        graphc.compile(zoo.path("squeezenet"), target="reference")
    except graphc.GraphcError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("case", _zoo_params())
def test_zoo_mutation_ends_in_graphc_error(case):
    if _zoo_problem() is not None:
        pytest.skip(f"squeezenet does not compile yet: {_zoo_problem()}")
    _check(case, _outcome(case))


def test_summary_per_category(capsys):
    """Prints outcome counts per category (run with -s to see them)."""
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for case in CASES:
        table[case.kind][_outcome(case).status] += 1
    with capsys.disabled():
        print("\nrobustness corpus: category  cases  error  success  other")
        for kind, c in table.items():
            other = sum(v for k, v in c.items() if k not in ("error", "success"))
            print(f"  {kind:20} {sum(c.values()):5} {c['error']:6} {c['success']:8} {other:6}")
    total = sum(sum(c.values()) for c in table.values())
    assert total == len(CASES)


def test_harness_turns_a_hang_into_a_timeout(tmp_path):
    """The per-case alarm works: a Loop with 2^62 trips (a legal but endless model) is stopped, not waited for."""
    from onnx import TensorProto, helper, numpy_helper

    from .corpus import Case, _loop_body

    node = helper.make_node("Loop", ["M", "cond", "acc0"], ["acc"], body=_loop_body(), name="loop")
    graph = helper.make_graph(
        [node], "endless",
        [helper.make_tensor_value_info("acc0", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("acc", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(2 ** 62, np.int64), "M"), numpy_helper.from_array(np.array(True), "cond")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"acc0": np.zeros(2, np.float32), "x": np.ones(2, np.float32)}
    case = Case("harness/endless_loop", "harness", model, feeds)
    outcome = run_case(case, str(tmp_path), limit=1)
    assert outcome.status == "timeout", outcome
    assert outcome.seconds < 10
