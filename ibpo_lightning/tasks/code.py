"""Code problems (MBPP, LeetCode) from local JSONL or a Hub dataset, rewarded by running tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ibpo_lightning.rewards.code import CodeReward, TestSpec
from ibpo_lightning.rewards.composite import Reward, RewardTerm, WeightedReward, close_reward
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.tasks.jsonl import open_rows, split_heldout

DEFAULT_SYSTEM_PROMPT = (
    "You are an expert Python programmer. Put your complete solution in one ```python code block."
)
MBPP_TEMPLATE = "{prompt}\nYour code should pass these tests:\n\n{tests}\n"
MBPP_TRAIN_IDS = (601, 974)
MBPP_HELDOUT_IDS = (11, 510)

LEETCODE_PREAMBLE = '''\
from typing import *
import bisect, collections, functools, heapq, itertools, math, operator, random, re, string
from bisect import *
from collections import *
from functools import *
from heapq import *
from itertools import *
from math import *
del pow  # math's float pow would hide the built-in three-argument one
inf = float("inf")


class ListNode:
    def __init__(self, val=0, next=None):
        self.val, self.next = val, next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val, self.left, self.right = val, left, right


def list_node(values):
    head = tail = ListNode()
    for value in values:
        tail.next = tail = ListNode(value)
    return head.next


def is_same_list(a, b):
    while a is not None and b is not None:
        if a.val != b.val:
            return False
        a, b = a.next, b.next
    return a is None and b is None


def tree_node(values):
    if not values or values[0] is None:
        return None
    root = TreeNode(values[0])
    queue, i = deque([root]), 1
    while queue and i < len(values):
        node = queue.popleft()
        for side in ("left", "right"):
            if i < len(values) and values[i] is not None:
                setattr(node, side, TreeNode(values[i]))
                queue.append(getattr(node, side))
            i += 1
    return root


def is_same_tree(p, q):
    if p is None or q is None:
        return p is q
    return p.val == q.val and is_same_tree(p.left, q.left) and is_same_tree(p.right, q.right)
'''

_FORMATS = {
    # format: (prompt field, tests field, prompt template)
    "mbpp": ("text", "test_list", MBPP_TEMPLATE),
    "leetcode": ("problem", "tests", "{prompt}"),
}


class CodeTask(Task):
    """Programming problems whose reward is running the tests (see ``docs/code_reward.md``).

    ``mbpp``: the prompt is ``text`` with the ``test_list`` asserts shown (the function name is
    only given there), the tests are ``test_list`` after ``test_setup_code``; by default the
    standard split by ``task_id`` (601–974 train, 11–510 held out). ``leetcode`` (DeepCoder's
    files): the prompt is ``problem`` (it ends with the starter code), the one test is
    ``tests.functional`` (a ``check`` function and its call), run after a preamble of common
    imports and ``ListNode``/``TreeNode`` helpers. A problem's answer is its tests as JSON.

    Args:
        train_path: Local JSONL file or Hugging Face Hub dataset id of the training problems.
        heldout_path: Local JSONL file or Hub dataset id of the held-out problems. When None:
            for ``mbpp`` with ``task_id_split`` the held-out task ids of ``train_path``,
            otherwise ``heldout_size`` problems split off the training set.
        format: ``"mbpp"`` or ``"leetcode"``.
        task_id_split: ``mbpp`` only: train on task ids 601–974 and hold out 11–510.
        heldout_size: Number of held-out problems, drawn with ``seed`` (None: all).
        prompt_field: Field of the problem text (None: ``text`` / ``problem``).
        tests_field: Field of the tests (None: ``test_list`` / ``tests``).
        prompt_template: User message with ``{prompt}`` (and ``{tests}``, the tests one per
            line); None: the format's default.
        system_prompt: System message for every prompt, or None for none.
        reward: What scores a completion against a problem's tests (JSON of a
            :class:`~ibpo_lightning.rewards.TestSpec`): any callable ``reward(completions,
            answers) -> list[float]`` chosen by ``class_path``; None: ``CodeReward()`` (2
            programs at once, 5 s each, all-or-nothing; set its ``init_args`` to change them).
        extra_rewards: Shaping terms added to the reward, each with its weight (e.g.
            ``FormatReward``, ``LengthPenalty``); evaluation counts correctness without them.
        train_split: Split of a Hub dataset to train on.
        heldout_split: Split of a Hub dataset to hold out.
        dataset_config: Configuration name of a Hub dataset.
        seed: Seed for drawing the held-out subset.
    """

    def __init__(
        self,
        train_path: str,
        heldout_path: str | None = None,
        format: str = "mbpp",
        task_id_split: bool = True,
        heldout_size: int | None = None,
        prompt_field: str | None = None,
        tests_field: str | None = None,
        prompt_template: str | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        reward: Reward | None = None,
        extra_rewards: list[RewardTerm] | None = None,
        train_split: str = "train",
        heldout_split: str = "test",
        dataset_config: str | None = None,
        seed: int = 0,
    ) -> None:
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
        default_prompt, default_tests, default_template = _FORMATS[format]
        self.format = format
        self.prompt_field = prompt_field or default_prompt
        self.tests_field = tests_field or default_tests
        self.prompt_template = prompt_template or default_template
        if "{prompt}" not in self.prompt_template:
            raise ValueError(f"prompt_template lacks '{{prompt}}': {self.prompt_template!r}")
        self.system_prompt = system_prompt
        self.dataset_config = dataset_config
        self.reward = reward if reward is not None else CodeReward()
        self._shaped = WeightedReward.with_terms(self.reward, extra_rewards or [])
        by_id = format == "mbpp" and task_id_split
        train = self._load(train_path, train_split, MBPP_TRAIN_IDS if by_id else None)
        heldout = None
        if heldout_path is not None or by_id:
            source, split = (train_path, train_split) if heldout_path is None else (
                heldout_path, heldout_split)
            heldout = self._load(source, split, MBPP_HELDOUT_IDS if by_id else None)
        self._train, self._heldout = split_heldout(train, heldout, heldout_size, seed, train_path)
        if not self._train:
            raise ValueError(f"no training problems left in {train_path}")

    def _load(self, path: str, split: str, ids: tuple[int, int] | None) -> list[Problem]:
        rows, name, where = open_rows(path, split, self.dataset_config)
        problems = []
        for i, row in enumerate(rows):
            if ids is not None:
                task_id = row.get("task_id")
                if task_id is None:
                    raise ValueError(f"{name} {where(i)}: missing field 'task_id' (needed by "
                                     "task_id_split; set task_id_split=False to split at random)")
                if not ids[0] <= int(task_id) <= ids[1]:
                    continue
            try:
                problems.append(replace(self._problem(row), origin=f"{name} {where(i)}"))
            except (KeyError, TypeError, ValueError) as error:
                present = ", ".join(k for k, v in row.items() if v is not None)
                raise ValueError(f"{name} {where(i)}: {error} (fields present: {present})") from None
        if not problems:
            raise ValueError(f"{name} holds no problems" + (f" with task_id in {ids}" if ids else ""))
        return problems

    def _problem(self, row: dict) -> Problem:
        prompt = _field(row, self.prompt_field)
        raw = _field(row, self.tests_field)
        if self.format == "leetcode":
            check = raw.get("functional") if isinstance(raw, dict) else raw
            if not isinstance(check, str) or not check.strip():
                raise ValueError(f"field {self.tests_field!r} has no 'functional' test string")
            spec = TestSpec((check,), preamble=LEETCODE_PREAMBLE)
        else:
            if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
                raise ValueError(f"field {self.tests_field!r} must be a non-empty list of strings")
            spec = TestSpec(tuple(raw), setup=row.get("test_setup_code") or "")
        text = self.prompt_template.format(prompt=prompt, tests="\n".join(spec.tests))
        return Problem(prompt=text, answer=spec.to_json())

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def verify(self, completions: list[str], answers: list[str]) -> list[float]:
        """The reward alone, without shaping terms."""
        return self.reward(completions, answers)

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        return self._shaped(completions, answers)

    def close(self) -> None:
        """Close the rewards that have a ``close()``."""
        close_reward(self._shaped)


def _field(row: dict, field: str):
    value = row.get(field)
    if value is None:
        raise ValueError(f"missing field {field!r}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"empty field {field!r}")
    return value
