"""Ops: classic machine learning — the ``ai.onnx.ml`` ops (Binarizer, ArrayFeatureExtractor, LabelEncoder,
TreeEnsemble) and TfIdfVectorizer, which is ``ai.onnx`` but belongs with them as text-feature extraction.

TfIdfVectorizer counts n-grams without a Python loop over positions: tokens become indices into the pool's
vocabulary, every window of one (length, skip) pair is gathered at once, and windows are matched to pool n-grams
by numbering the distinct rows of both together (``np.unique(axis=0)``).

TreeEnsemble walks every (row, tree) pair down its tree together, one level per step, so the Python loop runs
as many times as the deepest tree is deep, whatever the batch size.
"""

from __future__ import annotations

import math

import numpy as np

from ..ir.types import TensorType
from .elementwise import _erf
from .misc import _strings, _text
from .registry import REQUIRED, FusionClass, OpContext, OpDef, elementwise_infer, register


# -- Binarizer, ArrayFeatureExtractor, LabelEncoder ---------------------------------------------------------------

@register
class Binarizer(OpDef):
    op_type = "Binarizer"
    domain = "ai.onnx.ml"
    fusion = FusionClass.ELEMENTWISE
    attrs = {"threshold": 0.0}
    flops_per_element = 1

    def compute(self, ctx, x):
        return (x > ctx.attr("threshold", 0.0)).astype(x.dtype)

    def infer(self, ctx):
        return elementwise_infer(ctx)


@register
class ArrayFeatureExtractor(OpDef):
    """Select ``indices`` along the last axis; a 1-D input is treated as one row ([1, len(indices)] out)."""

    op_type = "ArrayFeatureExtractor"
    domain = "ai.onnx.ml"
    fusion = FusionClass.INJECTIVE

    def compute(self, ctx, x, indices):
        indices = np.asarray(indices, np.int64).reshape(-1)
        if ((indices < 0) | (indices >= x.shape[-1])).any():
            raise ctx.fail(f"indices {indices.tolist()} out of range for {x.shape[-1]} features")
        out = np.take(x, indices, axis=-1)
        return out.reshape(1, -1) if x.ndim == 1 else out

    def infer(self, ctx):
        t, indices = ctx.input_type(0), ctx.const(1)
        if t is None:
            return [None]
        if t.shape is None or indices is None:
            return [TensorType(t.dtype, None)]
        batch = (1,) if len(t.shape) == 1 else t.shape[:-1]
        return [TensorType(t.dtype, batch + (int(np.size(indices)),))]


@register
class LabelEncoder(OpDef):
    """Map each input value through ``keys_* -> values_*`` (lists, or tensors since ml opset 4), with the
    ``default_*`` of the values' type for keys not listed. NaN keys match NaN inputs."""

    op_type = "LabelEncoder"
    domain = "ai.onnx.ml"
    fusion = FusionClass.OPAQUE

    _DEFAULTS = {"floats": ("default_float", -0.0, np.float32), "int64s": ("default_int64", -1, np.int64),
                 "strings": ("default_string", "_Unused", object)}

    def _table(self, ctx: OpContext):
        keys = values = None
        default, out_dtype = None, None
        for kind in ("floats", "int64s", "strings"):
            if ctx.attr(f"keys_{kind}") is not None:
                keys = list(ctx.attr(f"keys_{kind}"))
            if ctx.attr(f"values_{kind}") is not None:
                values = list(ctx.attr(f"values_{kind}"))
                name, fallback, out_dtype = self._DEFAULTS[kind]
                default = ctx.attr(name, fallback)
        if ctx.attr("keys_tensor") is not None:
            keys = list(np.asarray(ctx.attr("keys_tensor")).reshape(-1))
        if ctx.attr("values_tensor") is not None:
            tensor = np.asarray(ctx.attr("values_tensor"))
            values, out_dtype = list(tensor.reshape(-1)), tensor.dtype
            default_tensor = ctx.attr("default_tensor")
            default = np.asarray(default_tensor).reshape(-1)[0] if default_tensor is not None else (
                "_Unused" if tensor.dtype == object else 0)
        if keys is None or values is None or len(keys) != len(values):
            raise ctx.shape_error("needs keys and values of the same length")
        normalise = lambda k: _text(k) if isinstance(k, (str, bytes)) else k
        return {normalise(k): v for k, v in zip(keys, values)}, default, np.dtype(out_dtype)

    def compute(self, ctx, x):
        table, default, dtype = self._table(ctx)
        nan_value = next((v for k, v in table.items() if isinstance(k, float) and k != k), default)

        def lookup_one(value):
            if isinstance(value, (str, bytes)):
                value = _text(value)
            elif hasattr(value, "item"):
                value = value.item()
            if isinstance(value, float) and value != value:
                return nan_value
            return table.get(value, default)

        flat = [lookup_one(v) for v in x.reshape(-1)]
        return np.array(flat, dtype=dtype).reshape(x.shape)

    def infer(self, ctx):
        if ctx.opset < 2:  # ml opset 1's classes_strings encoding is not implemented: keep ONNX's types
            return [None]
        t = ctx.input_type(0)
        _, _, dtype = self._table(ctx)
        return [TensorType(dtype, t.shape if t is not None else None)]


