"""Rewards composed by weight: an answer reward plus shaping terms (format, length).

A reward is any callable ``reward(completions, answers) -> list[float]``: a function, or an
object whose ``__call__`` is that (and whose ``close()``, if it has one, releases its workers;
:func:`close_reward` calls it). ``WeightedReward`` sums
``weight * reward(...)`` over its terms. ``RewardTerm`` subclasses are shaping terms that carry
their own ``weight``, so a task can take them as a plain yaml list::

    extra_rewards:
      - class_path: ibpo_lightning.rewards.FormatReward
        init_args: {weight: 0.1, marker: boxed}
      - class_path: ibpo_lightning.rewards.LengthPenalty
        init_args: {weight: 0.5, soft_limit: 1500, hard_limit: 3000}

Shaping shifts rewards away from {0, 1}: estimators that call a reward of at least
``correct_threshold`` (1.0) correct may need that threshold moved (a length penalty can pull a
right answer below 1.0). Evaluation counts correctness with the task's ``verify``, unshaped.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

Reward = Callable[[list[str], list[str]], list[float]]
"""``reward(completions, answers) -> list[float]``, one value per completion."""

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\{\s*[^\s}]")
_HASHES = re.compile(r"^####[ \t]*\S", re.MULTILINE)
MARKERS = ("boxed", "answer_tag", "hashes")


class RewardTerm(ABC):
    """One shaping term: ``term(completions, answers)`` gives its unweighted values.

    Args:
        weight: Multiplier of this term when added to a task's reward (negative to penalise).
    """

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = float(weight)

    @abstractmethod
    def value(self, completion: str, answer: str) -> float:
        """The term's unweighted value for one completion."""

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        return [self.value(c, a) for c, a in zip(completions, answers, strict=True)]


class FormatReward(RewardTerm):
    """1.0 when the completion marks a final answer the expected way, else 0.0.

    Args:
        weight: Multiplier of this term when added to a task's reward.
        marker: ``"boxed"``: a non-empty ``\\boxed{...}``; ``"answer_tag"``: a non-empty
            ``<answer>...</answer>``; ``"hashes"``: a line starting ``#### <answer>``.
    """

    def __init__(self, weight: float = 0.1, marker: str = "boxed") -> None:
        super().__init__(weight)
        if marker not in MARKERS:
            raise ValueError(f"FormatReward.marker must be one of {MARKERS}, got {marker!r}")
        self.marker = marker

    def value(self, completion: str, answer: str) -> float:
        if self.marker == "answer_tag":
            return float(any(m.strip() for m in _ANSWER_TAG.findall(completion)))
        pattern = _BOXED if self.marker == "boxed" else _HASHES
        return float(pattern.search(completion) is not None)


class LengthPenalty(RewardTerm):
    """A penalty for long completions, in characters: 0 up to ``soft_limit``, then falling
    linearly to -1 at ``hard_limit`` and staying there (DAPO's overlong shaping, on characters
    because rewards see text; a token is about 4 characters of English).

    Args:
        weight: Multiplier of this term when added to a task's reward (positive: the term
            itself is negative).
        soft_limit: Characters allowed without penalty.
        hard_limit: Characters at and beyond which the penalty is -1.
    """

    def __init__(self, weight: float = 1.0, soft_limit: int = 1000, hard_limit: int = 2000) -> None:
        super().__init__(weight)
        if not 0 <= soft_limit < hard_limit:
            raise ValueError(f"LengthPenalty needs 0 <= soft_limit < hard_limit, got {soft_limit}, {hard_limit}")
        self.soft_limit, self.hard_limit = soft_limit, hard_limit

    def value(self, completion: str, answer: str) -> float:
        over = len(completion) - self.soft_limit
        return -min(1.0, max(0.0, over / (self.hard_limit - self.soft_limit)))


class WeightedReward:
    """The weighted sum of rewards: ``sum(weight * reward(completions, answers))`` per completion.

    Args:
        terms: ``(weight, reward)`` pairs; each reward returns one value per completion.
    """

    def __init__(self, terms: Sequence[tuple[float, Reward]]) -> None:
        if not terms:
            raise ValueError("WeightedReward needs at least one (weight, reward) term")
        self.terms = [(float(w), r) for w, r in terms]

    @classmethod
    def with_terms(cls, base: Reward, extra: Sequence[RewardTerm]) -> "WeightedReward":
        """``base`` at weight 1 plus each shaping term at its own weight."""
        return cls([(1.0, base), *((t.weight, t) for t in extra)])

    def close(self) -> None:
        """Close every term that has a ``close()``."""
        for _, reward in self.terms:
            close_reward(reward)

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        total = [0.0] * len(completions)
        for weight, reward in self.terms:
            values = reward(completions, answers)
            if len(values) != len(completions):
                raise ValueError(f"reward {reward!r} gave {len(values)} values for {len(completions)} completions")
            total = [t + weight * float(v) for t, v in zip(total, values)]
        return total


def close_reward(reward: Reward) -> None:
    """Call ``reward.close()`` where there is one (a plain function has none)."""
    close = getattr(reward, "close", None)
    if callable(close):
        close()
