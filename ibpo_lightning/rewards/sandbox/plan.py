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
import threading
from dataclasses import dataclass
from functools import lru_cache

from ibpo_lightning.rewards.sandbox.library import (
    METHOD_NAMES,
    PARENT_GLOBALS,
    SAFE_CALLS,
    SAFE_MATH,
    SAFE_MODULES,
)

RECEIVER = "__sandbox_receiver__"
"""The name a method probe's receiver has in the call the child makes itself."""
OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
              ast.Mod: "%", ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitAnd: "&",
              ast.BitOr: "|", ast.BitXor: "^", ast.MatMult: "@"}


@dataclass(frozen=True)
class TestPlan:
    """One test as probes for the child and expressions judged here."""

    __test__ = False  # not a pytest test class

    probes: tuple[str | tuple[str, str], ...]
    """Expressions (source) the child evaluates, in order, in the program's namespace; a pair
    ``(receiver, call)`` is a method probe: the child sends the receiver's value when it is
    plain data, else (an object of the program's own class) the value of ``call``, the same
    call made on :data:`RECEIVER`."""
    checks: tuple[ast.Expression, ...]
    """One rewritten expression per ``assert``; probe ``k`` is the name ``__probe_k``."""

    def passes(self, values: list) -> bool:
        """Whether every assert holds given the probes' decoded values (one per probe)."""
        if len(values) != len(self.probes):
            return False
        scope = {**PARENT_GLOBALS, **{f"__probe_{k}": v for k, v in enumerate(values)}}
        try:
            return all(bool(eval(_compiled(c), scope)) for c in self.checks)  # noqa: S307
        except Exception:  # e.g. sorted() of mixed types: the assert would have raised
            return False


_AST = threading.Lock()
"""The rewards score programs in threads, and CPython 3.11 keeps the AST converter's recursion
depth per interpreter, not per thread: two threads parsing at once can fail with "AST constructor
recursion depth mismatch" (CPython gh-106905; seen in CI). Every parse and every compile of a tree
here holds this lock."""


def parse(source: str) -> ast.Module:
    """``ast.parse`` under :data:`_AST`."""
    with _AST:
        return ast.parse(source)


@lru_cache(maxsize=4096)
def _compiled(check: ast.Expression):
    with _AST:
        return compile(check, "<test check>", "eval")


def defined_names(*sources: str) -> frozenset[str]:
    """Names bound at the top level of the program (and setup, preamble): these are the
    program's, never the builtins of the same name. A source that does not parse binds none."""
    names: set[str] = set()
    for source in sources:
        try:
            tree = parse(source)
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
def plan_test(test: str, program_names: frozenset[str] = frozenset(),
              imported: frozenset[tuple[str, str]] = frozenset()) -> TestPlan | None:
    """The plan of a test made only of asserts (or a HumanEval ``check``), imports of
    :data:`SAFE_MODULES` and literals bound to names it never reads, else None. ``imported``: (name, ``math.<attr>``) bound by an import in
    the setup or preamble (not rebound by the program), so the test's ``isclose`` is math's."""
    try:
        tree = parse(test)
    except (SyntaxError, ValueError):
        return None
    aliases = {"math": "math", **dict(imported)}
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    body = [s for s in tree.body if not _bind_import(s, aliases) and not _unread_constant(s, read)]
    asserts = _inline_check(body, aliases) if len(body) == 2 else None
    if asserts is None:
        asserts = body
    if not asserts or not all(isinstance(s, ast.Assert) for s in asserts):
        return None
    probes: list = []
    splitter = _Splitter(program_names, aliases, probes)
    try:
        checks = [ast.fix_missing_locations(ast.Expression(splitter.visit(s.test))) for s in asserts]
    except _NotHere:
        return None
    return TestPlan(tuple(probes), tuple(checks))


def imported_names(*sources: str) -> frozenset[tuple[str, str]]:
    """(name, ``module.attr``) for every ``from <safe module> import attr [as name]`` at the top
    level of ``sources`` (``import *`` binds every function of :data:`SAFE_MATH`)."""
    bound: dict[str, str] = {}
    for source in sources:
        try:
            statements = parse(source).body
        except (SyntaxError, ValueError):
            continue
        for statement in statements:
            if isinstance(statement, ast.ImportFrom):
                _bind_import(statement, bound)
    return frozenset((name, target) for name, target in bound.items() if "." in target)


