"""What a task is: problems to train and evaluate on, and the reward that checks answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer."""

    prompt: str
    """The user message text (no chat template applied)."""
    answer: str
    """The reference final answer as a string."""


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

    def close(self) -> None:
        """Release what the task holds (a verifier's process pool); the default holds nothing."""