# -- TfIdfVectorizer -----------------------------------------------------------------------------------------------

def _pool_ngrams(ctx: OpContext) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The pool's vocabulary (sorted distinct tokens) and, per n-gram length n, ``(first, grams)``: the global
    number of its first n-gram and its n-grams as [count, n] vocabulary indices.

    ``ngram_counts[n - 1]`` is the offset (in tokens) where the n-grams start in the flat pool; an n-gram's
    global number -- what ``ngram_indexes`` and ``weights`` are indexed by -- counts n-grams, not tokens.
    """
    strings = ctx.attr("pool_strings")
    pool = np.array([_text(s) for s in strings], dtype=object) if strings else np.asarray(
        ctx.attr("pool_int64s", []), np.int64)
    vocab = np.unique(pool)
    ids = np.searchsorted(vocab, pool) if pool.size else pool.astype(np.int64)
    starts = list(ctx.attrs["ngram_counts"]) + [len(pool)]
    levels, first = [], 0
    for n in range(1, len(starts)):
        tokens = ids[starts[n - 1]:starts[n]]
        if len(tokens) % n:
            raise ctx.shape_error(f"the {n}-gram part of the pool holds {len(tokens)} tokens, not a multiple of {n}")
        levels.append((first, tokens.reshape(-1, n)))
        first += len(tokens) // n
    return vocab, levels


def _vocab_ids(vocab: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Index of each token in the sorted ``vocab``, -1 for tokens it does not hold."""
    if not vocab.size:
        return np.full(tokens.shape, -1, np.int64)
    at = np.minimum(np.searchsorted(vocab, tokens), len(vocab) - 1)
    return np.where(vocab[at] == tokens, at, -1)


