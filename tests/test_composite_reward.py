"""Shaping terms (format, length), their weighted composition with a task's answer reward, and
rewards as components: any callable, closed with the task."""

import json
import pickle

import pytest

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.rewards import (
    CodeReward,
    FormatReward,
    LengthPenalty,
    MathVerifyReward,
    NumberReward,
    WeightedReward,
    number_reward,
)
from ibpo_lightning.tasks import CodeTask, JsonlTask


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
    task = JsonlTask(heldout_path=str(path), reward=NumberReward(),
                     extra_rewards=[FormatReward(weight=0.1), LengthPenalty(weight=0.5, soft_limit=20, hard_limit=60)])
    long = "The answer, after a long story, is \\boxed{2}"
    completions = ["\\boxed{2}", "2", "\\boxed{3}", long]
    penalty = 0.5 * (len(long) - 20) / 40
    assert 0 < penalty < 0.5
    assert task.score(completions, ["2"] * 4) == pytest.approx([1.1, 1.0, 0.1, 1.1 - penalty])
    assert task.verify(completions, ["2"] * 4) == [1.0, 1.0, 0.0, 1.0]
    plain = JsonlTask(heldout_path=str(path), reward=NumberReward())
    assert plain.score(completions, ["2"] * 4) == plain.verify(completions, ["2"] * 4)


class _Counting:
    """A reward object with workers to stop: counts its close() calls."""

    def __init__(self) -> None:
        self.closed = 0

    def __call__(self, completions, answers):
        return [float(c == a) for c, a in zip(completions, answers)]

    def close(self) -> None:
        self.closed += 1


def test_reward_objects_are_closed_by_the_task_and_the_datamodule(tmp_path, shared_data):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}?", "answer": f"#### {i}"}) + "\n" for i in range(4)))
    reward = _Counting()
    task = JsonlTask(train_path=str(path), reward=reward, extra_rewards=[FormatReward(weight=0.1)])
    assert task.score(["1", "\\boxed{x}"], ["1", "2"]) == pytest.approx([1.0, 0.1])
    task.close()
    RLDataModule(task, prompts_per_step=1, steps=1).teardown("fit")
    assert reward.closed == 2
    code = CodeTask(str(shared_data / "code" / "mbpp.jsonl"), reward=reward)
    code.close()
    assert reward.closed == 3


def test_default_rewards_and_their_workers(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    task = JsonlTask(heldout_path=str(path))
    assert isinstance(task.reward, MathVerifyReward)
    assert task.verify(["\\boxed{2}", "\\boxed{3}"], ["2", "2"]) == [1.0, 0.0]
    assert task.reward._pool is not None
    copy = pickle.loads(pickle.dumps(task.reward))  # a spawned process gets one without workers
    assert copy._pool is None and copy.num_workers == task.reward.num_workers
    task.close()
    assert task.reward._pool is None
    code = pickle.loads(pickle.dumps(CodeReward(workers=3, timeout_s=2.0)))
    assert code.workers == 3 and code.config.timeout_s == 2.0
    with pytest.raises(TypeError, match="callable"):
        JsonlTask(heldout_path=str(path), reward="number")
