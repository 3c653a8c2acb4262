"""The Countdown equation checker: reach a target with each given number used exactly once.

The model's equation is the text of its last ``<answer>...</answer>``. It is parsed with
``ast`` and evaluated by walking the tree, never with ``eval``: only integer literals, ``+``,
``-``, ``*``, ``/`` and parentheses are allowed (no unary minus, no names, calls, powers or
floats). Division is exact (fractions), so ``(7 / 2) * 2`` is 7. A trailing ``= <target>``
("``(3 + 5) * 2 = 16``") is accepted and ignored.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_MAX_CHARS = 200  # longer is no Countdown equation, and deep nesting would strain the parser
_OPERATORS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


class InvalidEquation(ValueError):
    """The text is not an equation of integer literals and + - * / (or divides by zero)."""


def last_answer(text: str) -> str | None:
    """The stripped content of the last ``<answer>...</answer>`` in ``text``, or None."""
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def _walk(node: ast.AST, literals: list[int]) -> Fraction:
    if isinstance(node, ast.Expression):
        return _walk(node.body, literals)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _walk(node.left, literals), _walk(node.right, literals)
        if isinstance(node.op, ast.Div) and right == 0:
            raise InvalidEquation("division by zero")
        return _OPERATORS[type(node.op)](left, right)
    raise InvalidEquation(f"not allowed in an equation: {type(node).__name__}")


def evaluate_equation(expression: str) -> tuple[Fraction, list[int]]:
    """The exact value of ``expression`` and the integer literals it uses, in order.

    Raises:
        InvalidEquation: anything but integer literals, + - * / and parentheses, or x / 0.
    """
    text = expression.strip()
    if len(text) > _MAX_CHARS:
        raise InvalidEquation(f"longer than {_MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as err:
        raise InvalidEquation(f"does not parse: {err}") from None
    literals: list[int] = []
    return _walk(tree, literals), literals


def check_equation(expression: str, numbers: Sequence[int], target: int) -> bool:
    """True when ``expression`` uses each of ``numbers`` exactly once and equals ``target``."""
    left, sep, right = expression.partition("=")
    if sep:
        if right.strip() != str(target):
            return False
        expression = left
    try:
        value, used = evaluate_equation(expression)
    except InvalidEquation:
        return False
    return Counter(used) == Counter(int(n) for n in numbers) and value == target


def countdown_reward(completion: str, numbers: Sequence[int], target: int) -> float:
    """1.0 when the completion's last ``<answer>`` equation is right, else 0.0."""
    equation = last_answer(completion)
    return float(equation is not None and check_equation(equation, numbers, target))