@register
class TfIdfVectorizer(OpDef):
    """Count the pool's n-grams in each row of a [C] or [N, C] input; output [..., max(ngram_indexes) + 1].

    n-grams of each length in [min_gram_length, max_gram_length] are taken with every stride from 1 to
    ``max_skip_count + 1`` (1-grams once, as the stride does not change them). Mode ``IDF`` turns counts into
    presence (0/1) before weighting, ``TFIDF`` weights the counts, ``TF`` ignores the weights.
    """

    op_type = "TfIdfVectorizer"
    fusion = FusionClass.OPAQUE
    attrs = {"mode": REQUIRED, "min_gram_length": REQUIRED, "max_gram_length": REQUIRED,
             "max_skip_count": REQUIRED, "ngram_counts": REQUIRED, "ngram_indexes": REQUIRED}

    def compute(self, ctx, x):
        vocab, levels = _pool_ngrams(ctx)
        ngram_indexes = np.asarray(ctx.attrs["ngram_indexes"], np.int64)
        rows = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
        tokens = _vocab_ids(vocab, _strings(rows) if vocab.dtype == object else rows)
        n_rows, width = tokens.shape
        counts = np.zeros((n_rows, len(ngram_indexes)), np.float64)
        low, high = ctx.attrs["min_gram_length"], ctx.attrs["max_gram_length"]
        for n in range(max(low, 1), min(high, len(levels)) + 1):
            first, grams = levels[n - 1]
            if not len(grams):
                continue
            for stride in range(1, 2 + (ctx.attrs["max_skip_count"] if n > 1 else 0)):
                span = (n - 1) * stride
                if span >= width:
                    break
                # windows[r, s, k] = tokens[r, s + k * stride]
                windows = tokens[:, np.arange(width - span)[:, None] + stride * np.arange(n)]
                counts[:, first:first + len(grams)] += _count_matches(grams, windows.reshape(-1, n), n_rows)
        mode = ctx.attrs["mode"]
        if mode != "TF":
            if mode == "IDF":
                counts = np.minimum(counts, 1)
            weights = ctx.attr("weights")
            if weights is not None:
                counts = counts * np.asarray(weights, np.float64)
        out = np.zeros((n_rows, int(ngram_indexes.max(initial=-1)) + 1), np.float32)
        np.add.at(out, (slice(None), ngram_indexes), counts.astype(np.float32))
        return out[0] if x.ndim == 1 else out

    def infer(self, ctx):
        t = ctx.input_type(0)
        size = int(max(ctx.attrs["ngram_indexes"], default=-1)) + 1
        if t is None or t.shape is None:
            return [TensorType(np.float32, None)]
        return [TensorType(np.float32, (size,) if len(t.shape) == 1 else (t.shape[0], size))]

    def cost(self, ctx):
        base = super().cost(ctx)
        t = ctx.input_type(0)
        elements = (t.numel() or 0) if t is not None else 0
        lengths = max(0, ctx.attrs["max_gram_length"] - ctx.attrs["min_gram_length"] + 1)
        # one comparison per token per (length, stride) window position
        base.flops = elements * lengths * (ctx.attrs["max_skip_count"] + 1)
        return base


def _count_matches(grams: np.ndarray, windows: np.ndarray, n_rows: int) -> np.ndarray:
    """[n_rows, len(grams)]: how often each pool n-gram occurs among each row's windows (``windows`` holds
    the rows' windows one after the other, as [n_rows * per_row, n] vocabulary indices; -1 never matches)."""
    per_row = len(windows) // n_rows
    _, codes = np.unique(np.concatenate([grams, windows]), axis=0, return_inverse=True)
    codes = codes.reshape(-1)
    gram_codes, window_codes = codes[:len(grams)], codes[len(grams):]
    n_codes = int(codes.max()) + 1
    row_of_window = np.repeat(np.arange(n_rows), per_row)
    table = np.bincount(row_of_window * n_codes + window_codes, minlength=n_rows * n_codes)
    return table.reshape(n_rows, n_codes)[:, gram_codes]


# -- TreeEnsemble --------------------------------------------------------------------------------------------------

_MEMBER = 6
# node modes 0-5: BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT, BRANCH_EQ, BRANCH_NEQ
_COMPARISONS = (np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal)


