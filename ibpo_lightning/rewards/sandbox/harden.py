"""Tests the child must judge itself, rewritten so that values the program made cannot lie to them.

A test that is not plain asserts (a loop, helper variables) cannot be judged in the parent (see
:mod:`plan`); it runs in the child, rewritten here so that each comparison, each arithmetic
operator and each truth test works on plain copies of the values (``child._judges``).
"""

from __future__ import annotations

import ast
from functools import lru_cache

from ibpo_lightning.rewards.sandbox.library import METHOD_NAMES
from ibpo_lightning.rewards.sandbox.plan import binop_call, parse

COMPARE, TRUTH, BINOP = "__sandbox_compare__", "__sandbox_truth__", "__sandbox_binop__"
METHOD = "__sandbox_method__"
_COMPARISONS = {ast.Eq: "==", ast.NotEq: "!=", ast.In: "in", ast.NotIn: "not in", ast.Lt: "<",
                ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


@lru_cache(maxsize=4096)
def harden(test: str) -> str:
    """A test the child must judge itself, rewritten so that values the program made cannot lie
    to it: every ``a == b`` (any comparison but ``is``) becomes ``__sandbox_compare__(a, "==",
    b)``, every ``a - b`` (any binary operator) ``__sandbox_binop__("-", a, b)`` and every
    ``assert e`` ``assert __sandbox_truth__(e)`` and every ``x.count(2)`` (a method of a plain
    type) ``__sandbox_method__(x, "count", 2)``; the child binds them to functions that work on
    plain copies of the values (and refuse anything else), see ``child._judges``. Still inside the program's process: a program that tampers
    with the harness itself can defeat this, which judging in the parent does not allow."""
    try:
        tree = parse(test)
    except (SyntaxError, ValueError):
        return test

    class Rewrite(ast.NodeTransformer):
        def visit_Compare(self, node: ast.Compare) -> ast.AST:
            self.generic_visit(node)
            if len(node.ops) != 1 or type(node.ops[0]) not in _COMPARISONS:
                return node
            op = ast.Constant(_COMPARISONS[type(node.ops[0])])
            call = ast.Call(ast.Name(COMPARE, ast.Load()), [node.left, op, node.comparators[0]], [])
            return ast.copy_location(call, node)

        def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
            self.generic_visit(node)
            return ast.copy_location(binop_call(BINOP, node.left, node.op, node.right), node)

        def visit_Call(self, node: ast.Call) -> ast.AST:
            self.generic_visit(node)
            if not (isinstance(node.func, ast.Attribute) and node.func.attr in METHOD_NAMES):
                return node
            args = [node.func.value, ast.Constant(node.func.attr), *node.args]
            return ast.copy_location(ast.Call(ast.Name(METHOD, ast.Load()), args, node.keywords), node)

        def visit_Assert(self, node: ast.Assert) -> ast.AST:
            self.generic_visit(node)
            node.test = ast.Call(ast.Name(TRUTH, ast.Load()), [node.test], [])
            return node

    return ast.unparse(ast.fix_missing_locations(Rewrite().visit(tree)))
