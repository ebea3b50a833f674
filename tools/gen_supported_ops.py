"""Write docs/supported_ops.md from the op registry (tests/test_docs.py checks it is current).

    python tools/gen_supported_ops.py
"""

from __future__ import annotations

import os
import sys

HEADER = """# Supported ops

Generated from the op registry by `python tools/gen_supported_ops.py`; do not edit by hand.

Every op listed has a numpy reference kernel (the `reference` target). *Shape rule*: graphc's own shape and
dtype rule (otherwise the importer keeps ONNX's inferred types). *Fusion*: the class the fusion pass reads.
"""


def render() -> str:
    from graphc.ops import OpDef, all_ops

    rows = []
    for op in all_ops():
        has_rule = type(op).infer is not OpDef.infer
        cost = "own" if type(op).cost is not OpDef.cost else (f"{op.flops_per_element:g}/elem"
                                                               if op.flops_per_element else "bytes only")
        domain = op.domain or "ai.onnx"
        rows.append(f"| {op.op_type} | {domain} | {op.fusion.value} | {'yes' if has_rule else '-'} | {cost} |")
    domains = sorted({op.domain or "ai.onnx" for op in all_ops()})
    summary = f"\n{len(rows)} ops in {len(domains)} domain(s): {', '.join(domains)}.\n\n"
    table = "| op | domain | fusion | shape rule | cost |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    return HEADER + summary + table + "\n"


def main() -> int:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "supported_ops.md")
    with open(path, "w") as f:
        f.write(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