def _unread_constant(statement: ast.stmt, read: set[str]) -> bool:
    """``METADATA = {...}`` (HumanEval): a literal bound to names the test never reads."""
    if not isinstance(statement, ast.Assign) or not all(
            isinstance(t, ast.Name) and t.id not in read for t in statement.targets):
        return False
    try:
        ast.literal_eval(statement.value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return False
    return True


def _bind_import(statement: ast.stmt, aliases: dict[str, str]) -> bool:
    """Record an import of a safe module in ``aliases`` (name -> ``math`` or ``math.attr``);
    False for any other statement (an import of another module included)."""
    if isinstance(statement, ast.Import) and all(a.name in SAFE_MODULES for a in statement.names):
        aliases.update({a.asname or a.name: a.name for a in statement.names})
        return True
    if (isinstance(statement, ast.ImportFrom) and statement.module in SAFE_MODULES
            and not statement.level):
        for alias in statement.names:
            if alias.name == "*":
                aliases.update({name: f"{statement.module}.{name}" for name in SAFE_MATH})
            else:
                aliases[alias.asname or alias.name] = f"{statement.module}.{alias.name}"
        return True
    return False


def binop_call(name: str, left: ast.expr, op: ast.operator, right: ast.expr) -> ast.Call:
    return ast.Call(ast.Name(name, ast.Load()), [ast.Constant(OPERATORS[type(op)]), left, right], [])


def _inline_check(body: list[ast.stmt], aliases: dict[str, str]) -> list[ast.stmt] | None:
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
                  if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                  and not _bind_import(s, aliases)]
    if not all(isinstance(s, ast.Assert) for s in statements):
        return None

    class Substitute(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.copy_location(target, node) if node.id == param else node

    return [Substitute().visit(s) for s in statements]


class _NotHere(Exception):
    """The test uses something the parent cannot evaluate and the child would not have."""


class _Splitter(ast.NodeTransformer):
    """Keeps what the parent may evaluate itself and turns every other subtree into a probe."""

    def __init__(self, program_names: frozenset[str], aliases: dict[str, str], probes: list) -> None:
        self.program_names, self.aliases, self.probes = program_names, aliases, probes

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
        library = self._library(node)
        if library is not None:
            return library
        if isinstance(node, ast.Name) and self._safe_name(node.id):
            return node
        if isinstance(node, ast.Call) and self._safe_callee(node.func):
            node.func = self.visit(node.func)
            node.args = [self.visit(a) for a in node.args]
            node.keywords = [self.visit(k) for k in node.keywords]
            return node
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in METHOD_NAMES):
            return self._method(node)
        return self.probe(node)

    def _library(self, node: ast.AST) -> ast.AST | None:
        """``math.f`` (or ``m.f``, or ``f`` from ``from math import f``) as the parent's math;
        None if ``node`` is not such a name."""
        if isinstance(node, ast.Name) and "." in self.aliases.get(node.id, ""):
            module, attr = self.aliases[node.id].split(".", 1)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and self.aliases.get(node.value.id) in SAFE_MODULES):
            module, attr = self.aliases[node.value.id], node.attr
        else:
            return None
        if attr not in SAFE_MATH:  # e.g. math.prod: the test's import never runs in the child
            raise _NotHere(f"{module}.{attr}")
        return ast.copy_location(ast.Attribute(ast.Name(module, ast.Load()), attr, ast.Load()), node)

    def _method(self, node: ast.Call) -> ast.Call:
        """``x.m(args)`` with ``m`` a method of a plain type: made here on ``x``'s value. When
        ``x`` itself is a probe, it becomes a method probe (see :attr:`TestPlan.probes`)."""
        attribute = node.func
        call = ast.unparse(ast.Call(ast.Attribute(ast.Name(RECEIVER, ast.Load()), attribute.attr,
                                                  ast.Load()), node.args, node.keywords))
        first = len(self.probes)
        receiver = self.visit(attribute.value)
        helper = "__method__"
        if (isinstance(receiver, ast.Name) and receiver.id == f"__probe_{first}"
                and len(self.probes) == first + 1):
            self.probes[first] = (self.probes[first], call)
            helper = "__probed_method__"
        args = [receiver, ast.Constant(attribute.attr), *(self.visit(a) for a in node.args)]
        return ast.Call(ast.Name(helper, ast.Load()), args, [self.visit(k) for k in node.keywords])

    def _safe_name(self, name: str) -> bool:
        return name in SAFE_CALLS and name not in self.program_names

    def _safe_callee(self, func: ast.AST) -> bool:
        if self._library(func) is not None:
            return True
        return isinstance(func, ast.Name) and self._safe_name(func.id)


def _constant(node: ast.AST) -> bool:
    """Made of literals and operators only (``2 ** 10``, ``-1.5``, ``[0] * 3``)."""
    allowed = (ast.Constant, ast.BinOp, ast.UnaryOp, ast.operator, ast.unaryop, ast.List,
               ast.Tuple, ast.Set, ast.Load)
    return all(isinstance(n, allowed) for n in ast.walk(node))
