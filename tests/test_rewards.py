"""Answer extraction, the exact numeric reward and the math_verify reward (real package)."""

import os
import pickle
import signal
import time
from pathlib import Path

import pytest

from ibpo_lightning.rewards import MathVerifyReward, extract_final_number, number_reward


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42", "42"),
        ("so x = 12.", "12"),
        ("It costs 1,234 dollars", "1234"),
        ("Total: $1,234,567.50", "1234567.50"),
        ("The result is -5", "-5"),
        ("x=-4", "-4"),
        ("20-13", "13"),
        ("3.5 then 2.", "2"),
        ("ends 1.5.", "1.5"),
        ("\\boxed{12} and later 13", "12"),
        ("first 3 then \\boxed{-7}, then 9", "-7"),
        ("\\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{-\\dfrac{3}{4}}", "-3/4"),
        ("\\boxed{x} so 7", "7"),
        ("48/2=24 clips\n#### 72\nThat used 3 apples.", "72"),
        ("#### 1,000 then 5", "1000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    ("completion", "answer", "reward"),
    [
        ("So the answer is 72.", "72", 1.0),
        ("So the answer is 71.", "72", 0.0),
        ("12.50", "12.5", 1.0),
        ("\\boxed{0.5}", "1/2", 1.0),
        ("It is 1,234", "1234", 1.0),
        ("It is -3", "-3", 1.0),
        ("It is 3", "-3", 0.0),
        ("no answer", "3", 0.0),
        ("#### 18", "Janet sells 9 eggs at $2 each.\n#### 18", 1.0),
    ],
)
def test_number_reward(completion, answer, reward):
    assert number_reward(completion, answer) == reward


@pytest.fixture(scope="module")
def reward():
    r = MathVerifyReward(num_workers=2, timeout_s=5.0)
    yield r
    r.close()


def test_math_verify_gsm8k_style(reward):
    completions = [
        "She has 48/2=24 clips. 24+48=72.\n#### 72",
        "#### 72\nThat used 3 apples.",
        "#### 1,234",
        "#### $18.00",
        "#### 18 dollars",
        "The answer is 71.\n#### 71",
        "I don't know",
    ]
    answers = ["72", "72", "1,234", "18", "Natalia ... 9*2 = <<9*2=18>>18\n#### 18", "72", "5"]
    assert reward(completions, answers) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_math_verify_math_style(reward):
    cases = [
        ("So $\\boxed{\\frac{1}{2}}$.", "0.5", 1.0),
        ("So $\\boxed{0.5}$.", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\dfrac12}", "1/2", 1.0),
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", 1.0),
        ("\\boxed{25}", "025", 1.0),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{\\text{(C)}}", "\\text{(C)}", 1.0),
        ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
        ("\\boxed{0.50001}", "0.5", 0.0),
        ("\\boxed{}", "1", 0.0),
    ]
    completions, answers, expected = zip(*cases)
    assert reward(list(completions), list(answers)) == list(expected)


