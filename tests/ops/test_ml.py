"""TfIdfVectorizer and TreeEnsemble: cases the ONNX suite leaves out (string pools, IDF/TFIDF weighting, several
trees, the other aggregates and post-transforms, NaN routing), checked against slow per-row references."""

import math

import numpy as np
import pytest
from onnx import numpy_helper

from graphc.ir import Graph, TensorType
from graphc.ops import OpContext, lookup

ML = "ai.onnx.ml"


def make_ctx(op_type, input_types, attrs, domain="", opset=None):
    opset = opset or (5 if domain else 9)
    g = Graph("t", {"": 17, domain: opset} if domain else {"": opset})
    inputs = [g.add_input(f"in{i}", t) for i, t in enumerate(input_types)]
    node = g.add_node(op_type, inputs, 1, attrs=attrs, domain=domain)
    node.opset = opset
    return OpContext(node, lookup(domain, op_type))


def run(op_type, x, attrs, domain=""):
    ctx = make_ctx(op_type, [TensorType.of(x)], attrs, domain)
    return ctx.opdef.compute(ctx, x)


# -- TfIdfVectorizer -----------------------------------------------------------------------------------------------

def tfidf_reference(rows, pool, ngram_counts, ngram_indexes, lo, hi, skips, mode, weights):
    """Per-row dictionary counting, as the spec words it."""
    starts = list(ngram_counts) + [len(pool)]
    grams = [tuple(pool[starts[n - 1] + k:starts[n - 1] + k + n]) for n in range(1, len(starts))
             for k in range(0, starts[n] - starts[n - 1], n)]
    out = np.zeros((len(rows), max(ngram_indexes) + 1), np.float32)
    for r, row in enumerate(rows):
        found = {}
        for n in range(lo, hi + 1):
            for stride in range(1, skips + 2) if n > 1 else [1]:
                for s in range(len(row) - (n - 1) * stride):
                    key = tuple(row[s + k * stride] for k in range(n))
                    found[key] = found.get(key, 0) + 1
        for i, g in enumerate(grams):
            c = found.get(g, 0)
            c = min(c, 1) if mode == "IDF" else c
            out[r, ngram_indexes[i]] += c * (weights[i] if mode != "TF" else 1)
    return out


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
def test_tfidf_matches_reference_on_random_int_batches(mode):
    rng = np.random.default_rng(1)
    pool = [1, 2, 3, 1, 2, 2, 2, 3, 1, 4, 1, 2, 3, 2, 2, 2]  # four 1-grams, three 2-grams, two 3-grams
    ngram_counts = [0, 4, 10]
    ngram_indexes = [8, 7, 6, 5, 4, 3, 2, 1, 0]
    weights = list(rng.uniform(0.5, 2, 9))
    x = rng.integers(0, 5, (3, 12)).astype(np.int32)
    attrs = {"mode": mode, "min_gram_length": 1, "max_gram_length": 3, "max_skip_count": 2,
             "ngram_counts": ngram_counts, "ngram_indexes": ngram_indexes, "pool_int64s": pool, "weights": weights}
    got = run("TfIdfVectorizer", x, attrs)
    assert got.dtype == np.float32 and got.shape == (3, 9)
    want = tfidf_reference(x.tolist(), pool, ngram_counts, ngram_indexes, 1, 3, 2, mode, weights)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert want[:, :7].sum() > 0  # the random rows do hit 1- and 2-grams


def test_tfidf_strings_one_dimensional_and_repeated_hits_across_skips():
    attrs = {"mode": "TF", "min_gram_length": 2, "max_gram_length": 2, "max_skip_count": 1,
             "ngram_counts": [0, 1], "ngram_indexes": [2, 0], "pool_strings": ["zz", "a", "a"]}
    x = np.array(["a", "a", "a", "b"], dtype=object)
    got = run("TfIdfVectorizer", x, attrs)
    # (a, a) twice with stride 1, once with stride 2; the 1-gram "zz" is outside [2, 2]
    np.testing.assert_array_equal(got, [3, 0, 0])
    assert got.shape == (3,)


