"""Shaping terms (format, length) and their weighted composition with a task's answer reward."""

import json

import pytest

from ibpo_lightning.rewards import FormatReward, LengthPenalty, WeightedReward, number_reward
from ibpo_lightning.tasks import JsonlTask


@pytest.mark.parametrize(
    ("marker", "text", "value"),
    [
        ("boxed", "so \\boxed{12}.", 1.0),
        ("boxed", "so \\boxed{}.", 0.0),
        ("boxed", "so 12.", 0.0),
        ("answer_tag", "think <answer> 1 + 2 </answer>", 1.0),
        ("answer_tag", "<answer>  </answer>", 0.0),
        ("answer_tag", "<answer> 1 + 2", 0.0),
        ("hashes", "work\n#### 72", 1.0),
        ("hashes", "work #### 72", 0.0),
    ],
)
def test_format_reward(marker, text, value):
    assert FormatReward(marker=marker).value(text, "") == value


def test_format_reward_rejects_unknown_marker():
    with pytest.raises(ValueError, match="marker"):
        FormatReward(marker="bold")


def test_length_penalty_is_zero_then_linear_then_minus_one():
    term = LengthPenalty(soft_limit=10, hard_limit=20)
    assert term(["x" * 5, "x" * 10, "x" * 15, "x" * 20, "x" * 99], [""] * 5) == [0.0, 0.0, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="soft_limit < hard_limit"):
        LengthPenalty(soft_limit=5, hard_limit=5)


def test_weighted_reward_sums_weighted_terms():
    def exact(completions, answers):
        return [number_reward(c, a) for c, a in zip(completions, answers)]

    reward = WeightedReward([(1.0, exact), (0.2, FormatReward(marker="boxed")),
                             (0.5, LengthPenalty(soft_limit=10, hard_limit=30))])
    completions = ["\\boxed{4}", "4", "\\boxed{5}", "\\boxed{4} " + "x" * 20]
    # length of the last one: 30 chars -> penalty -1 at weight 0.5
    assert reward(completions, ["4"] * 4) == pytest.approx([1.2, 1.0, 0.2, 1.2 - 0.5])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        reward(["a", "b"], ["1"])
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward([])


def test_with_terms_uses_each_terms_own_weight():
    reward = WeightedReward.with_terms(lambda c, a: [1.0] * len(c), [FormatReward(weight=0.3)])
    assert reward(["\\boxed{1}", "1"], ["1", "1"]) == pytest.approx([1.3, 1.0])


def test_jsonl_task_extra_rewards_shape_score_but_not_verify(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    task = JsonlTask(heldout_path=str(path), reward="number",
                     extra_rewards=[FormatReward(weight=0.1), LengthPenalty(weight=0.5, soft_limit=20, hard_limit=60)])
    long = "The answer, after a long story, is \\boxed{2}"
    completions = ["\\boxed{2}", "2", "\\boxed{3}", long]
    penalty = 0.5 * (len(long) - 20) / 40
    assert 0 < penalty < 0.5
    assert task.score(completions, ["2"] * 4) == pytest.approx([1.1, 1.0, 0.1, 1.1 - penalty])
    assert task.verify(completions, ["2"] * 4) == [1.0, 1.0, 0.0, 1.0]
    plain = JsonlTask(heldout_path=str(path), reward="number")
    assert plain.score(completions, ["2"] * 4) == plain.verify(completions, ["2"] * 4)