NOTATIONS = [  # (completion, reference, score): equal numbers in another notation score 1, others 0
    ("\\boxed{8.7e8}", "8.7 \\times 10^{8}", 1.0),
    ("\\boxed{3e6}", "3000000", 1.0),
    ("\\boxed{3 \\times 10^{6}}", "3e6", 1.0),
    ("\\boxed{1.5E-3}", "0.0015", 1.0),
    ("\\boxed{\\frac{4 A}{3+3 i}}", "\\frac{4A}{3+3i}", 1.0),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\tfrac{1}{2}}", "\\frac12", 1.0),
    ("\\boxed{1,234,567}", "1234567", 1.0),
    ("\\boxed{12 \\text{ cm}}", "12", 1.0),
    ("\\boxed{50\\%}", "\\frac{1}{2}", 1.0),
    ("\\boxed{2 x y}", "2xy", 1.0),
    ("\\boxed{8.7e8}", "8.8 \\times 10^{8}", 0.0),
    ("\\boxed{3e6}", "3000001", 0.0),
    ("\\boxed{51\\%}", "\\frac{1}{2}", 0.0),
    ("\\boxed{\\frac{4 A}{3+3 i}}", "\\frac{4B}{3+3i}", 0.0),
    ("\\boxed{13 \\text{ cm}}", "12", 0.0),
    ("The rate is 2e5 per year, so \\boxed{2e5}", "200000", 1.0),
    # Minerva's gold solutions against its references (issue 31), each way round, with near misses
    ("\\boxed{-3./2}", "-3/2", 1.0),
    ("\\boxed{-1./3}", "-\\frac{1}{3}", 1.0),
    ("\\boxed{-1.5}", "-3./2", 1.0),
    ("\\boxed{-3./2}", "-5/2", 0.0),
    ("\\boxed{1950}", "1950^\\circ C", 1.0),
    ("\\boxed{1950^{\\circ} \\mathrm{C}}", "1950", 1.0),
    ("\\boxed{1950^\\circ C}", "1951", 0.0),
    ("\\boxed{0.003}^{\\prime \\prime}", "0.003^{\\prime \\prime}", 1.0),
    ("\\boxed{0.003^{\\prime\\prime}}", "0.003", 1.0),
    ("\\boxed{0.003^{\\prime\\prime}}", "0.03", 0.0),
    ("\\boxed{E_{1},E_{2}}", "E_1, E_2", 1.0),
    ("\\boxed{E_1, E_2}", "E_{1},E_{2}", 1.0),
    ("\\boxed{E_{1},E_{3}}", "E_1, E_2", 0.0),
    ("\\boxed{\\frac{4 A}{3+3 i} e^{i t}}", "\\frac{4A}{3+3i}e^{it}", 1.0),
    ("\\boxed{\\frac{4A}{3+3i}e^{it}}", "\\frac{4 A}{3+3 i} e^{i t}", 1.0),
    ("\\boxed{\\frac{4 A}{3+3 i} e^{i t}}", "\\frac{4A}{3+3i}e^{2it}", 0.0),
    ("\\boxed{x^{\\prime}+\\frac{r}{V} x-r c=0}", "x' + \\frac{r}{V}x - rc = 0", 1.0),
    ("\\boxed{\\sin x + 2 t}", "\\sin x + 2t", 1.0),
]


def test_math_verify_reads_every_common_notation(reward):
    scores = reward([c for c, _, _ in NOTATIONS], [a for _, a, _ in NOTATIONS])
    assert scores == [s for _, _, s in NOTATIONS]


def test_math_verify_rejects_mismatched_lengths(reward):
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        reward(["1", "2"], ["1"])


def test_math_verify_pickles_without_its_pool(reward):
    reward(["1"], ["1"])
    copy = pickle.loads(pickle.dumps(reward))
    assert copy._pool is None
    assert copy(["\\boxed{3}"], ["3"]) == [1.0]
    copy.close()


def test_math_verify_slow_item_times_out():
    reward = MathVerifyReward(num_workers=1, timeout_s=1.0)
    try:
        reward(["warm up"], ["1"])
        start = time.monotonic()
        # Comparing 9^(9^9) with 3 makes sympy work far longer than the timeout.
        scores = reward(["\\boxed{9^{9^{9}}}", "\\boxed{3}"], ["3", "3"])
        assert scores == [0.0, 1.0]
        assert time.monotonic() - start < 4 * 1.0 + 5
    finally:
        reward.close()


def test_math_verify_recovers_from_a_dead_worker():
    reward = MathVerifyReward(num_workers=2, timeout_s=5.0)
    try:
        assert reward(["\\boxed{1}"], ["1"]) == [1.0]
        for process in list(reward._pool._processes.values()):
            os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.5)
        scores = reward(["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"], ["1", "2", "3"])
        assert len(scores) == 3 and set(scores) <= {0.0, 1.0}
        assert reward(["\\boxed{1}", "\\boxed{2}"], ["1", "2"]) == [1.0, 1.0]
    finally:
        reward.close()


def test_gold_sweep_script_scores_gold_solutions_right_and_plus_one_wrong(shared_data):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gold_sweep", Path(__file__).parents[1] / "scripts/gold_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    results = {r["benchmark"]: r for r in sweep.main(["--data-dir", str(shared_data), "--limit", "40"])}
    assert results["math500"]["solutions"] == 40 and results["gsm8k"]["solutions"] == 40
    for r in results.values():
        assert r["false_negative_rate"] == 0.0 and r["false_positive_rate"] == 0.0, r
