"""ArithmeticTask and JsonlTask: determinism, splits, answers and start-up errors."""

import gzip
import json
import re

import pytest

from ibpo_lightning.rewards import NumberReward
from ibpo_lightning.tasks import ArithmeticTask, JsonlTask, Problem, Task

_EXPRESSION = re.compile(r"What is (.+)\?")


def _expression(problem: Problem) -> str:
    return _EXPRESSION.fullmatch(problem.prompt).group(1)


def test_arithmetic_is_deterministic():
    a, b = ArithmeticTask(seed=3), ArithmeticTask(seed=3)
    assert isinstance(a, Task)
    assert list(a.train_problems()) == list(b.train_problems())
    assert list(a.heldout_problems()) == list(b.heldout_problems())
    assert list(ArithmeticTask(seed=4).train_problems()) != list(a.train_problems())


def test_arithmetic_heldout_is_distinct_and_never_in_train():
    task = ArithmeticTask(num_train=3000, num_heldout=150)
    train, heldout = task.train_problems(), task.heldout_problems()
    assert len(train) == 3000 and len(heldout) == 150
    assert len({p.prompt for p in heldout}) == 150
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}


@pytest.mark.parametrize("operators", ["+", "-", "*", "+-*"])
def test_arithmetic_answers_are_exact(operators):
    task = ArithmeticTask(num_operands=3, operators=operators, num_train=300, num_heldout=50)
    for problem in [*task.train_problems(), *task.heldout_problems()]:
        expression = _expression(problem)
        assert set(expression.split()[1::2]) <= set(operators)
        assert problem.answer == str(eval(expression))  # noqa: S307 (our own digits and operators)


def test_arithmetic_difficulty_knobs():
    task = ArithmeticTask(num_operands=4, max_value=5, min_value=0, num_train=500, num_heldout=20)
    operands = [int(x) for p in task.train_problems() for x in _expression(p).split()[::2]]
    assert all(len(_expression(p).split()) == 7 for p in task.train_problems())
    assert min(operands) == 0 and max(operands) == 5
    wide = ArithmeticTask(max_value=1000, num_train=500)
    assert max(int(x) for p in wide.train_problems() for x in _expression(p).split()[::2]) > 100


def test_arithmetic_template_and_system_prompt():
    task = ArithmeticTask(prompt_template="Compute {expression}.", system_prompt=None, num_train=5)
    assert task.system_prompt is None
    assert all(p.prompt.startswith("Compute ") for p in task.train_problems())


def test_arithmetic_rejects_bad_settings():
    with pytest.raises(ValueError, match="half"):
        ArithmeticTask(max_value=5, operators="+", num_heldout=200)
    with pytest.raises(ValueError, match="subset"):
        ArithmeticTask(operators="+/")


def test_arithmetic_score():
    task = ArithmeticTask(num_train=10)
    answers = [p.answer for p in task.train_problems()[:3]]
    completions = [f"The answer is {answers[0]}.", f"\\boxed{{{answers[1]}}}", "I think 1000001"]
    assert task.score(completions, answers) == [1.0, 1.0, 0.0]


def test_jsonl_gsm8k(shared_data):
    path = shared_data / "math" / "gsm8k_test.jsonl"
    task = JsonlTask(train_path=str(path), heldout_size=100, reward=NumberReward())
    train, heldout = task.train_problems(), task.heldout_problems()
    assert len(train) + len(heldout) == 1319 and len(heldout) == 100
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.answer) for p in [*train, *heldout])
    janet = next(p for p in [*train, *heldout] if p.prompt.startswith("Janet’s ducks lay 16 eggs"))
    assert janet.answer == "18"
    assert task.score(["She makes $18 a day.\n#### 18", "#### 17"], ["18", "18"]) == [1.0, 0.0]


def test_jsonl_math500_with_math_verify(shared_data):
    path = shared_data / "math" / "math500_test.jsonl"
    task = JsonlTask(train_path=str(path), prompt_field="problem", answer_format="plain",
                     prompt_template="Problem: {prompt}")
    try:
        problems = task.train_problems()[:20]
        assert len(task.train_problems()) == 500 and task.heldout_problems() == []
        assert all(p.prompt.startswith("Problem: ") for p in problems)
        answers = [p.answer for p in problems]
        assert task.score([f"Thus $\\boxed{{{a}}}$." for a in answers], answers) == [1.0] * 20
    finally:
        task.close()


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_jsonl_heldout_file_is_removed_from_train(tmp_path):
    train = _write(tmp_path / "train.jsonl", [{"q": f"{i}+1?", "a": str(i + 1)} for i in range(10)])
    held = _write(tmp_path / "held.jsonl", [{"q": "3+1?", "a": "4"}, {"q": "99+1?", "a": "100"}])
    task = JsonlTask(train, heldout_path=held, prompt_field="q", answer_field="a",
                     answer_format="plain", reward=NumberReward())
    assert len(task.train_problems()) == 9 and len(task.heldout_problems()) == 2


