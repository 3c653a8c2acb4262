"""The shared math datasets load with their own field names and answers; wrong fields fail at start."""

import json
import re

import pytest

from ibpo_lightning.evaluation import PRESETS, benchmark
from ibpo_lightning.rewards import NumberReward
from ibpo_lightning.tasks import CountdownTask, JsonlTask


def first_row(path):
    with open(path, encoding="utf-8") as f:
        return json.loads(f.readline())


# file, fields, answer_format, complete rows, the first row's expected prompt start and answer
# (the two MATH train sets hold 4 and 2 rows with a null or empty answer: drop_incomplete leaves them out)
DATASETS = [
    ("math/gsm8k_train.jsonl", "question", "answer", "gsm8k", 7473, "Natalia sold clips", "72"),
    ("math/gsm8k_test.jsonl", "question", "answer", "gsm8k", 1319, "Janet’s ducks lay 16 eggs", "18"),
    ("math/math500_test.jsonl", "problem", "answer", "plain", 500, "Convert the point $(0,3)",
     "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("math/aime24_test.jsonl", "problem", "answer", "integer", 30, "Every morning Aya", "204"),
    ("train/math_train_deepscaler_7474.jsonl", "problem", "answer", "plain", 7470, "Let \\[f(x) =", "0"),
    ("train/math_level3to5_8523.jsonl", "prompt", "answer", "plain", 8521, "Let $a$ and $b$ be the two real", "118"),
]


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: s[0].split("/")[1])
def test_dataset_loads_with_its_fields(shared_data, spec):
    path, prompt_field, answer_field, answer_format, rows, prompt_start, answer = spec
    task = JsonlTask(heldout_path=str(shared_data / path), prompt_field=prompt_field, answer_field=answer_field,
                     answer_format=answer_format, reward=NumberReward(), prompt_template="Q: {prompt}",
                     drop_incomplete=True)
    problems = task.heldout_problems()
    assert len(problems) == rows and task.train_problems() == []
    assert problems[0].prompt.startswith("Q: " + prompt_start)
    assert problems[0].answer == answer
    assert all(p.answer.strip() for p in problems)


@pytest.mark.parametrize("spec", DATASETS, ids=lambda s: s[0].split("/")[1])
def test_a_field_the_dataset_lacks_fails_naming_file_row_and_field(shared_data, spec):
    path = spec[0]
    wrong = "text"  # MBPP's name for the problem: no math set has it
    present = ", ".join(first_row(shared_data / path))
    name = path.split("/")[1]
    with pytest.raises(ValueError, match=re.escape(f"{name} row 1: missing field {wrong!r} (fields present: {present})")):
        JsonlTask(heldout_path=str(shared_data / path), prompt_field=wrong, answer_format="plain", reward=NumberReward())


def test_aime_answers_are_integers_without_leading_zeros(shared_data):
    path = shared_data / "math" / "aime24_test.jsonl"
    raw = [json.loads(line)["answer"] for line in path.read_text().splitlines()]
    assert "025" in raw  # the file keeps leading zeros
    task = JsonlTask(heldout_path=str(path), prompt_field="problem", answer_format="integer", reward=NumberReward())
    answers = [p.answer for p in task.heldout_problems()]
    assert answers == [str(int(a)) for a in raw] and "25" in answers
    assert all(re.fullmatch(r"[1-9]\d*|0", a) for a in answers)
    assert task.score(["\\boxed{25}", "\\boxed{025}", "\\boxed{26}"], ["25"] * 3) == [1.0, 1.0, 0.0]


def test_integer_format_names_a_non_integer_answer(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"problem": "p", "answer": "007"}) + "\n" + json.dumps({"problem": "q", "answer": "1/2"}) + "\n")
    with pytest.raises(ValueError, match=re.escape("aime.jsonl row 2: field 'answer' is not an integer: '1/2'")):
        JsonlTask(heldout_path=str(path), prompt_field="problem", answer_format="integer", reward=NumberReward())


def test_nested_answer_field(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [{"q": "1+1?", "reward_model": {"ground_truth": "2"}}, {"q": "2+2?", "reward_model": {"style": "rule"}}]
    path.write_text(json.dumps(rows[0]) + "\n")
    task = JsonlTask(heldout_path=str(path), prompt_field="q", answer_field="reward_model.ground_truth",
                     answer_format="plain", reward=NumberReward())
    assert task.heldout_problems()[0].answer == "2"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=re.escape("row 2: missing field 'reward_model.ground_truth'")):
        JsonlTask(heldout_path=str(path), prompt_field="q", answer_field="reward_model.ground_truth",
                  answer_format="plain", reward=NumberReward())


def test_task_needs_some_source():
    with pytest.raises(ValueError, match="train_path, a heldout_path"):
        JsonlTask()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_benchmark_presets_load_a_fixed_subset(shared_data, name):
    kwargs = {} if name == "countdown" else {"reward": NumberReward()}
    a, b = (benchmark(name, shared_data, limit=5, **kwargs) for _ in range(2))
    assert len(a.heldout_problems()) == 5 and list(a.heldout_problems()) == list(b.heldout_problems())
    assert isinstance(a, CountdownTask if name == "countdown" else JsonlTask)


def test_benchmark_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'"):
        benchmark("gsm9k")
    with pytest.raises(FileNotFoundError, match="gsm8k_test.jsonl not found"):
        benchmark("gsm8k", tmp_path)


def test_incomplete_rows_fail_unless_dropped(shared_data):
    path = str(shared_data / "train" / "math_train_deepscaler_7474.jsonl")
    message = "math_train_deepscaler_7474.jsonl row 887: missing field 'answer' (fields present: problem, difficulty, type)"
    with pytest.raises(ValueError, match=re.escape(message)):
        JsonlTask(heldout_path=path, prompt_field="problem", answer_format="plain", reward=NumberReward())
    with pytest.warns(UserWarning, match=r"4 incomplete rows left out .*row 887"):
        task = JsonlTask(train_path=path, heldout_size=10, prompt_field="problem", answer_format="plain",
                         reward=NumberReward(), drop_incomplete=True)
    assert len(task.train_problems()) + len(task.heldout_problems()) == 7470
