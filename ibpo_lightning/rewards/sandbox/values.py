"""A strict, data-only encoding of test values between the sandboxed child and the parent.

The child (:mod:`child`, which imports this file by path before the program runs) turns
the value of each probed expression into JSON with :func:`encode`; the parent turns it back
with :func:`decode` and compares there. Only plain data crosses: ``None``, ``bool``, ``int``,
``float``, ``complex``, ``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set`` and
``frozenset``, each checked with ``type(x) is ...`` (never ``isinstance``), so a subclass with a
lying ``__eq__``, ``__hash__`` or ``__bool__`` is refused rather than sent. The dict subclasses
of ``collections`` (``Counter``, ``OrderedDict``, ``defaultdict``) travel as plain dicts (a
reference solution may return one and the test compare it with a dict literal); they are read
with ``dict.items``, the C method of ``dict``, so no method the program can override runs.

Integers travel in hex (not limited by ``sys.set_int_max_str_digits``), floats as
``float.hex``. The encoder runs before the program can patch anything: it keeps its own
references to every builtin it uses (the default arguments below).
"""

import collections
import json
import operator

MAX_ITEMS = 200_000
"""Most values (containers and leaves together) in one encoded result."""
MAX_DEPTH = 100


MAX_RESULT = 1 << 20
"""Largest result (items of a repeated sequence, bits of an integer) :func:`binop` computes."""
_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "<<": operator.lshift,
           ">>": operator.rshift, "&": operator.and_, "|": operator.or_, "^": operator.xor,
           "@": operator.matmul}


class Unencodable(ValueError):
    """The value is not plain data (or is too big or too deep to send)."""


class Receiver:
    """In the parent: the decoded value on which a test calls a method (``f(x).count(2)``),
    sent by the child instead of the call's result; the parent makes the call (see
    ``library.probed_method``)."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value


def program_object(value, _type=type, _base=type.__dict__["__base__"].__get__,
                   _flags=type.__dict__["__flags__"].__get__, _heap=1 << 9, _object=object):
    """Whether ``value`` is an instance of a class the program wrote that derives from no type of
    the interpreter's (every class in its ``tp_base`` chain but ``object`` is a heap type: read
    from the type's C slots, which neither ``__class__`` nor a metaclass can fake). Its methods
    are the program's own answers; a ``list`` or ``int`` subclass, a ``deque`` subclass or a
    builtin object is not one."""
    cls = _type(value)
    while cls is not _object:
        if not _flags(cls) & _heap:
            return False
        cls = _base(cls)
    return True


_ITERATORS = (type(iter([])), type(iter(())), type(iter("")), type(iter(range(0))), type(map(int, [])),
              type(filter(None, [])), type(zip()), type(enumerate([])), type(reversed([])),
              type(x for x in []), type(iter(set())), type(iter({})), type(iter({}.values())),
              type(iter({}.items())), range)


def encode(value, _type=type, _len=len, _hex=hex, _fhex=float.hex, _items=dict.items,
           _dicts=(dict, collections.Counter, collections.OrderedDict, collections.defaultdict),
           _error=Unencodable, _dumps=json.dumps, _str=str.__str__, _bytes_hex=bytes.hex,
           _iterators=_ITERATORS, _iter=iter, _next=next, _stop=StopIteration):
    """JSON text of a plain value; :class:`Unencodable` otherwise. An iterator of the
    interpreter's own types (a generator, ``map``, ``filter``, ``zip``, ``range``, ...) travels as
    its items (read at most to the size limit) and is decoded as an iterator over them."""
    budget = [MAX_ITEMS]

    def walk(x, depth):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise _error("value too large or too deep")
        t = _type(x)
        if x is None:
            return ["n"]
        if t is bool:
            return ["b", x is True]
        if t is int:
            return ["i", _hex(x)]
        if t is float:
            return ["f", _fhex(x)]
        if t is complex:
            return ["c", _fhex(x.real), _fhex(x.imag)]
        if t is str:
            return ["s", _str(x)]
        if t is bytes:
            return ["y", _bytes_hex(x)]
        if t is list or t is tuple or t is set or t is frozenset:
            tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}[t]
            return [tag, [walk(item, depth + 1) for item in t.__iter__(x)]]
        if t in _dicts:
            return ["d", [[walk(k, depth + 1), walk(v, depth + 1)] for k, v in _items(x)]]
        if t in _iterators:
            items, it = [], _iter(x)
            while True:
                try:
                    item = _next(it)
                except _stop:
                    return ["I", items]
                items.append(walk(item, depth + 1))
        raise _error(f"not plain data: {t.__name__}")

    return _dumps(walk(value, 0), separators=(",", ":"))


def decode(text: str):
    """The value :func:`encode` wrote; ValueError on anything malformed (e.g. a forged line)."""
    return _decode(json.loads(text), 0)


def plain_copy(value, _type=type, _items=dict.items, _error=Unencodable,
               _dicts=(dict, collections.Counter, collections.OrderedDict, collections.defaultdict)):
    """A copy of a plain value made of exact builtin types only (dict subclasses become dicts),
    built without calling any method the program can override; :class:`Unencodable` otherwise.
    ``==`` between two such copies runs only the builtins' own comparisons."""
    budget = [MAX_ITEMS]

    def walk(x, depth):
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise _error("value too large or too deep")
        t = _type(x)
        if x is None or t is bool or t is int or t is float or t is complex or t is str \
                or t is bytes:
            return x
        if t is list:
            return [walk(item, depth + 1) for item in list.__iter__(x)]
        if t is tuple or t is set or t is frozenset:
            return t(walk(item, depth + 1) for item in t.__iter__(x))
        if t in _dicts:
            return {walk(k, depth + 1): walk(v, depth + 1) for k, v in _items(x)}
        raise _error(f"not plain data: {t.__name__}")

    return walk(value, 0)


