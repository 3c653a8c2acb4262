"""The Countdown checker (safe AST evaluation, each number once, the target) and CountdownTask."""

import json
import re

import pytest

from ibpo_lightning.rewards import FormatReward
from ibpo_lightning.rewards.countdown import (
    InvalidEquation,
    check_equation,
    countdown_reward,
    evaluate_equation,
    last_answer,
)
from ibpo_lightning.tasks import CountdownTask
from ibpo_lightning.tasks.countdown import decode_answer, encode_answer


@pytest.mark.parametrize(
    ("equation", "numbers", "target", "ok"),
    [
        ("(96 - 74) + 37 - 7", [96, 7, 37, 74], 52, True),
        ("96 - 74 + 37 - 7", [96, 7, 37, 74], 55, False),          # value 52, not 55
        ("44 + 19 + 35", [44, 19, 35], 98, True),
        ("44 + 19 + 35 = 98", [44, 19, 35], 98, True),             # trailing "= target" allowed
        ("44 + 19 + 35 = 99", [44, 19, 35], 98, False),
        ("44 + 19 + 19 + 16", [44, 19, 35], 98, False),            # 19 reused, 35 unused
        ("44 + 54", [44, 19, 35], 98, False),                      # 54 is not given
        ("44 + 19", [44, 19, 35], 63, False),                      # 35 unused
        ("(7 / 2) * 2 + 3", [7, 2, 2, 3], 10, True),               # exact division
        ("6 / 4 * 2", [6, 4, 2], 3, True),
        ("10 / (5 - 5) + 1", [10, 5, 5, 1], 1, False),             # division by zero
        ("2 ** 3 + 1", [2, 3, 1], 9, False),                       # power not allowed
        ("-3 + 5 + 4", [3, 5, 4], 6, False),                       # unary minus not allowed
        ("3.0 + 5", [3, 5], 8, False),                             # float literal
        ("__import__('os').getcwd()", [1], 1, False),              # names and calls refused
        ("(1 + 2", [1, 2], 3, False),                              # does not parse
        ("", [1], 1, False),
    ],
)
def test_check_equation(equation, numbers, target, ok):
    assert check_equation(equation, numbers, target) is ok


def test_evaluate_equation_returns_exact_value_and_literals():
    value, used = evaluate_equation("(96 - 74) * 3 / 6")
    assert value == 11 and used == [96, 74, 3, 6]
    with pytest.raises(InvalidEquation, match="Call"):
        evaluate_equation("abs(3)")
    with pytest.raises(InvalidEquation, match="longer"):
        evaluate_equation("1 + " * 100 + "1")


def test_last_answer_tag_wins():
    text = "<answer>1 + 2</answer> no wait\n<answer> 3 * 1 </answer>"
    assert last_answer(text) == "3 * 1"
    assert last_answer("no tags") is None
    assert countdown_reward(text, [3, 1], 3) == 1.0
    assert countdown_reward("<answer>1 + 2</answer> then <answer>1 + 1</answer>", [1, 2], 3) == 0.0


def test_answer_encoding_round_trips():
    assert decode_answer(encode_answer([3, 5, 7], 22)) == ([3, 5, 7], 22)


def test_countdown_task_from_shared_files(shared_data):
    test_file = shared_data / "train" / "countdown_test.jsonl"
    task = CountdownTask(train_path=str(shared_data / "train" / "countdown_train.jsonl.gz"),
                         heldout_path=str(test_file), heldout_size=20)
    assert len(task.train_problems()) == 8001 and len(task.heldout_problems()) == 20
    first = json.loads(test_file.read_text().splitlines()[0])
    test_all = CountdownTask(heldout_path=str(test_file))
    problem = test_all.heldout_problems()[0]
    assert decode_answer(problem.answer) == (first["nums"], first["target"])
    assert problem.prompt.startswith(f"Using the numbers {first['nums']}, create an equation that equals {first['target']}.")
    assert test_all.train_problems() == []
    nums, target = decode_answer(problem.answer)  # [96, 7, 37, 74] -> 55
    right = "<answer>" + " ".join(f"{n} +" for n in nums)[:-2] + "</answer>"
    assert task.score([right, "<answer>96</answer>"], [encode_answer(nums, sum(nums))] * 2) == [1.0, 0.0]


def test_nested_ground_truth_fields_match_the_flat_ones(shared_data):
    path = str(shared_data / "train" / "countdown_test.jsonl")
    flat = CountdownTask(heldout_path=path, heldout_size=50)
    nested = CountdownTask(heldout_path=path, heldout_size=50, numbers_field="reward_model.ground_truth.numbers",
                           target_field="reward_model.ground_truth.target")
    assert list(nested.heldout_problems()) == list(flat.heldout_problems())


def test_format_term_adds_to_the_equation_reward(tmp_path):
    path = tmp_path / "cd.jsonl"
    path.write_text(json.dumps({"nums": [1, 2], "target": 3}) + "\n")
    task = CountdownTask(heldout_path=str(path), extra_rewards=[FormatReward(weight=0.1, marker="answer_tag")])
    answer = task.heldout_problems()[0].answer
    scores = task.score(["<answer>1 + 2</answer>", "<answer>2 - 1</answer>", "1 + 2"], [answer] * 3)
    assert scores == pytest.approx([1.1, 0.1, 0.0])
    assert task.verify(["<answer>1 + 2</answer>", "<answer>2 - 1</answer>"], [answer] * 2) == [1.0, 0.0]


def test_bad_rows_name_file_row_and_field(tmp_path):
    path = tmp_path / "cd.jsonl"
    rows = [{"nums": [1, 2], "target": 3}, {"nums": [1, 2]}, {"nums": [1.5, 2], "target": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    with pytest.raises(ValueError, match=re.escape("cd.jsonl row 2: missing field 'target'")):
        CountdownTask(heldout_path=str(path))
    path.write_text("\n".join(json.dumps(r) for r in (rows[0], rows[2])) + "\n")
    with pytest.raises(ValueError, match=re.escape("cd.jsonl row 2: field 'nums' must hold integers")):
        CountdownTask(heldout_path=str(path))
    with pytest.raises(ValueError, match="lacks '{target}'"):
        CountdownTask(heldout_path=str(path), prompt_template="Use {numbers}.")
