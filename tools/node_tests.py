"""Run the ONNX backend node tests that use given op types through graphc, and print pass/fail.

    python tools/node_tests.py Relu Conv          # tests whose model uses Relu or Conv
    python tools/node_tests.py --all              # every node test
    python tools/node_tests.py -k resize Resize   # ... whose name contains 'resize'
    python tools/node_tests.py --list Gemm

A development aid; the conformance suite proper is tests/test_onnx_conformance.py.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
import traceback
import warnings

warnings.filterwarnings("ignore")


def model_ops(model) -> set[str]:
    ops = set()
    stack = [model.graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.g.node:
                    stack.append(a.g)
                stack.extend(a.graphs)
    return ops


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ops", nargs="*")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("-k", default="")
    parser.add_argument("-q", action="store_true", help="only the summary and failures' first lines")
    args = parser.parse_args()
    os.environ.setdefault("GRAPHC_TARGET", "reference")
    from onnx.backend.test.loader import load_model_tests
    from onnx.backend.test.runner import Runner, _normalize_tensor

    import graphc.onnx_backend as backend

    cases = [c for c in load_model_tests(kind="node")
             if (args.all or model_ops(c.model) & set(args.ops)) and args.k in c.name]
    if args.list:
        for c in cases:
            print(c.name)
        return 0
    passed, failed = 0, collections.OrderedDict()
    for case in cases:
        t0 = time.time()
        try:
            rep = backend.prepare(case.model, "CPU")
            for inputs, expected in case.data_sets:
                outs = rep.run([_normalize_tensor(x) for x in inputs])
                Runner.assert_similar_outputs([_normalize_tensor(x) for x in expected], list(outs),
                                              rtol=case.rtol, atol=case.atol)
            passed += 1
        except BaseException as exc:  # noqa: BLE001 - a dev tool reports everything
            if isinstance(exc, KeyboardInterrupt):
                raise
            msg = f"{type(exc).__name__}: {str(exc).strip()}"
            failed[case.name] = msg if args.q else msg + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-3:])
        dt = time.time() - t0
        if dt > 2:
            print(f"  slow: {case.name} {dt:.1f}s", file=sys.stderr)
    for name, msg in failed.items():
        first = msg.splitlines()[0][:300] if args.q else msg
        print(f"FAIL {name}: {first}")
    print(f"{passed} passed, {len(failed)} failed")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
