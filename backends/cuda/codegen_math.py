"""C expressions for the elementwise ops: ``x`` (and ``y``, ...) are C variables of the inputs' C types.

Each rule gets the node's resolved attributes and the output dtype and returns one C expression. NaN follows
numpy (a comparison-based max/min/relu propagates NaN, unlike fmaxf); integer Div truncates (the registry's
rule); transcendental functions are defined for floating-point dtypes only (others raise Unsupported and run on
the host).
"""

from __future__ import annotations

import numpy as np

from .dtypes import Unsupported, c_type, is_float, literal, math_fn


def _need_float(dt, op):
    if not is_float(dt):
        raise Unsupported(f"{op} on {np.dtype(dt).name}")


def _lit(v, dt):
    return literal(v, dt)


def unary(op: str, x: str, dt, a: dict) -> str:
    f = lambda name: math_fn(name, dt)  # noqa: E731
    one, zero = _lit(1, dt), _lit(0, dt)
    if op in ("Identity", "Dropout"):
        return x
    if op == "Relu":
        return f"({x} < {zero} ? {zero} : {x})"
    if op == "Neg":
        return f"(-{x})"
    if op == "Abs":
        return f"({x} < {zero} ? -{x} : {x})"
    if op == "Sign":
        return f"(({x} > {zero}) - ({x} < {zero}))" if not is_float(dt) else \
            f"({x} > {zero} ? {one} : ({x} < {zero} ? -{one} : {x}))"
    if op == "Not":
        return f"(!{x})"
    _need_float(dt, op)
    simple = {"Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Tanh": "tanh", "Floor": "floor", "Ceil": "ceil",
              "Erf": "erf", "Sin": "sin", "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos",
              "Atan": "atan", "Sinh": "sinh", "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh",
              "Atanh": "atanh", "Round": "rint"}
    if op in simple:
        return f"{f(simple[op])}({x})"
    if op == "Reciprocal":
        return f"({one} / {x})"
    if op == "Sigmoid":
        return f"({one} / ({one} + {f('exp')}(-{x})))"
    if op == "LeakyRelu":
        return f"({x} < {zero} ? {_lit(a['alpha'], dt)} * {x} : {x})"
    if op == "Elu":
        return f"({x} < {zero} ? {_lit(a['alpha'], dt)} * {f('expm1')}({x}) : {x})"
    if op == "Selu":
        return (f"({_lit(a['gamma'], dt)} * ({x} > {zero} ? {x} : "
                f"{_lit(a['alpha'], dt)} * {f('expm1')}({x})))")
    if op == "HardSigmoid":
        t = f"({_lit(a['alpha'], dt)} * {x} + {_lit(a['beta'], dt)})"
        return f"{f('fmin')}({one}, {f('fmax')}({zero}, {t}))"
    if op == "HardSwish":
        t = f"({x} * {_lit(1 / 6, dt)} + {_lit(0.5, dt)})"
        return f"({x} * {f('fmin')}({one}, {f('fmax')}({zero}, {t})))"
    if op == "Softplus":
        return f"({x} > {zero} ? {x} + {f('log1p')}({f('exp')}(-{x})) : {f('log1p')}({f('exp')}({x})))"
    if op == "Gelu":
        if a.get("approximate", "none") == "tanh":
            inner = f"{_lit(0.7978845608028654, dt)} * ({x} + {_lit(0.044715, dt)} * {x} * {x} * {x})"
            return f"({_lit(0.5, dt)} * {x} * ({one} + {f('tanh')}({inner})))"
        return f"({_lit(0.5, dt)} * {x} * ({one} + {f('erf')}({x} * {_lit(0.7071067811865476, dt)})))"
    if op == "IsNaN":
        return f"({x} != {x})"
    raise Unsupported(f"elementwise op {op}")


def binary(op: str, x: str, y: str, dt, a: dict) -> str:
    """``dt`` is the dtype of the operands (the output dtype for arithmetic)."""
    arith = {"Add": "+", "Sub": "-", "Mul": "*", "Sum": "+"}
    if op in arith:
        return f"({x} {arith[op]} {y})"
    if op == "Div":
        if not is_float(dt):
            return f"({y} == 0 ? {_lit(0, dt)} : {x} / {y})"
        return f"({x} / {y})"
    if op == "Max":
        return f"(({x} > {y} || {x} != {x}) ? {x} : {y})"
    if op == "Min":
        return f"(({x} < {y} || {x} != {x}) ? {x} : {y})"
    comparisons = {"Equal": "==", "Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">="}
    if op in comparisons:
        return f"({x} {comparisons[op]} {y})"
    logic = {"And": "&&", "Or": "||", "Xor": "!="}
    if op in logic:
        return f"({x} {logic[op]} {y})"
    if op == "Pow":
        _need_float(dt, op)
        return f"{math_fn('pow', dt)}({x}, ({c_type(dt)}){y})"
    if op == "PRelu":
        return f"({x} < {_lit(0, dt)} ? {y} * {x} : {x})"
    raise Unsupported(f"elementwise op {op}")


UNARY = {"Identity", "Dropout", "Relu", "Neg", "Abs", "Sign", "Not", "Exp", "Log", "Sqrt", "Tanh", "Floor",
         "Ceil", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
         "Round", "Reciprocal", "Sigmoid", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus",
         "Gelu", "IsNaN"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Equal", "Less", "Greater", "LessOrEqual",
          "GreaterOrEqual", "And", "Or", "Xor"}
NARY = {"Sum", "Max", "Min", "Mean"}
