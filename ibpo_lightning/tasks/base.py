"""What a task is: problems to train and evaluate on, and the reward that checks answers.

A task that has worked solutions (``ChainTask``'s step lines, GSM8K's and MATH's solution
fields via ``JsonlTask(solution_field=...)``) puts them in ``Problem.solution``; supervised
fine-tuning (``ibpo_lightning.sft``) trains on them and refuses a task that has none
(``Task.sft_problems``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer."""

    prompt: str
    """The user message text (no chat template applied)."""
    answer: str
    """The reference final answer as a string."""
    solution: str | None = None
    """A worked solution ending in the answer, written as the policy should answer (the
    assistant message of supervised fine-tuning), or None where the task has none."""
    origin: str | None = field(default=None, compare=False)
    """Where the row came from ("data/x.jsonl line 18"), for messages; None for generated problems."""


class Task(ABC):
    """A source of problems plus the reward that checks answers."""

    system_prompt: str | None = None
    """System message put before every prompt, or None for none."""

    @abstractmethod
    def train_problems(self) -> Sequence[Problem]:
        """Problems to train on."""

    @abstractmethod
    def heldout_problems(self) -> Sequence[Problem]:
        """Problems to evaluate on; never among the training problems."""

    @abstractmethod
    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        """Reward of each completion against the reference answer at the same index."""

    def test_problems(self) -> Sequence[Problem]:
        """Problems of the test split (``ibpo test``); by default the held-out split."""
        return self.heldout_problems()

    def verify(self, completions: list[str], answers: list[str]) -> list[float]:
        """Correctness of each completion (1 right, 0 wrong) without shaping terms; by default
        the reward itself."""
        return self.score(completions, answers)

    def sft_problems(self) -> list[Problem]:
        """The training problems with a worked solution, for supervised fine-tuning; a
        ValueError naming the task when none has one."""
        found = [p for p in self.train_problems() if p.solution]
        if not found:
            raise ValueError(f"{type(self).__name__} has no worked solutions to fine-tune on: none of its "
                             f"{len(self.train_problems())} training problems has a Problem.solution (tasks with "
                             "them: ChainTask, JsonlTask with solution_field set)")
        return found

    def close(self) -> None:
        """Release what the task holds (a verifier's process pool); the default holds nothing."""
