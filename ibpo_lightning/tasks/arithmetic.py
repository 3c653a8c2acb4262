"""Procedurally generated arithmetic questions ("What is 7 + 12 * 3?") with an exact reward."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ibpo_lightning.rewards.answer import number_reward
from ibpo_lightning.tasks.base import Problem, Task

DEFAULT_SYSTEM_PROMPT = (
    "Answer the arithmetic question. End your reply with the final answer as a number."
)


def evaluate(operands: Sequence[int], operators: str) -> int:
    """Value of ``operands[0] operators[0] operands[1] ...`` with ``*`` before ``+`` and ``-``."""
    terms: list[int] = [operands[0]]
    signs: list[int] = [1]
    for op, value in zip(operators, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms))


class ArithmeticTask(Task):
    """Arithmetic expressions over random integers; the answer is the exact integer result.

    Problems come from a seeded generator, so the same arguments give the same problems. The
    held-out questions are distinct from each other and never appear among the training ones
    (training questions may repeat when the space of expressions is small).

    Args:
        num_operands: Numbers in each expression (2 or more); more is harder.
        max_value: Largest operand; larger is harder.
        operators: Operators to draw from, a non-empty subset of ``"+-*"``.
        num_train: Number of training problems.
        num_heldout: Number of held-out problems; at most half of all possible expressions.
        seed: Seed of the problem generator.
        system_prompt: System message for every prompt, or None for none.
        prompt_template: User message; ``{expression}`` is replaced by the expression.
        min_value: Smallest operand (0 allows zeros).
    """

    def __init__(
        self,
        num_operands: int = 2,
        max_value: int = 20,
        operators: str = "+-",
        num_train: int = 5000,
        num_heldout: int = 200,
        seed: int = 0,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        prompt_template: str = "What is {expression}?",
        min_value: int = 1,
    ) -> None:
        if num_operands < 2:
            raise ValueError(f"num_operands must be >= 2, got {num_operands}")
        if min_value < 0 or max_value < min_value:
            raise ValueError(
                f"need 0 <= min_value <= max_value, got {min_value} and {max_value}"
            )
        if not operators or set(operators) - set("+-*"):
            raise ValueError(f"operators must be a non-empty subset of '+-*', got {operators!r}")
        if "{expression}" not in prompt_template:
            raise ValueError(f"prompt_template lacks '{{expression}}': {prompt_template!r}")
        self.num_operands = num_operands
        self.min_value = min_value
        self.max_value = max_value
        self.operators = "".join(sorted(set(operators), key="+-*".index))
        self.seed = seed
        self.system_prompt = system_prompt
        self.prompt_template = prompt_template
        values = max_value - min_value + 1
        space = values**num_operands * len(self.operators) ** (num_operands - 1)
        if num_heldout > space // 2:
            raise ValueError(
                f"num_heldout={num_heldout} is more than half of the {space} possible expressions; "
                "lower it or make the problems harder"
            )
        heldout_rng = random.Random(f"arithmetic-heldout-{seed}")
        heldout: dict[str, int] = {}
        while len(heldout) < num_heldout:
            expression, value = self._sample(heldout_rng)
            heldout.setdefault(expression, value)
        train_rng = random.Random(f"arithmetic-train-{seed}")
        train: list[tuple[str, int]] = []
        while len(train) < num_train:
            expression, value = self._sample(train_rng)
            if expression not in heldout:
                train.append((expression, value))
        self._heldout = [self._problem(e, v) for e, v in heldout.items()]
        self._train = [self._problem(e, v) for e, v in train]

    def _sample(self, rng: random.Random) -> tuple[str, int]:
        operands = [rng.randint(self.min_value, self.max_value) for _ in range(self.num_operands)]
        ops = "".join(rng.choice(self.operators) for _ in range(self.num_operands - 1))
        parts = [str(operands[0])]
        for op, value in zip(ops, operands[1:]):
            parts += [op, str(value)]
        return " ".join(parts), evaluate(operands, ops)

    def _problem(self, expression: str, value: int) -> Problem:
        return Problem(prompt=self.prompt_template.format(expression=expression), answer=str(value))

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        return [number_reward(c, a) for c, a in zip(completions, answers, strict=True)]
