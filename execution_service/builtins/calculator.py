"""A safe arithmetic evaluator: Python's ``ast`` walked by hand, never ``eval``.

Accepted: int and float literals, ``+ - * / // % **``, unary ``+``/``-``,
parentheses, the constants ``pi``, ``e`` and ``tau`` and a few functions from a
whitelist. Everything else (names, attributes, subscripts, other calls,
comparisons, strings …) is refused. Inputs are capped in length and results in
size, so ``9**9**9`` is refused instead of eating the CPU.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from types import MappingProxyType

Number = int | float

MAX_EXPRESSION_CHARS = 200
MAX_INT_BITS = 4096
MAX_EXPONENT = 10_000
MAX_NODES = 200


class CalculatorError(ValueError):
    """The expression is not allowed or cannot be computed; the message is user-safe."""


CONSTANTS: Mapping[str, float] = MappingProxyType({"pi": math.pi, "e": math.e, "tau": math.tau})


def _round(value: Number, digits: Number = 0) -> Number:
    if not isinstance(digits, int) or not -20 <= digits <= 20:
        raise CalculatorError("round() takes a whole number of digits between -20 and 20")
    return round(value, digits) if digits else round(value)


FUNCTIONS: Mapping[str, Callable[..., Number]] = MappingProxyType(
    {
        "sqrt": math.sqrt,
        "abs": abs,
        "round": _round,
        "floor": math.floor,
        "ceil": math.ceil,
        "log": math.log,
        "log10": math.log10,
        "exp": math.exp,
        "sin": math.sin,
        "cos": math.cos,
        "tan": math.tan,
    }
)
_BINARY: Mapping[type[ast.operator], Callable[[Number, Number], Number]] = MappingProxyType(
    {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod,
    }
)


def _check_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculatorError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponents are limited to {MAX_EXPONENT}")
    too_many_bits = (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and max(base.bit_length() - 1, 0) * exponent > MAX_INT_BITS
    )
    if too_many_bits:
        raise CalculatorError("the result is too large")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError("the result is not a real number")
    return result


class _Evaluator:
    def __init__(self) -> None:
        self.nodes = 0

    def visit(self, node: ast.AST) -> Number:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise CalculatorError("the expression is too complex")
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise CalculatorError("only numbers are allowed")
            return _check_size(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.visit(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow):
                return _check_size(_power(left, right))
            op = _BINARY.get(type(node.op))
            if op is None:
                raise CalculatorError(f"the operator {type(node.op).__name__} is not allowed")
            if isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
                raise CalculatorError("division by zero")
            return _check_size(op(left, right))
        if isinstance(node, ast.Name):
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            raise CalculatorError(f"unknown name {node.id!r}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise CalculatorError(f"{type(node).__name__} is not allowed in an expression")

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise CalculatorError("only the functions " + ", ".join(sorted(FUNCTIONS)) + " are allowed")
        if node.keywords or len(node.args) > 2:
            raise CalculatorError(f"{node.func.id}() takes one or two plain arguments")
        args = [self.visit(arg) for arg in node.args]
        try:
            return _check_size(FUNCTIONS[node.func.id](*args))
        except CalculatorError:
            raise
        except (ValueError, TypeError, OverflowError) as exc:
            raise CalculatorError(f"{node.func.id}() cannot compute that: {exc}") from None


def evaluate(expression: str) -> Number:
    """The value of ``expression``; raises :class:`CalculatorError` with a user-safe message."""
    text = expression.strip().replace("^", "**")
    if not text:
        raise CalculatorError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expressions are limited to {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("the expression is not valid arithmetic") from None
    try:
        return _Evaluator().visit(tree)
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except OverflowError:
        raise CalculatorError("the result is too large") from None
    except RecursionError:
        raise CalculatorError("the expression is too complex") from None