def binop(op: str, left, right, _ops=_BINOPS, _type=type, _len=len, _abs=abs,
          _error=Unencodable):
    """``left <op> right`` on plain values, refused where the result could be huge (a sequence
    repeated, a power, a shift past :data:`MAX_RESULT`): arithmetic of a test on values the
    program chose, so it cannot lie (their own ``__sub__``) or stall the one computing it."""
    if op == "*" and (_type(left) in (str, bytes, list, tuple) or _type(right) in (str, bytes, list, tuple)):
        size, times = (left, right) if _type(right) is int else (right, left)
        if _type(times) is int and _len(size) * _abs(times) > MAX_RESULT:
            raise _error("repeated sequence too large")
    if op == "**" and _type(right) is int and _type(left) is int and _abs(left) > 1:
        if _abs(right) * left.bit_length() > MAX_RESULT:
            raise _error("power too large")
    if op == "<<" and _type(right) is int and right > MAX_RESULT:
        raise _error("shift too large")
    return _ops[op](left, right)


def decode_list(text: str) -> list:
    """The values of a JSON array of :func:`encode` outputs (how the child reports a test)."""
    nodes = json.loads(text)
    if not isinstance(nodes, list):
        raise ValueError("malformed values")
    return [_decode(node, 0) for node in nodes]


def _decode(node, depth: int):
    if depth > MAX_DEPTH or not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise ValueError("malformed value")
    tag, args = node[0], node[1:]
    if tag == "n" and not args:
        return None
    if len(args) == 1:
        (arg,) = args
        if tag == "b" and isinstance(arg, bool):
            return arg
        if tag == "i" and isinstance(arg, str):
            return int(arg, 16)
        if tag == "f" and isinstance(arg, str):
            return float.fromhex(arg)
        if tag == "s" and isinstance(arg, str):
            return arg
        if tag == "y" and isinstance(arg, str):
            return bytes.fromhex(arg)
        if tag in ("l", "t", "S", "F") and isinstance(arg, list):
            items = [_decode(item, depth + 1) for item in arg]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "R":
            return Receiver(_decode(arg, depth + 1))
        if tag == "I" and isinstance(arg, list):
            return iter([_decode(item, depth + 1) for item in arg])
        if tag == "d" and isinstance(arg, list):
            pairs = [(_decode(k, depth + 1), _decode(v, depth + 1)) for k, v in arg]
            return dict(pairs)
    if tag == "c" and len(args) == 2 and all(isinstance(a, str) for a in args):
        return complex(float.fromhex(args[0]), float.fromhex(args[1]))
    raise ValueError(f"malformed value with tag {tag!r}")
