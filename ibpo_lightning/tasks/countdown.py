"""Countdown: combine the given numbers with + - * / to reach the target (TinyZero's task)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ibpo_lightning.rewards.composite import RewardTerm, WeightedReward
from ibpo_lightning.rewards.countdown import countdown_reward
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.tasks.jsonl import read_fields, split_heldout

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. You first think about the reasoning process and then give the answer."
DEFAULT_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
    "arithmetic operations (+, -, *, /) and each number can only be used once. Show your work, "
    "then return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>."
)


def encode_answer(numbers: Sequence[int], target: int) -> str:
    """A Countdown reference answer as ``Problem.answer``: ``{"numbers": [...], "target": t}``."""
    return json.dumps({"numbers": [int(n) for n in numbers], "target": int(target)})


def decode_answer(answer: str) -> tuple[list[int], int]:
    """The numbers and target of an ``encode_answer`` string."""
    data = json.loads(answer)
    return data["numbers"], data["target"]


class CountdownTask(Task):
    """Countdown problems from local JSONL (``.jsonl.gz`` too) or a Hub dataset, checked at start.

    Each row gives the numbers and the target; the reward is 1.0 for a completion whose last
    ``<answer>...</answer>`` holds an equation that uses each number exactly once and equals the
    target (``rewards.countdown``), plus any shaping terms. A row whose numbers are not a list of
    integers, or whose target is not an integer, is an error naming the file, row and field.

    Args:
        train_path: Local JSONL file or Hub dataset id of the training problems (None:
            evaluation-only).
        heldout_path: Local JSONL file or Hub dataset id of the held-out problems. When None,
            ``heldout_size`` problems are split off the training set instead.
        heldout_size: Number of held-out problems, a fixed subset drawn with ``seed``.
        numbers_field: Field holding the list of numbers; dotted for a nested field
            (``reward_model.ground_truth.numbers``).
        target_field: Field holding the target; dotted for a nested field.
        system_prompt: System message for every prompt, or None for none.
        prompt_template: User message with ``{numbers}`` (as ``[3, 5, 7]``) and ``{target}``.
        extra_rewards: Shaping terms added to the equation reward, each with its weight (e.g.
            ``FormatReward(marker="answer_tag")``, TinyZero's 0.1 format score).
        train_split: Split of a Hub dataset to train on.
        heldout_split: Split of a Hub dataset to hold out.
        dataset_config: Configuration name of a Hub dataset.
        seed: Seed for drawing the held-out subset.
    """

    def __init__(
        self,
        train_path: str | None = None,
        heldout_path: str | None = None,
        heldout_size: int | None = None,
        numbers_field: str = "nums",
        target_field: str = "target",
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        prompt_template: str = DEFAULT_TEMPLATE,
        extra_rewards: list[RewardTerm] | None = None,
        train_split: str = "train",
        heldout_split: str = "test",
        dataset_config: str | None = None,
        seed: int = 0,
    ) -> None:
        for key in ("{numbers}", "{target}"):
            if key not in prompt_template:
                raise ValueError(f"prompt_template lacks '{key}': {prompt_template!r}")
        if train_path is None and heldout_path is None:
            raise ValueError("CountdownTask needs a train_path, a heldout_path, or both")
        self.numbers_field, self.target_field = numbers_field, target_field
        self.system_prompt, self.prompt_template = system_prompt, prompt_template
        self.dataset_config = dataset_config
        self._shaped = WeightedReward.with_terms(self.verify, extra_rewards or [])
        train = self._load(train_path, train_split) if train_path is not None else []
        heldout = self._load(heldout_path, heldout_split) if heldout_path is not None else None
        self._train, self._heldout = split_heldout(train, heldout, heldout_size, seed, str(train_path))
        if train_path is not None and not self._train:
            raise ValueError(f"no training problems left in {train_path}")

    def _load(self, path: str, split: str) -> list[Problem]:
        records = read_fields(path, [self.numbers_field, self.target_field], split, self.dataset_config)
        problems = []
        for i, (numbers, target) in enumerate(records.values):
            for field, values in ((self.numbers_field, numbers), (self.target_field, [target])):
                if not _integers(values):
                    shown = values if field == self.numbers_field else target
                    raise ValueError(f"{records.locate(i)}: field {field!r} must hold integers, got {shown!r}")
            numbers, target = [int(n) for n in numbers], int(target)
            text = self.prompt_template.format(numbers=str(numbers), target=target)
            problems.append(Problem(prompt=text, answer=encode_answer(numbers, target)))
        return problems

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def verify(self, completions: list[str], answers: list[str]) -> list[float]:
        """1.0 for each completion whose equation is right, else 0.0 (no shaping terms)."""
        out = []
        for completion, answer in zip(completions, answers, strict=True):
            numbers, target = decode_answer(answer)
            out.append(countdown_reward(completion, numbers, target))
        return out

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        return self._shaped(completions, answers)


def _integers(values: Any) -> bool:
    """True for a non-empty list of integers (floats with integral values count)."""
    if not isinstance(values, (list, tuple)) or not values:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer()
               for v in values)
