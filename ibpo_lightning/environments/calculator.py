"""A calculator tool: the model writes an arithmetic expression, the environment returns its value.

Expressions are parsed with Python's ``ast`` and evaluated here, never with ``eval``: numbers,
``+ - * / // % **`` and parentheses only, in exact rational arithmetic (``7 / 2`` is ``3.5``,
``1 / 3`` prints ten significant digits). Exponents and magnitudes are bounded so that no
expression can take long or grow large.
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

from ibpo_lightning.environments.base import ToolEnvironment

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_LIMIT = Fraction(10) ** 30
_MAX_EXPONENT = 64


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic ``expression``; ValueError for anything else."""
    if len(expression) > 200:
        raise ValueError("the expression is longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot read {expression!r} as arithmetic") from None
    return _value(tree.body)


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > _MAX_EXPONENT):
            raise ValueError(f"exponents must be whole numbers up to {_MAX_EXPONENT}")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        if isinstance(node.op, ast.Pow) and left == 0 and right < 0:
            raise ValueError("division by zero")
        result = _BINARY[type(node.op)](left, right)
        if abs(result) > _LIMIT:
            raise ValueError("the result is larger than 1e30")
        return Fraction(result)
    raise ValueError(f"only numbers, + - * / // % ** and parentheses are allowed, not {ast.unparse(node)!r}")


def format_value(value: Fraction) -> str:
    """An integer as itself, anything else with up to ten significant digits."""
    if value.denominator == 1:
        return str(value.numerator)
    return format(float(value), ".10g")


class Calculator(ToolEnvironment):
    """One tool, ``calculator(expression)``, for arithmetic tasks such as ``ChainTask``.

    The model calls it as ``<tool_call>{"name": "calculator", "arguments": {"expression":
    "17 - 8"}}</tool_call>`` and reads ``9``; a bad expression reads ``error: ...``.

    Args:
        max_turns: model turns per episode (the last one should answer).
        max_calls_per_turn: calls run per turn.
    """

    def __init__(self, max_turns: int = 6, max_calls_per_turn: int = 4) -> None:
        super().__init__(max_turns, max_calls_per_turn)
        self.tools = {"calculator": self.calculator}

    @staticmethod
    def calculator(expression: str) -> str:
        if not isinstance(expression, str):
            raise ValueError("expression must be a string")
        return format_value(evaluate(expression))
