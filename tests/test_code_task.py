"""CodeTask (MBPP, LeetCode), program extraction and test specs."""

import json
import re

import pytest

from ibpo_lightning.rewards import TestSpec, extract_program
from ibpo_lightning.tasks import CodeTask, Task


@pytest.mark.parametrize(
    ("completion", "program"),
    [
        ("def f(): pass", "def f(): pass"),
        ("Sure:\n```python\nx = 1\n```\nthen\n```python\nx = 2\n```\nDone.", "x = 2\n"),
        ("```py\nx = 3\n```", "x = 3\n"),
        ("```python\nx = 1\n```\n```text\nout\n```", "x = 1\n"),
        ("Plain fence:\n```\nx = 4\n```", "x = 4\n"),
        ("```python\nx = 1\n```\n```Python\ndef g():\n    return 5", "def g():\n    return 5"),
    ],
)
def test_extract_program(completion, program):
    assert extract_program(completion) == program


def test_test_spec_parse():
    spec = TestSpec(("assert 1",), setup="s = 1", preamble="import os")
    assert TestSpec.parse(spec.to_json()) == spec
    assert TestSpec.parse('["assert 1", "assert 2"]') == TestSpec(("assert 1", "assert 2"))
    assert TestSpec.parse('{"tests": "check(f)"}') == TestSpec(("check(f)",))
    assert TestSpec.parse(["assert 3"]) == TestSpec(("assert 3",))
    with pytest.raises(ValueError, match="non-empty list"):
        TestSpec.parse("[]")
    with pytest.raises(ValueError, match="must be strings"):
        TestSpec.parse('{"tests": ["a"], "setup": 3}')


@pytest.fixture(scope="module")
def mbpp(shared_data):
    return CodeTask(str(shared_data / "code" / "mbpp.jsonl"))


def test_mbpp_standard_split(mbpp, shared_data):
    assert isinstance(mbpp, Task)
    train, heldout = mbpp.train_problems(), mbpp.heldout_problems()
    assert (len(train), len(heldout)) == (374, 500)
    first = heldout[0]  # task 11
    assert first.prompt.startswith("Write a python function to remove first and last occurrence")
    assert 'assert remove_Occ("hello","l") == "heo"' in first.prompt
    spec = TestSpec.parse(first.answer)
    assert len(spec.tests) == 3 and spec.setup == "" and spec.preamble == ""
    rows = [json.loads(line) for line in (shared_data / "code" / "mbpp.jsonl").open()]
    code = {r["task_id"]: r["code"] for r in rows}
    completions = [f"```python\n{code[11]}\n```", "```python\ndef remove_Occ(s, ch):\n    return s\n```"]
    assert mbpp.score(completions, [first.answer] * 2) == [1.0, 0.0]
    assert json.loads(train[0].answer)["tests"] == next(r for r in rows if r["task_id"] == 601)["test_list"]


def test_mbpp_setup_code_is_run(shared_data):
    rows = [json.loads(line) for line in (shared_data / "code" / "mbpp.jsonl").open()]
    row = next(r for r in rows if r["test_setup_code"])
    task = CodeTask(str(shared_data / "code" / "mbpp.jsonl"), task_id_split=False)
    problem = next(p for p in task.train_problems() if p.prompt.startswith(row["text"]))
    assert TestSpec.parse(problem.answer).setup == row["test_setup_code"]
    assert task.score([row["code"]], [problem.answer]) == [1.0]


def test_leetcode(shared_data):
    path = shared_data / "train" / "leetcode_train.jsonl"
    task = CodeTask(str(path), format="leetcode", heldout_size=50, system_prompt=None)
    train, heldout = task.train_problems(), task.heldout_problems()
    assert (len(train) + len(heldout), len(heldout)) == (1889, 50)
    assert not {p.prompt for p in train} & {p.prompt for p in heldout}
    rows = [json.loads(line) for line in path.open()]
    by_prompt = {r["problem"]: r for r in rows}
    picked = [by_prompt[p.prompt] for p in train[:8]]
    linked = next(r for r in rows if "is_same_list" in r["tests"]["functional"])
    picked.append(linked)
    answers = [next(p.answer for p in [*train, *heldout] if p.prompt == r["problem"]) for r in picked]
    completions = [f"```python\n{r['solutions']}\n```" for r in picked]
    assert task.score(completions, answers) == [1.0] * len(picked)
    assert task.score(["```python\nclass Solution:\n    pass\n```"], answers[:1]) == [0.0]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_field_names_file_row_and_field(tmp_path):
    rows = [{"task_id": 600 + i, "text": f"t{i}", "test_list": ["assert 1"]} for i in range(1, 5)]
    rows[2] = {"task_id": 603, "text": "t3"}
    path = _write(tmp_path / "mbpp_small.jsonl", rows)
    message = "mbpp_small.jsonl row 3: missing field 'test_list' (fields present: task_id, text)"
    with pytest.raises(ValueError, match=re.escape(message)):
        CodeTask(path, task_id_split=False)


def test_bad_tests_and_settings(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [{"text": "t", "test_list": "assert 1"}])
    with pytest.raises(ValueError, match=re.escape("bad.jsonl row 1: field 'test_list' must be")):
        CodeTask(path, task_id_split=False)
    with pytest.raises(ValueError, match=re.escape("bad.jsonl row 1: missing field 'task_id'")):
        CodeTask(path)
    leet = _write(tmp_path / "leet.jsonl", [{"problem": "p", "tests": {"other": "x"}}])
    with pytest.raises(ValueError, match="leet.jsonl row 1: field 'tests' has no 'functional'"):
        CodeTask(leet, format="leetcode")
    with pytest.raises(ValueError, match="format must be one of"):
        CodeTask(path, format="humaneval")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        CodeTask(str(tmp_path / "nope.jsonl"))
