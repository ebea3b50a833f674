"""Count ONNX backend suite results per category, for graphc or for onnxruntime (the peer), CPU tests only.

    python tools/conformance_count.py                 # graphc (GRAPHC_TARGET, default reference), no exclusions
    python tools/conformance_count.py --onnxruntime   # onnxruntime.backend on the same tests

Prints one line per category and the total; used to write docs/conformance.md.
"""

from __future__ import annotations

import argparse
import collections
import io
import sys
import unittest
import warnings

warnings.filterwarnings("ignore")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnxruntime", action="store_true")
    args = parser.parse_args()
    import onnx.backend.test

    if args.onnxruntime:
        import onnxruntime.backend as backend
    else:
        import graphc.onnx_backend as backend

    suite = onnx.backend.test.BackendTest(backend, __name__)
    suite.exclude("_cuda$")
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for category, case in suite.test_cases.items():
        tests = unittest.defaultTestLoader.loadTestsFromTestCase(case)
        result = unittest.TextTestRunner(stream=io.StringIO(), verbosity=0).run(tests)
        counts[category]["total"] = result.testsRun
        counts[category]["failed"] = len(result.failures) + len(result.errors)
        counts[category]["skipped"] = len(result.skipped)
        counts[category]["passed"] = result.testsRun - counts[category]["failed"] - len(result.skipped)
    total = collections.Counter()
    for category, c in sorted(counts.items()):
        total.update(c)
        print(f"{category:40s} passed {c['passed']:5d} / {c['total']:5d}  (failed {c['failed']}, skipped {c['skipped']})")
    print(f"{'TOTAL':40s} passed {total['passed']:5d} / {total['total']:5d}  (failed {total['failed']}, "
          f"skipped {total['skipped']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
