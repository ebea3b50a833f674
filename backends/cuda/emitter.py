"""A small C code emitter: indented lines, fresh names, nested blocks, and a memo of computed values.

The memo maps (value, index, vector component) to the C variable that holds it; a nested block sees the memo of
its enclosing blocks but what it adds is forgotten when the block closes (a variable declared inside a loop or a
branch is out of scope after it), which is what keeps lazily-evaluated branches (Concat, Pad) from reading
out of bounds.
"""

from __future__ import annotations

from contextlib import contextmanager


class Emitter:
    def __init__(self, depth: int = 1):
        self.lines: list[str] = []
        self.depth = depth
        self._count = 0
        self._memo: list[dict] = [{}]

    def fresh(self, prefix: str = "t") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self.depth + text)

    def let(self, ctype: str, expr: str, prefix: str = "t") -> str:
        """``const T name = expr;`` (a bare name or literal is returned as it is)."""
        if expr.replace("_", "").isalnum() and not expr[0].isdigit() or _is_number(expr):
            return expr
        name = self.fresh(prefix)
        self.line(f"const {ctype} {name} = {expr};")
        return name

    def var(self, ctype: str, init: str | None, prefix: str = "v") -> str:
        name = self.fresh(prefix)
        self.line(f"{ctype} {name}" + (f" = {init};" if init is not None else ";"))
        return name

    @contextmanager
    def block(self, header: str):
        self.line(header + " {")
        self.depth += 1
        self._memo.append(dict(self._memo[-1]))
        try:
            yield
        finally:
            self._memo.pop()
            self.depth -= 1
            self.line("}")

    def memo_get(self, key):
        return self._memo[-1].get(key)

    def memo_put(self, key, name: str) -> None:
        self._memo[-1][key] = name

    def text(self) -> str:
        return "\n".join(self.lines)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("fL"))
        return True
    except ValueError:
        return False


# -- index arithmetic on C expressions ----------------------------------------------------------------------------

def strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(list(shape)):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def linear(idx: list[str], shape) -> str:
    """The row-major linear index of ``idx`` in ``shape`` as a C expression (size-1 dims skipped)."""
    terms = []
    for i, s, d in zip(idx, strides(shape), shape):
        if int(d) == 1 or i == "0":
            continue
        terms.append(i if s == 1 else f"{i} * {s}")
    return " + ".join(terms) if terms else "0"


def delinearize(em: Emitter, lin: str, shape) -> list[str]:
    """Per-dim indices of the linear index ``lin`` in ``shape`` (lets in ``em``)."""
    shape = [int(d) for d in shape]
    st = strides(shape)
    out = []
    first = next((k for k, d in enumerate(shape) if d != 1), len(shape))
    for k, (d, s) in enumerate(zip(shape, st)):
        if d == 1:
            out.append("0")
            continue
        q = lin if s == 1 else f"({lin}) / {s}"
        expr = q if k == first else f"({q}) % {d}"
        out.append(em.let("int", expr, "i"))
    return out


def broadcast_index(idx: list[str], out_shape, in_shape) -> list[str]:
    """The index into an input of shape ``in_shape`` that numpy broadcasting reads for output index ``idx``."""
    offset = len(out_shape) - len(in_shape)
    return ["0" if int(d) == 1 else idx[offset + j] for j, d in enumerate(in_shape)]
