import os
import sys

# the tests import helpers as tests.*; make the repo root importable however pytest is started
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("GRAPHC_VERIFY", "1")  # the IR verifier runs after every pass in tests
os.environ.setdefault("GRAPHC_LLVM_STRICT", "1")  # an llvm code generator bug fails the test, not a silent fallback
