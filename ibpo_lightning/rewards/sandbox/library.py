"""What a test may compute in the trusted parent on the values the program returned.

:mod:`plan` evaluates the parts of an assert that do not need the program here, with these
functions only: a fixed list of pure builtins, the functions of :mod:`math` (imported by the
test, its setup or preamble, or not at all), the methods of the plain builtin types (``str``,
``list``, ``dict``, ...) called on decoded values, and arithmetic (:func:`values.binop`). The
program's process never sees them, so a patched ``math.isclose``, a module swapped in
``sys.modules`` or a ``list`` subclass whose ``count`` lies cannot answer for them.

Every operand here is plain data the test wrote or the child sent (at most 200,000 items in a
256 KiB line), and nothing may cost much more than reading it: calls whose result or running
time could grow past that (padding a string to a width the program chose, ``x.join`` or
``x.replace`` of two program values, a factorial, a gcd or a division of integers of millions
of bits) are refused, which fails the test.
"""

from __future__ import annotations

import builtins
import math

from ibpo_lightning.rewards.sandbox.values import MAX_RESULT, Receiver, Unencodable, binop

SAFE_CALLS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "float", "frozenset",
    "int", "isinstance", "len", "list", "max", "min", "ord", "repr", "reversed", "round", "set",
    "sorted", "str", "sum", "tuple", "type", "zip",
})
"""Pure builtins a test may apply to values here; a name the program (or setup, or preamble)
defines itself is the program's and becomes part of a probe instead."""
SAFE_MODULES = frozenset({"math"})
"""Modules a test may import (``import math``, ``from math import isclose``) and still be
judged here."""
MAX_INT_BITS = 1 << 16
"""Largest integer (in bits) a quadratic operation (``//``, ``%``, ``divmod``, ``gcd``,
``isqrt``) takes here; 2 ** 65536 has 19,729 digits."""
_QUADRATIC = frozenset({"gcd", "lcm", "isqrt", "comb", "perm", "factorial", "remainder", "fmod"})
_UNSAFE_MATH = frozenset({"prod"})  # a product of 200,000 program integers
_LIST_ITERATOR = type(iter([]))  # what an iterator the child sent decodes to
_PLAIN = (str, bytes, list, tuple, dict, set, frozenset, int, float, complex, bool)
_UNSAFE_METHODS = frozenset({
    "center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map", "maketrans",
    "translate", "fromkeys", "fromhex", "from_bytes", "to_bytes",
})
METHODS = {t: frozenset(n for n in dir(t) if not n.startswith("_") and n not in _UNSAFE_METHODS)
           for t in _PLAIN}
"""Methods a test may call on a plain value, by exact type."""
METHOD_NAMES = frozenset().union(*METHODS.values())


def _guarded_math(name: str):
    function = getattr(math, name)
    if name not in _QUADRATIC:
        return function

    def guarded(*args):
        _check_ints(args, small=name in ("factorial", "comb", "perm"))
        return function(*args)

    guarded.__name__ = name
    return guarded


def _check_ints(args, small: bool = False) -> None:
    for arg in args:
        if type(arg) is int and (arg.bit_length() > MAX_INT_BITS or small and abs(arg) > 20_000):
            raise Unencodable("integer too large for this operation here")


class _Math:
    """The functions and constants of :mod:`math` a test may use here (a namespace, not the
    module: ``math.factorial(10 ** 9)`` must not run in the parent)."""

    def __init__(self) -> None:
        for name in dir(math):
            if not name.startswith("_") and name not in _UNSAFE_MATH:
                setattr(self, name, _guarded_math(name))


MATH = _Math()
SAFE_MATH = frozenset(vars(MATH))


def call_method(target, name: str, *args, **kwargs):
    """``target.<name>(*args, **kwargs)`` on a value here: a plain value (exact type) and one of
    its :data:`METHODS`; a :class:`Receiver` the child sent stands for its value. Refused where
    the result could be huge."""
    value = target.value if type(target) is Receiver else target
    if name not in METHODS.get(type(value), ()):
        raise Unencodable(f"{type(value).__name__}.{name} is not evaluated here")
    # an iterator the child sent (``map(str, f(x))``) as the list it stands for, so that its size is
    # checked like a list's and reading it for the check does not leave the call an empty one
    args = tuple(list(a) if type(a) is _LIST_ITERATOR else a for a in args)
    if name in ("join", "replace"):
        _check_size(value, name, args)
    return getattr(value, name)(*args, **kwargs)


def probed_method(probe, name: str, *args, **kwargs):
    """A method call whose receiver the child evaluated: the child sends the receiver when it is
    plain data (the call is made here) or, for an object of a class the program wrote itself,
    the call's result (the method is the program's own answer)."""
    if type(probe) is Receiver:
        return call_method(probe, name, *args, **kwargs)
    return probe


def _check_size(value, name: str, args: tuple) -> None:
    """Refuse ``value.join(items)`` and ``value.replace(old, new)`` past :data:`MAX_RESULT`."""
    if name == "join" and args:
        items = list(args[0]) if type(args[0]) in (list, tuple, set, frozenset, dict, str) else []
        size = len(value) * max(len(items) - 1, 0) + sum(len(i) for i in items if type(i) in (str, bytes))
    elif name == "replace" and len(args) >= 2 and type(args[0]) is type(value) is type(args[1]):
        size = len(value) + value.count(args[0]) * max(len(args[1]) - len(args[0]), 0)
    else:
        return
    if size > MAX_RESULT:
        raise Unencodable(f"{name} result too large")


def _division(op: str, left, right):
    if op in ("//", "%"):
        _check_ints((left, right))
    return binop(op, left, right)


def _divmod(left, right):
    _check_ints((left, right))
    return divmod(left, right)


PARENT_GLOBALS = {
    "__builtins__": {**{name: getattr(builtins, name) for name in SAFE_CALLS}, "divmod": _divmod},
    "math": MATH, "__binop__": _division, "__method__": call_method,
    "__probed_method__": probed_method,
}
"""The scope the parent's checks are evaluated in (plus the probes' values)."""