def test_tfidf_infer_keeps_symbolic_batch():
    attrs = {"mode": "TF", "min_gram_length": 1, "max_gram_length": 1, "max_skip_count": 0,
             "ngram_counts": [0], "ngram_indexes": [0, 4], "pool_int64s": [1, 2]}
    ctx = make_ctx("TfIdfVectorizer", [TensorType(np.int64, ("N", "C"))], attrs)
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, ("N", 5))]
    ctx = make_ctx("TfIdfVectorizer", [TensorType(np.int64, (7,))], attrs)
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, (5,))]


# -- TreeEnsemble --------------------------------------------------------------------------------------------------

def random_forest(rng, n_trees, n_features, n_targets, depth):
    """Random full-ish binary trees in TreeEnsemble encoding (nodes of all trees interleaved at random)."""
    nodes, leaves, roots, members = [], [], [], []

    def grow(level):
        if level == depth or (level > 0 and rng.random() < 0.2):
            leaves.append((int(rng.integers(n_targets)), float(rng.normal())))
            return True, len(leaves) - 1
        mode = int(rng.integers(7))
        index = len(nodes)
        nodes.append(None)
        if mode == 6:
            members.append(list(rng.choice([-1.0, 0.0, 1.0, 2.0], 2, replace=False)))
        t_leaf, t_id = grow(level + 1)
        f_leaf, f_id = grow(level + 1)
        nodes[index] = dict(mode=mode, split=float(rng.integers(-2, 3)), feature=int(rng.integers(n_features)),
                            nan_true=int(rng.integers(2)), true=(t_leaf, t_id), false=(f_leaf, f_id),
                            members=members[-1] if mode == 6 else None)
        return False, index

    for _ in range(n_trees):
        roots.append(len(nodes))
        grow(0)
    member_values = []
    for n in nodes:
        if n["mode"] == 6:
            member_values += n["members"] + [math.nan]
    attrs = {
        "nodes_modes": np.array([n["mode"] for n in nodes], np.uint8),
        "nodes_splits": np.array([n["split"] for n in nodes], np.float32),
        "nodes_featureids": [n["feature"] for n in nodes],
        "nodes_missing_value_tracks_true": [n["nan_true"] for n in nodes],
        "nodes_truenodeids": [n["true"][1] for n in nodes], "nodes_trueleafs": [int(n["true"][0]) for n in nodes],
        "nodes_falsenodeids": [n["false"][1] for n in nodes],
        "nodes_falseleafs": [int(n["false"][0]) for n in nodes],
        "leaf_targetids": [t for t, _ in leaves], "leaf_weights": np.array([w for _, w in leaves], np.float32),
        "tree_roots": roots, "n_targets": n_targets,
        "membership_values": np.array(member_values, np.float32),
    }
    return nodes, leaves, roots, attrs