class _Trees:
    """The ``nodes_*`` / ``leaf_*`` attributes of a TreeEnsemble node as arrays, and the per-node member sets."""

    def __init__(self, ctx: OpContext):
        a = ctx.attrs
        self.modes = np.asarray(a["nodes_modes"]).astype(np.int64).reshape(-1)
        self.splits = np.asarray(a["nodes_splits"], np.float64).reshape(-1)
        self.features = np.asarray(a["nodes_featureids"], np.int64)
        self.true_ids = np.asarray(a["nodes_truenodeids"], np.int64)
        self.false_ids = np.asarray(a["nodes_falsenodeids"], np.int64)
        self.true_leaf = np.asarray(a["nodes_trueleafs"], bool)
        self.false_leaf = np.asarray(a["nodes_falseleafs"], bool)
        tracks = a.get("nodes_missing_value_tracks_true")
        self.nan_true = np.asarray(tracks, bool) if tracks else np.zeros(len(self.modes), bool)
        self.roots = np.asarray(a["tree_roots"], np.int64)
        self.leaf_targets = np.asarray(a["leaf_targetids"], np.int64)
        self.leaf_weights = np.asarray(a["leaf_weights"], np.float64).reshape(-1)
        # a one-leaf tree is a root whose branches are the same leaf: it is a leaf from the start
        r = self.roots
        self.root_is_leaf = self.true_leaf[r] & self.false_leaf[r] & (self.true_ids[r] == self.false_ids[r])
        self.members = self._member_sets(ctx)

    def _member_sets(self, ctx: OpContext) -> dict[int, np.ndarray]:
        """``membership_values`` holds one NaN-terminated set per BRANCH_MEMBER node, in node order."""
        member_nodes = np.flatnonzero(self.modes == _MEMBER)
        if not len(member_nodes):
            return {}
        values = ctx.attrs.get("membership_values")
        values = np.asarray(values, np.float64).reshape(-1) if values is not None else np.zeros(0)
        ends = np.flatnonzero(np.isnan(values))
        if len(ends) != len(member_nodes):
            raise ctx.shape_error(f"{len(member_nodes)} set-membership nodes but {len(ends)} NaN-delimited "
                                  "sets in membership_values")
        starts = np.concatenate([[0], ends[:-1] + 1])
        return {int(node): values[s:e] for node, s, e in zip(member_nodes, starts, ends)}

    def goes_true(self, x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Whether feature values ``x`` take the true branch of ``nodes`` (both 1-D, paired up). A NaN takes
        it where the comparison itself holds (NEQ) or where the node says missing values track true."""
        modes = self.modes[nodes]
        out = np.zeros(len(nodes), bool)
        for mode, compare in enumerate(_COMPARISONS):
            sel = modes == mode
            if sel.any():
                out[sel] = compare(x[sel], self.splits[nodes[sel]])
        for node in np.unique(nodes[modes == _MEMBER]):
            sel = nodes == node
            out[sel] = np.isin(x[sel], self.members[int(node)])
        return out | (self.nan_true[nodes] & np.isnan(x))

    def leaves(self, x: np.ndarray, fail) -> np.ndarray:
        """[N, trees]: the leaf each row reaches in each tree, walking all pairs down one level per step."""
        n_rows, n_trees = len(x), len(self.roots)
        start = np.where(self.root_is_leaf, self.true_ids[self.roots], self.roots)
        node = np.broadcast_to(start, (n_rows, n_trees)).copy()
        done = np.broadcast_to(self.root_is_leaf, (n_rows, n_trees)).copy()
        for _ in range(len(self.modes) + 1):  # a path never visits a node twice, unless the trees are cyclic
            rows, trees = np.nonzero(~done)
            if not len(rows):
                return node
            at = node[rows, trees]
            take = self.goes_true(x[rows, self.features[at]], at)
            node[rows, trees] = np.where(take, self.true_ids[at], self.false_ids[at])
            done[rows, trees] = np.where(take, self.true_leaf[at], self.false_leaf[at])
        raise fail("the nodes_* attributes describe a cycle, not trees")

    def comparisons_per_row(self) -> int:
        """Sum over trees of the comparisons on the longest root-to-leaf path (for the cost)."""
        inner_roots = ~self.root_is_leaf
        nodes, tree = self.roots[inner_roots], np.flatnonzero(inner_roots)
        total = 0
        for _ in range(len(self.modes)):
            if not len(nodes):
                break
            total += len(np.unique(tree))  # each tree with a node at this level compares once more
            go_t, go_f = ~self.true_leaf[nodes], ~self.false_leaf[nodes]
            nodes = np.concatenate([self.true_ids[nodes][go_t], self.false_ids[nodes][go_f]])
            tree = np.concatenate([tree[go_t], tree[go_f]])
        return total


def _post_transform(scores: np.ndarray, kind: int) -> np.ndarray:
    """NONE (0), SOFTMAX (1), LOGISTIC (2), SOFTMAX_ZERO (3: zero scores stay 0) or PROBIT (4), per row."""
    if kind in (1, 3):
        keep = scores != 0 if kind == 3 else np.ones(scores.shape, bool)
        shifted = np.where(keep, scores - np.max(scores, axis=1, keepdims=True, where=keep, initial=-np.inf), 0)
        e = np.where(keep, np.exp(shifted), 0)
        total = e.sum(axis=1, keepdims=True)
        return np.divide(e, total, out=np.zeros_like(e), where=total > 0)
    if kind == 2:
        return 1 / (1 + np.exp(-scores))
    if kind == 4:
        return math.sqrt(2) * _erfinv(2 * scores - 1)
    return scores


def _erfinv(y: np.ndarray) -> np.ndarray:
    """Inverse erf: Winitzki's closed form (relative error ~2e-3) refined by two Newton steps."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = 0.147
        log = np.log((1 - y) * (1 + y))
        b = 2 / (math.pi * a) + log / 2
        x = np.copysign(np.sqrt(np.sqrt(b * b - log / a) - b), y)
        for _ in range(2):
            x = np.where(np.isfinite(x), x - (_erf(x) - y) / (2 / math.sqrt(math.pi) * np.exp(-x * x)), x)
    return x


@register
class TreeEnsemble(OpDef):
    """Sum (or average, min, max: ``aggregate_function`` 0-3) the leaf weights each row reaches into its
    ``n_targets`` scores, then apply ``post_transform``. Node modes 0-5 compare the row's feature with
    ``nodes_splits``, mode 6 tests membership in the node's set from ``membership_values``. AVERAGE divides by
    the number of trees; with MIN/MAX a target no leaf reached scores 0. Sums run in float64."""

    op_type = "TreeEnsemble"
    domain = "ai.onnx.ml"
    fusion = FusionClass.OPAQUE
    attrs = {"aggregate_function": 1, "post_transform": 0, "tree_roots": REQUIRED, "nodes_modes": REQUIRED,
             "nodes_splits": REQUIRED, "nodes_featureids": REQUIRED, "nodes_truenodeids": REQUIRED,
             "nodes_falsenodeids": REQUIRED, "nodes_trueleafs": REQUIRED, "nodes_falseleafs": REQUIRED,
             "leaf_targetids": REQUIRED, "leaf_weights": REQUIRED}

    def _n_targets(self, ctx: OpContext, trees: _Trees) -> int:
        n = ctx.attr("n_targets")
        return int(n) if n is not None else int(trees.leaf_targets.max(initial=-1)) + 1

    def compute(self, ctx, x):
        trees = _Trees(ctx)
        if x.ndim != 2:
            raise ctx.fail(f"expects [N, F] input, got shape {x.shape}")
        read = np.delete(trees.features, trees.roots[trees.root_is_leaf])  # a one-leaf tree's root compares nothing
        if len(read) and not 0 <= read.min() <= read.max() < x.shape[1]:
            raise ctx.fail(f"nodes read features {sorted(set(read.tolist()))} of {x.shape[1]}")
        leaves = trees.leaves(x.astype(np.float64), ctx.fail)
        n_targets = self._n_targets(ctx, trees)
        rows = np.broadcast_to(np.arange(len(x))[:, None], leaves.shape)
        index = (rows.reshape(-1), trees.leaf_targets[leaves].reshape(-1))
        weights = trees.leaf_weights[leaves].reshape(-1)
        aggregate = ctx.attr("aggregate_function", 1)
        if aggregate in (0, 1):
            scores = np.zeros((len(x), n_targets))
            np.add.at(scores, index, weights)
            if aggregate == 0:
                scores /= max(len(trees.roots), 1)
        elif aggregate in (2, 3):
            reduce, start = (np.minimum, np.inf) if aggregate == 2 else (np.maximum, -np.inf)
            scores = np.full((len(x), n_targets), start)
            reduce.at(scores, index, weights)
            scores[np.isinf(scores) & (np.sign(scores) == np.sign(start))] = 0
        else:
            raise ctx.fail(f"unknown aggregate_function {aggregate}")
        return _post_transform(scores, ctx.attr("post_transform", 0)).astype(x.dtype)

    def infer(self, ctx):
        t = ctx.input_type(0)
        n_targets = self._n_targets(ctx, _Trees(ctx))
        batch = t.shape[0] if t is not None and t.shape else None
        return [TensorType(t.dtype if t is not None else None, (batch, n_targets))]

    def cost(self, ctx):
        base = super().cost(ctx)
        t = ctx.input_type(0)
        rows = t.shape[0] if t is not None and t.shape and isinstance(t.shape[0], int) else 0
        trees = _Trees(ctx)
        # one comparison per level of each tree, one addition per tree, per row
        base.flops = rows * (trees.comparisons_per_row() + len(trees.roots))
        return base
