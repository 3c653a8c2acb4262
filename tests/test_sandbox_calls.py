"""Hostile programs against the calls a test makes: library functions and methods of returned values.

A test that calls ``math.isclose`` or ``f(x).count(2)`` must not let the program answer for the
library or for a builtin type's method: the calls are made in the parent on decoded values
(``rewards/sandbox/library.py``). As in ``test_sandbox.py``, each program's tests pass only if
its attack worked, so every case must score 0, leave no process and end in time; the honest
programs beside them must still score 1 in every form.
"""

import pytest

from ibpo_lightning.rewards import run_tests
from tests.test_sandbox import HOSTILE, _children_before_the_test, _hostile  # noqa: F401

_PATCH_ISCLOSE = "import math\nmath.isclose = lambda *a, **k: True\n"
_SWAP_MATH = ("import sys, types\nfake = types.ModuleType('math')\n"
              "fake.isclose = fake.sqrt = lambda *a, **k: True\nsys.modules['math'] = fake\n")
_WRONG = "def f(x):\n    return 0.0\n"
_ISCLOSE = "assert math.isclose(f(2), 12.566, rel_tol=0.001)"
LIBRARY_CASES = {  # name: (program, test, setup)
    "patched math.isclose, import in the test": (_PATCH_ISCLOSE + _WRONG, "import math\n" + _ISCLOSE, ""),
    "patched math.isclose, from-import in the test": (
        _PATCH_ISCLOSE + _WRONG, "from math import isclose\nassert isclose(f(2), 12.566)", ""),
    "patched math.isclose, from-import in the setup": (
        _PATCH_ISCLOSE + _WRONG, "assert isclose(f(2), 12.566, rel_tol=0.001)", "from math import isclose"),
    "patched math.isclose, import math as m": (
        _PATCH_ISCLOSE + _WRONG, "import math as m\nassert m.isclose(f(2), 12.566)", ""),
    "patched math.isclose, import in a check function": (
        _PATCH_ISCLOSE + _WRONG,
        "def check(candidate):\n    import math\n    assert math.isclose(candidate(2), 12.566)\n\ncheck(f)", ""),
    "math swapped in sys.modules, import in the test": (_SWAP_MATH + _WRONG, "import math\n" + _ISCLOSE, ""),
    "math swapped in sys.modules, math.sqrt": (
        _SWAP_MATH + "def f(x):\n    return -1\n", "import math\nassert math.sqrt(f(4)) == 2", ""),
    "math swapped in sys.modules, a test the child judges": (
        _SWAP_MATH + _WRONG, "for _ in range(1):\n    import math\n    " + _ISCLOSE, ""),
    "patched math.isclose, a test the child judges": (
        _PATCH_ISCLOSE + _WRONG, "for _ in range(1):\n    import math\n    " + _ISCLOSE, ""),
    "huge factorial of a returned value": (
        "def f(x):\n    return 10 ** 9\n", "import math\nassert math.factorial(f(1)) > 0", ""),
    "quadratic divmod of returned values": (
        "def f(x):\n    return 7 ** (100000 if x else 50000)\n", "assert divmod(f(1), f(0))[0] > 0", ""),
}
_LYING_COUNT = "class L(list):\n    def count(self, x):\n        return 2\n"
METHOD_CASES = {  # name: (program, test)
    "list subclass with a lying count": (_LYING_COUNT + "def f(x):\n    return L([1])\n",
                                         "assert f([1, 2, 2]).count(2) == 2"),
    "str subclass with a lying startswith": (
        "class S(str):\n    startswith = lambda *a: True\ndef f(x):\n    return S('no')\n",
        "assert f(1).startswith('yes')"),
    "str subclass with a lying upper": (
        "class S(str):\n    upper = lambda self: 'ABC'\ndef f(x):\n    return S('x')\n",
        "assert f('abc').upper() == 'ABC'"),
    "dict subclass with a lying get": (
        "class D(dict):\n    get = lambda *a: 3\ndef f(x):\n    return D()\n", "assert f(1).get('a') == 3"),
    "dict subclass with lying keys": (
        "class D(dict):\n    keys = lambda self: {'a', 'b'}\ndef f(x):\n    return D()\n",
        "assert set(f(1).keys()) == {'a', 'b'}"),
    "deque subclass with a lying count": (
        "import collections\nclass Q(collections.deque):\n    count = lambda *a: 2\n"
        "def f(x):\n    return Q()\n", "assert f([1, 2, 2]).count(2) == 2"),
    "method that returns a liar": (
        "class Liar:\n    __eq__ = lambda *a: True\nclass A:\n    def count(self, x):\n"
        "        return Liar()\ndef f(x):\n    return A()\n", "assert f([1, 2, 2]).count(2) == 2"),
    "join over a list subclass": (
        "class M(list):\n    __iter__ = lambda self: iter(['a', 'b'])\ndef f(x):\n    return M()\n",
        "assert ','.join(f(1)) == 'a,b'"),
    "join of two returned values past the size limit": (
        "def f(x):\n    return 'x' * 100000 if x else ['a'] * 100000\n",
        "assert len(f(1).join(f(0))) == 1"),
    "method call in a test the child judges": (
        _LYING_COUNT + "def f(x):\n    return L([1])\n",
        "for _ in range(1):\n    assert f([1, 2, 2]).count(2) == 2"),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_CASES))
