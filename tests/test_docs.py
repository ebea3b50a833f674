import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_supported_ops_doc_is_current():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        from gen_supported_ops import render
    finally:
        sys.path.pop(0)
    with open(os.path.join(ROOT, "docs", "supported_ops.md")) as f:
        assert f.read() == render(), "docs/supported_ops.md is stale: run python tools/gen_supported_ops.py"


def test_readme_starts_with_the_two_commands():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    block = text.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(block) == 2
    assert block[0].startswith("python -m pip install") and "graphc bench zoo:" in block[0]
    assert block[1] == "python -m pytest"
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    assert "pip install --quiet '.[test]'" in ci and "python -m pytest" in ci
