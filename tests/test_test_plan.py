"""Test planning (what the child computes, what the parent judges) and the plain-value codec."""

import collections
import itertools
import math

import pytest

from ibpo_lightning.rewards.sandbox.values import Receiver, Unencodable, decode, encode, plain_copy
from ibpo_lightning.rewards.sandbox.harden import harden
from ibpo_lightning.rewards.sandbox.plan import defined_names, imported_names, plan_test


def test_probes_are_the_parts_that_need_the_program():
    plan = plan_test("assert set(f(1, [2])) == {1, 2} and math.isclose(g(x), 0.5, rel_tol=1e-6)")
    assert plan.probes == ("f(1, [2])", "g(x)")
    assert plan.passes([[2, 1, 1], 0.5]) and not plan.passes([[2, 1, 1], 0.6])
    assert not plan.passes([[2, 1]])  # a missing value fails


def test_a_builtin_name_the_program_defines_is_the_programs():
    names = defined_names("def max(a):\n    return 1\n")
    assert "max" in names
    assert plan_test("assert max([3]) == 1", names).probes == ("max([3])",)
    assert plan_test("assert max([3]) == 3").probes == ()


def test_arithmetic_on_program_values_runs_here_within_bounds():
    plan = plan_test("assert abs(f(1) - 3.5) < 1e-9 and [0] * n(1) == [0, 0]")
    assert plan.probes == ("f(1)", "n(1)")
    assert plan.passes([3.5, 2]) and not plan.passes([3.6, 2])
    assert not plan.passes([3.5, 10 ** 12])  # a sequence repeated past the bound is refused
    assert not plan_test("assert 2 ** n(1) > 0").passes([10 ** 9])
    assert plan_test("assert f(1) == 2 ** 10").probes == ("f(1)",)
    assert plan_test("assert all(f(i) for i in range(3))").probes == ("[f(i) for i in range(3)]",)


def test_humaneval_check_is_inlined_and_other_shapes_are_not_planned():
    check = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2)\n\ncheck(inc)"
    assert plan_test(check).probes == ("inc(1)", "inc(2)")
    assert plan_test("for i in range(3):\n    assert f(i) == i") is None
    assert plan_test("x = f(1)\nassert x == 2") is None
    assert plan_test("assert (") is None


def test_library_imports_in_the_test_or_setup_are_the_parents():
    for test in ("import math\nassert math.isclose(f(2), 12.566, rel_tol=1e-3)",
                 "from math import isclose\nassert isclose(f(2), 12.566, rel_tol=1e-3)",
                 "import math as m\nassert m.isclose(f(2), 12.566, rel_tol=1e-3)"):
        plan = plan_test(test)
        assert plan.probes == ("f(2)",)
        assert plan.passes([12.5664]) and not plan.passes([0.0])
    from_setup = plan_test("assert isclose(f(2), 1.0)", frozenset(), imported_names("from math import isclose"))
    assert from_setup.probes == ("f(2)",) and from_setup.passes([1.0])
    assert plan_test("assert isclose(f(2), 1.0)").probes == ("isclose(f(2), 1.0)",)  # not math's
    assert imported_names("from math import *") >= {("sqrt", "math.sqrt")}
    assert plan_test("import numpy\nassert f(1) == 2") is None  # another module: the child's
    assert plan_test("import math\nassert math.prod(f(1)) == 2") is None  # not evaluated here
    assert not plan_test("import math\nassert math.factorial(f(1)) > 0").passes([10 ** 9])


def test_methods_of_plain_types_are_called_here():
    plan = plan_test("assert f([1, 2, 2]).count(2) == 2 and ', '.join(g(1)) == 'a, b'")
    assert plan.probes == (("f([1, 2, 2])", "__sandbox_receiver__.count(2)"), "g(1)")
    assert plan.passes([Receiver([1, 2, 2]), ["a", "b"]])
    assert not plan.passes([Receiver([1, 2]), ["a", "b"]])
    assert plan.passes([2, ["a", "b"]])  # the program's own object answered in the child
    assert plan.passes([Receiver(b"\x01\x02\x02"), ["a", "b"]])  # bytes.count(2) is 2 too
    assert plan_test("assert sorted(f(1)).index(3) == 0").probes == ("f(1)",)
    assert plan_test("assert f(1).most_common(1) == [(1, 2)]").probes == ("f(1).most_common(1)",)
    huge = plan_test("assert len(f(1).join(g(1))) > 0")
    assert not huge.passes([Receiver("x" * 100_000), ["a"] * 100_000])
    mapped = plan_test("assert len(f(1).join(map(str, g(1)))) > 0")  # the items as an iterator
    assert not mapped.passes([Receiver("x" * 100_000), iter(["a"] * 100_000)])
    assert plan_test("assert f(1).join(map(str, g(1))) == '1-2'").passes([Receiver("-"), iter(["1", "2"])])
    assert plan_test("assert f(1).center(10 ** 12)").probes == ("f(1).center(10 ** 12)",)  # padding


def test_humaneval_metadata_is_left_out_of_the_plan():
    check = "METADATA = {'author': 'x'}\n\ndef check(candidate):\n    assert candidate(1) == 2\n\ncheck(inc)"
    assert plan_test(check).probes == ("inc(1)",)
    assert plan_test("LIMIT = 3\nassert f(1) == LIMIT") is None  # read by the test: not dropped


def test_harden_rewrites_comparisons_and_asserts():
    text = harden("for i in range(2):\n    assert f(i) == i and i not in g()")
    assert "__sandbox_compare__(f(i), '==', i)" in text
    assert "__sandbox_compare__(i, 'not in', g())" in text
    assert "assert __sandbox_truth__(" in text
    assert "__sandbox_binop__('-', f(1), 2)" in harden("assert abs(f(1) - 2) < 1e-6")


@pytest.mark.parametrize("value", [None, True, 0, -(10 ** 5000), 1.5, math.inf, 2j, "s", b"\x00",
                                   [1, (2, 3)], {"a": {1, 2}}, frozenset({1}), {(1, 2): [None]}],
                         ids=lambda value: type(value).__name__)
def test_codec_round_trip(value):
    assert decode(encode(value)) == value and type(decode(encode(value))) is type(value)
    assert plain_copy(value) == value


def test_codec_sends_an_iterator_as_an_iterator_over_its_items():
    """``', '.join(map(str, f(x)))``: the map is evaluated in the child, read there, and is an
    iterator again in the parent (not a list: ``f(x) == [1]`` is False for a generator)."""
    for value in (map(str, [1, 2]), (i for i in "ab"), zip([1], [2]), range(3), iter({4})):
        decoded = decode(encode(value))
        assert type(decoded) is not list and iter(decoded) is decoded
    assert list(decode(encode(map(str, [1, 2])))) == ["1", "2"]

    def endless():
        while True:
            yield 1

    with pytest.raises(Unencodable):  # read only to the size limit
        encode(endless())
    with pytest.raises(Unencodable):  # not the interpreter's own iterator type
        encode(itertools.count())


def test_codec_refuses_what_is_not_plain_data():
    class L(int):
        pass

    for value in (L(1), [L(1)], {1: object()}, collections.deque([1]), [[]] * 300_000):
        with pytest.raises(Unencodable):
            encode(value)
        with pytest.raises(Unencodable):
            plain_copy(value)
    nested = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(Unencodable):
        encode(nested)
    for forged in ('["i", 3]', '["x", "1"]', '["l", [["S", [["l", []]]]]]', "[]"):
        with pytest.raises((ValueError, TypeError)):
            decode(forged)