def tree_reference(x, nodes, leaves, roots, n_targets, aggregate):
    ops = [np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal]
    out = np.zeros((len(x), n_targets))
    for r, row in enumerate(x):
        hits = [[] for _ in range(n_targets)]
        for root in roots:
            is_leaf, i = False, root
            while not is_leaf:
                n = nodes[i]
                v = row[n["feature"]]
                take = v in n["members"] if n["mode"] == 6 else bool(ops[n["mode"]](v, np.float32(n["split"])))
                take = take or (bool(n["nan_true"]) and math.isnan(v))
                is_leaf, i = n["true"] if take else n["false"]
            target, weight = leaves[i]
            hits[target].append(np.float32(weight))
        for t, h in enumerate(hits):
            if h:
                out[r, t] = {0: sum(h) / len(roots), 1: sum(h), 2: min(h), 3: max(h)}[aggregate]
    return out


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
def test_tree_ensemble_matches_per_row_walk(aggregate):
    rng = np.random.default_rng(aggregate)
    nodes, leaves, roots, attrs = random_forest(rng, n_trees=6, n_features=3, n_targets=3, depth=4)
    x = rng.integers(-2, 3, (40, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    got = run("TreeEnsemble", x, {**attrs, "aggregate_function": aggregate}, ML)
    assert got.dtype == np.float32 and got.shape == (40, 3)
    np.testing.assert_allclose(got, tree_reference(x, nodes, leaves, roots, 3, aggregate), rtol=1e-5, atol=1e-6)


def test_tree_ensemble_one_leaf_tree_and_post_transforms():
    # tree 0: x0 <= 0.5 ? leaf0 (target 0, 1.0) : leaf1 (target 1, -1.0); tree 1 is the single leaf 2 (target 1, 2.0)
    attrs = {"nodes_modes": np.array([0, 0], np.uint8), "nodes_splits": np.array([0.5, 0.0]),
             "nodes_featureids": [0, 99], "nodes_truenodeids": [0, 2], "nodes_trueleafs": [1, 1],
             "nodes_falsenodeids": [1, 2], "nodes_falseleafs": [1, 1], "leaf_targetids": [0, 1, 1],
             "leaf_weights": np.array([1.0, -1.0, 2.0]), "tree_roots": [0, 1], "n_targets": 2}
    x = np.array([[0.0], [1.0]])
    raw = run("TreeEnsemble", x, attrs, ML)
    np.testing.assert_allclose(raw, [[1, 2], [0, 1]])
    assert raw.dtype == np.float64
    soft = run("TreeEnsemble", x, {**attrs, "post_transform": 1}, ML)
    np.testing.assert_allclose(soft, np.exp(raw) / np.exp(raw).sum(1, keepdims=True))
    soft_zero = run("TreeEnsemble", x, {**attrs, "post_transform": 3}, ML)
    np.testing.assert_allclose(soft_zero, [[1 / (1 + math.e), math.e / (1 + math.e)], [0, 1]])
    np.testing.assert_allclose(run("TreeEnsemble", x, {**attrs, "post_transform": 2}, ML), 1 / (1 + np.exp(-raw)))
    probit_attrs = {**attrs, "leaf_weights": np.array([0.975, 0.0, 0.5]), "post_transform": 4}
    np.testing.assert_allclose(run("TreeEnsemble", x[:1], probit_attrs, ML), [[1.959963984540054, 0.0]],
                               atol=1e-9)


def test_tree_ensemble_infer_and_cost():
    attrs = {"nodes_modes": numpy_helper.to_array(numpy_helper.from_array(np.array([0, 1], np.uint8))),
             "nodes_splits": np.array([0.5, 0.2], np.float32), "nodes_featureids": [0, 1],
             "nodes_truenodeids": [1, 0], "nodes_trueleafs": [0, 1], "nodes_falsenodeids": [1, 1],
             "nodes_falseleafs": [1, 1], "leaf_targetids": [0, 1], "leaf_weights": np.array([1, 2], np.float32),
             "tree_roots": [0]}
    ctx = make_ctx("TreeEnsemble", [TensorType(np.float32, ("N", 2))], attrs, ML)
    assert ctx.opdef.infer(ctx) == [TensorType(np.float32, ("N", 2))]  # n_targets from the leaf targets
    ctx = make_ctx("TreeEnsemble", [TensorType(np.float32, (10, 2))], attrs, ML)
    assert ctx.opdef.cost(ctx).flops == 10 * (2 + 1)  # depth-2 tree: two comparisons and one addition per row


def test_tree_ensemble_rejects_missing_member_sets():
    attrs = {"nodes_modes": np.array([6], np.uint8), "nodes_splits": np.array([0.0], np.float32),
             "nodes_featureids": [0], "nodes_truenodeids": [0], "nodes_trueleafs": [1], "nodes_falsenodeids": [1],
             "nodes_falseleafs": [1], "leaf_targetids": [0, 0], "leaf_weights": np.array([1, 2], np.float32),
             "tree_roots": [0], "membership_values": np.array([1.0, 2.0], np.float32)}
    with pytest.raises(Exception, match="membership"):
        run("TreeEnsemble", np.zeros((1, 1), np.float32), attrs, ML)