def test_library_calls_cannot_be_replaced(case):
    program, test, setup = LIBRARY_CASES[case]
    _hostile(f"library: {case}", program, tests=[test], setup=setup)


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_methods_of_returned_values_cannot_lie(case):
    program, test = METHOD_CASES[case]
    _hostile(f"method: {case}", program, tests=[test])


_AREA = "import math\ndef f(r):\n    return math.pi * r * r\n"
HONEST = {  # the same forms with honest programs: every test passes
    "library functions": (_AREA, [
        "import math\n" + _ISCLOSE, "from math import isclose as close\nassert close(f(2), 12.566, rel_tol=0.001)",
        _ISCLOSE, "import math\nassert math.floor(f(1)) == 3 and math.gcd(12, int(f(2))) == 12",
        "import math\nassert math.prod([f(1) > 3, 2]) == 2",  # math.prod: left to the child
        "assert divmod(int(f(1)), 2) == (1, 1) and int(f(1)) // 2 == 1",
        "def check(candidate):\n    import math\n    assert math.isclose(candidate(2), 12.566, rel_tol=0.001)\n\ncheck(f)",
        "for r in (1, 2):\n    import math\n    assert math.isclose(f(r), math.pi * r * r)"], ""),
    "library function from the setup": (_AREA, ["assert isclose(f(2), 12.566, rel_tol=0.001)"],
                                        "from math import isclose"),
    "methods of returned values": (
        "from collections import Counter\ndef f(x):\n    return list(x)\ndef g(x):\n    return Counter(x)\n"
        "def h(x):\n    return (str(i) for i in x)\n", [
            "assert f([1, 2, 2]).count(2) == 2", "assert f('ab').index('b') == 1",
            "assert ''.join(f('ab')).upper() == 'AB'", "assert g('aab').get('a') == 2",
            "assert sorted(g('ab').keys()) == ['a', 'b']", "assert ', '.join(h([1, 2])) == '1, 2'",
            "assert ', '.join(map(str, f([1, 2]))) == '1, 2'", "assert f([3, 1]).copy() == [3, 1]"], ""),
    "methods in a test the child judges": (
        "def f(x):\n    return 2 * x\n", [
            "out = []\nfor x in [1, 2]:\n    out.append(f(x))\nassert out == [2, 4]\n"
            "assert ','.join(map(str, out)).split(',') == ['2', '4'] and out.count(2) == 1",
            "import collections\nq = collections.deque([1])\nq.append(f(1))\nassert q.count(2) == 1"], ""),
    "methods of the program's own classes": (
        "class Solution:\n    def reverse(self, x):\n        return int(str(x)[::-1])\n"
        "class Stack:\n    def __init__(self):\n        self.items = [1, 2]\n    def pop(self):\n"
        "        return self.items.pop()\n", [
            "assert Solution().reverse(123) == 321", "assert Stack().pop() == 2",
            "def check(candidate):\n    assert candidate(120) == 21\n\ncheck(Solution().reverse)"], ""),
}


@pytest.mark.parametrize("case", sorted(HONEST))
def test_honest_programs_pass_every_form(case):
    program, tests, setup = HONEST[case]
    result = run_tests(program, tests, setup=setup, config=HOSTILE)
    assert result.reward() == 1.0, result


def test_a_generator_is_not_a_list():
    """A returned generator travels as its items but stays an iterator: ``== [..]`` is False, as
    it would be in the program's own process."""
    program = "def f(x):\n    return (i for i in x)\n"
    assert run_tests(program, ["assert f([1]) == [1]"], config=HOSTILE).reward() == 0.0
    assert run_tests(program, ["assert list(f([1])) == [1]"], config=HOSTILE).reward() == 1.0
