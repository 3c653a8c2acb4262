"""Assert-style tests judged in the trusted parent: the sandbox only computes the values.

A test such as ``assert set(f(x)) == {1, 2}`` is parsed with :mod:`ast` here, in the parent. The
parts that need the program (here ``f(x)``) become *probes*: expressions the sandboxed child
evaluates in the program's namespace and sends back as plain data
(:mod:`~ibpo_lightning.rewards.sandbox.values`). Everything around them (the comparison, the
``set(...)``, the literal ``{1, 2}``) is evaluated here on the decoded values, with the real
builtins. So nothing the program controls decides a verdict: not a lying ``__eq__`` or
``__bool__`` (such objects are not plain data and are never sent), not a patched ``builtins``,
``operator`` or ``sys.modules`` (the comparison does not run in its process), not a swallowed
``AssertionError`` or an early exit (a missing value fails the test), and not a forged result
line (the child never sees the expected values, so a forged value is only right if the program
could compute it anyway).

A test string whose statements are all ``assert``s is planned, and so is the HumanEval form
``def check(candidate): <asserts>`` followed by ``check(name)``: the asserts are inlined with
``candidate`` replaced by ``name``. Anything else (loops, helper variables, ``for`` over
cases) returns None and runs in the child the old way (see ``docs/code_reward.md``).
"""

from __future__ import annotations

import ast
import builtins
import math
from dataclasses import dataclass
from functools import lru_cache

from ibpo_lightning.rewards.sandbox.values import binop

# Pure builtins a test may apply to values in the parent; a name the program (or setup, or
# preamble) defines itself is the program's and becomes part of a probe instead.
SAFE_CALLS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "float", "frozenset",
    "int", "isinstance", "len", "list", "max", "min", "ord", "repr", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "type", "zip",
})
SAFE_MATH = frozenset({"isclose", "fabs", "sqrt", "floor", "ceil", "trunc", "isnan", "isinf",
                       "isfinite", "pi", "e", "inf", "nan", "log", "log2", "log10", "exp"})
_PARENT_GLOBALS = {"__builtins__": {name: getattr(builtins, name) for name in SAFE_CALLS},
                   "math": math, "__binop__": binop}
OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
              ast.Mod: "%", ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&",
              ast.BitOr: "|", ast.BitXor: "^", ast.MatMult: "@"}


@dataclass(frozen=True)
class TestPlan:
    """One test as probes for the child and expressions judged here."""

    __test__ = False  # not a pytest test class

    probes: tuple[str, ...]
    """Expressions (source) the child evaluates, in order, in the program's namespace."""
    checks: tuple[ast.Expression, ...]
    """One rewritten expression per ``assert``; probe ``k`` is the name ``__probe_k``."""

    def passes(self, values: list) -> bool:
        """Whether every assert holds given the probes' decoded values (one per probe)."""
        if len(values) != len(self.probes):
            return False
        scope = {**_PARENT_GLOBALS, **{f"__probe_{k}": v for k, v in enumerate(values)}}
        try:
            return all(bool(eval(_compiled(c), scope)) for c in self.checks)  # noqa: S307
        except Exception:  # e.g. sorted() of mixed types: the assert would have raised
            return False


@lru_cache(maxsize=4096)
def _compiled(check: ast.Expression):
    return compile(check, "<test check>", "eval")


def defined_names(*sources: str) -> frozenset[str]:
    """Names bound at the top level of the program (and setup, preamble): these are the
    program's, never the builtins of the same name. A source that does not parse binds none."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.Global):
                names.update(node.names)
    return frozenset(names)


@lru_cache(maxsize=65536)
def plan_test(test: str, program_names: frozenset[str] = frozenset()) -> TestPlan | None:
    """The plan of a test made only of asserts (or a HumanEval ``check``), else None."""
    try:
        body = ast.parse(test).body
    except (SyntaxError, ValueError):
        return None
    asserts = _inline_check(body) if len(body) == 2 else None
    if asserts is None:
        asserts = body
    if not asserts or not all(isinstance(s, ast.Assert) for s in asserts):
        return None
    probes: list[str] = []
    splitter = _Splitter(program_names, probes)
    checks = [ast.fix_missing_locations(ast.Expression(splitter.visit(s.test))) for s in asserts]
    return TestPlan(tuple(probes), tuple(checks))


def binop_call(name: str, left: ast.expr, op: ast.operator, right: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), [ast.Constant(OPERATORS[type(op)]), left, right], [])


def _inline_check(body: list[ast.stmt]) -> list[ast.stmt] | None:
    """``def check(candidate): asserts`` then ``check(f)``: the asserts with ``f`` for
    ``candidate``; None for any other shape."""
    define, call = body
    if not (isinstance(define, ast.FunctionDef) and isinstance(call, ast.Expr)
            and isinstance(call.value, ast.Call) and isinstance(call.value.func, ast.Name)
            and call.value.func.id == define.name and len(call.value.args) == 1
            and not call.value.keywords and len(define.args.args) == 1
            and not define.decorator_list):
        return None
    param, target = define.args.args[0].arg, call.value.args[0]
    statements = [s for s in define.body
                  if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    if not all(isinstance(s, ast.Assert) for s in statements):
        return None

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.copy_location(target, node) if node.id == param else node

    return [Substitute().visit(s) for s in statements]


class _Splitter(ast.NodeTransformer):
    """Keeps what the parent may evaluate itself and turns every other subtree into a probe."""

    def __init__(self, program_names: frozenset[str], probes: list[str]) -> None:
        self.program_names, self.probes = program_names, probes

    def probe(self, node: ast.AST) -> ast.Name:
        if isinstance(node, ast.GeneratorExp):  # sent as the list of its items
            node = ast.ListComp(node.elt, node.generators)
        self.probes.append(ast.unparse(node))
        return ast.Name(id=f"__probe_{len(self.probes) - 1}", ctx=ast.Load())

    def visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.Constant, ast.cmpop, ast.boolop, ast.unaryop, ast.operator,
                             ast.expr_context, ast.keyword)):
            return self.generic_visit(node)
        if isinstance(node, (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.List,
                             ast.Tuple, ast.Set, ast.Dict, ast.Subscript, ast.Slice, ast.Starred)):
            return self.generic_visit(node)
        if isinstance(node, ast.BinOp):  # here, on the values: ``f(x) - y`` cannot lie
            if _constant(node):
                return node
            return binop_call("__binop__", self.visit(node.left), node.op, self.visit(node.right))
        if isinstance(node, ast.Name) and self._safe_name(node.id):
            return node
        if isinstance(node, ast.Call) and self._safe_callee(node.func):
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return node
        if isinstance(node, ast.Attribute) and self._safe_callee(node):
            return node
        return self.probe(node)

    def _safe_name(self, name: str) -> bool:
        return name in SAFE_CALLS and name not in self.program_names

    def _safe_callee(self, func: ast.AST) -> bool:
        if isinstance(func, ast.Name):
            return self._safe_name(func.id)
        return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.value.id == "math" and func.attr in SAFE_MATH)


def _constant(node: ast.AST) -> bool:
    """Made of literals and operators only (``2 ** 10``, ``-1.5``, ``[0] * 3``)."""
    allowed = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.List,
               ast.Tuple, ast.Set, ast.Load)
    return all(isinstance(n, allowed) for n in ast.walk(node))