def test_jsonl_reads_gzip(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "so\n#### 2"}) + "\n")
    assert JsonlTask(str(path), reward=NumberReward()).train_problems() == [Problem("1+1?", "2")]


def test_jsonl_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        JsonlTask(str(tmp_path / "nope.jsonl"))


def test_jsonl_bad_row_names_file_field_and_row(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(16)]
    rows.insert(16, {"question": "q16"})
    path = _write(tmp_path / "gsm8k_train.jsonl", rows)
    message = "gsm8k_train.jsonl row 17: missing field 'answer' (fields present: question)"
    with pytest.raises(ValueError, match=re.escape(message)):
        JsonlTask(path, reward=NumberReward())


def test_jsonl_row_number_is_the_line_number(tmp_path):
    rows = [{"question": "a", "answer": "#### 1"}, "", {"question": "", "answer": "#### 2"}]
    path = _write(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValueError, match=re.escape("data.jsonl row 3: empty field 'question'")):
        JsonlTask(path, reward=NumberReward())


def test_jsonl_answers_mixing_numbers_and_strings_with_a_blank_line_load(tmp_path):
    """Either alone loaded through `datasets`; both together stopped inside its JSON builder."""
    rows = [{"q": "1+1?", "a": 2}, "", {"q": "half of 3?", "a": "1.5"}, {"q": "2+2?", "a": 4}]
    path = _write(tmp_path / "mixed.jsonl", rows)
    task = JsonlTask(path, prompt_field="q", answer_field="a", answer_format="plain", reward=NumberReward())
    assert [p.answer for p in task.train_problems()] == ["2", "1.5", "4"]
    path = _write(tmp_path / "mixed_bad.jsonl", rows + ["", {"q": "", "a": 5}])
    with pytest.raises(ValueError, match=re.escape("mixed_bad.jsonl row 6: empty field 'q'")):
        JsonlTask(path, prompt_field="q", answer_field="a", answer_format="plain", reward=NumberReward())


def test_jsonl_gsm8k_answer_needs_hashes(tmp_path):
    path = _write(tmp_path / "data.jsonl", [{"question": "a", "answer": "#### 1"},
                                            {"question": "b", "answer": "2"}])
    with pytest.raises(ValueError, match=re.escape("data.jsonl row 2: field 'answer' has no '####'")):
        JsonlTask(path, reward=NumberReward())
    assert JsonlTask(path, answer_format="plain", reward=NumberReward()).train_problems()[1].answer == "2"


def test_jsonl_broken_line_names_file_and_line(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
    rows[3] = '{"question": "q3", "answer": "#### 3"'  # line 5 below: truncated, no closing brace
    path = _write(tmp_path / "broken.jsonl", [rows[0], "", *rows[1:]])
    with pytest.raises(ValueError) as info:
        JsonlTask(path, reward=NumberReward())
    message = str(info.value)
    column = len(rows[3]) + 1  # where the missing ',' or '}' should be
    assert message == f"{path} line 5 is not valid JSON: Expecting ',' delimiter at column {column}"


def test_jsonl_non_object_line_is_named(tmp_path):
    path = _write(tmp_path / "lists.jsonl", [{"question": "a", "answer": "#### 1"}, [1, 2]])
    with pytest.raises(ValueError, match=re.escape("lists.jsonl line 2 is not a JSON object but a list")):
        JsonlTask(path, reward=NumberReward())


@pytest.mark.parametrize("text", ["", "\n", "\n  \n\t\n"], ids=["empty", "newline", "blank-lines"])
def test_jsonl_without_rows_says_so(tmp_path, text):
    path = tmp_path / "nothing.jsonl"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} holds no rows$"):
        JsonlTask(str(path), reward=NumberReward())


def test_jsonl_broken_gzip_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n{not json}\n")
    with pytest.raises(ValueError, match=re.escape("train.jsonl.gz line 2 is not valid JSON")):
        JsonlTask(str(path), reward=NumberReward())


def test_json_array_file_still_reads(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"question": "1+1?", "answer": "#### 2"},
                                {"question": "2+2?", "answer": "#### 4"}], indent=2))
    task = JsonlTask(str(path), reward=NumberReward())
    assert task.train_problems() == [Problem("1+1?", "2"), Problem("2+2?", "4")]
