"""Test planning (what the child computes, what the parent judges) and the plain-value codec."""

import math

import pytest

from ibpo_lightning.rewards.sandbox.values import Unencodable, decode, encode, plain_copy
from ibpo_lightning.rewards.sandbox.harden import harden
from ibpo_lightning.rewards.sandbox.plan import defined_names, plan_test


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


def test_codec_refuses_what_is_not_plain_data():
    class L(int):
        pass

    for value in (L(1), [L(1)], {1: object()}, iter([]), [[]] * 300_000):
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
