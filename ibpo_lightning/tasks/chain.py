"""Chained arithmetic written one step per line, where every step can be checked.

"Start with 6. Add 7. Multiply by 3. Subtract 4." is solved as ``6 + 7 = 13`` / ``13 * 3 = 39`` /
``39 - 4 = 35`` / ``Answer: 35``. Because each correct line is unique, the first wrong line of a
failed answer is known exactly: the ground truth of the credit-localisation diagnostic
(``ibpo_lightning.diagnostics.credit``). Every problem carries those lines as its worked
solution (``Problem.solution``), so the task also serves supervised fine-tuning
(``ibpo_lightning.sft``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ibpo_lightning.rewards.answer import number_reward
from ibpo_lightning.tasks.base import Problem, Task

OPS = {"+": "Add {}.", "-": "Subtract {}.", "*": "Multiply by {}."}
_PROBLEM = re.compile(r"Start with (-?\d+)\.((?: (?:Add|Subtract|Multiply by) -?\d+\.)+)")
_STEP = re.compile(r"(Add|Subtract|Multiply by) (-?\d+)\.")
_WORDS = {"Add": "+", "Subtract": "-", "Multiply by": "*"}


def apply(value: int, op: str, operand: int) -> int:
    return value + operand if op == "+" else value - operand if op == "-" else value * operand


def parse_problem(text: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(start, [(op, operand), ...]) of the chain problem quoted anywhere in ``text``, or None."""
    found = _PROBLEM.search(text)
    if found is None:
        return None
    return int(found.group(1)), [(_WORDS[w], int(v)) for w, v in _STEP.findall(found.group(2))]


def solution_lines(start: int, ops: list[tuple[str, int]]) -> list[str]:
    """The correct answer, one line per step, then ``Answer: <value>``."""
    lines, value = [], start
    for op, operand in ops:
        result = apply(value, op, operand)
        lines.append(f"{value} {op} {operand} = {result}")
        value = result
    return lines + [f"Answer: {value}"]


def calculator_solution(lines: list[str]) -> str:
    """The worked solution written through the calculator tool (``environments.Calculator``): each
    step first calls the tool on its expression (ending the turn), then, after the result, writes
    the step's line; the last turn writes ``Answer: <value>``. Replayed through the environment by
    supervised fine-tuning (``sft.data.encode_example``), whose turns end after each call."""
    turns, line = [], ""
    for step in lines[:-1]:
        expression = step.split(" = ")[0]
        call = '<tool_call>{"name": "calculator", "arguments": {"expression": "%s"}}</tool_call>' % expression
        turns.append(f"{line}{call}")
        line = step + "\n"
    return "".join(turns) + line + lines[-1]


def first_error(problem: str, response: str) -> int | None:
    """Character offset in ``response`` of the first line that differs from the correct solution
    (a missing line counts at the end of the response); None when every line is right."""
    parsed = parse_problem(problem)
    if parsed is None:
        raise ValueError(f"not a chain problem: {problem!r}")
    expected = solution_lines(*parsed)
    offset = 0
    lines = response.split("\n")
    for k, want in enumerate(expected):
        if k >= len(lines):
            return len(response)
        if lines[k].strip() != want:
            return offset
        offset += len(lines[k]) + 1
    return None


class ChainTask(Task):
    """Chains of ``num_steps`` operations on small integers; the reward is the exact final value.

    Args:
        num_steps: operations per problem, or a list of lengths each problem draws one from
            (``[2, 3]``: a mix of two- and three-step chains).
        max_value: largest start value and operand (multipliers stay at most 5).
        operators: operators to draw from, a subset of ``"+-*"``.
        num_train / num_heldout: problem counts (held-out ones never among the training ones).
        seed: seed of the problem generator.
        system_prompt: system message of every prompt.
        solution_format: how ``Problem.solution`` is written: ``lines`` (one ``a + b = c`` line per
            step), or ``calculator`` (each step's expression first through the calculator tool,
            ``calculator_solution``; for fine-tuning with ``rollout.environment: Calculator``).
    """

    def __init__(self, num_steps: int | list[int] = 3, max_value: int = 20, operators: str = "+-*", num_train: int = 2000,
                 num_heldout: int = 100, seed: int = 0,
                 system_prompt: str | None = "Solve one step per line, as 'a + b = c', then write 'Answer: <number>'.",
                 solution_format: str = "lines") -> None:
        if solution_format not in ("lines", "calculator"):
            raise ValueError(f"data.task.solution_format must be lines or calculator, got {solution_format!r}")
        lengths = [num_steps] if isinstance(num_steps, int) else list(num_steps)
        if not lengths or min(lengths) < 1 or not operators or set(operators) - set(OPS):
            raise ValueError(f"need num_steps >= 1 and operators within '+-*', got {num_steps} and {operators!r}")
        self.num_steps, self.max_value, self.operators = num_steps, max_value, operators
        self._lengths = lengths
        self.system_prompt = system_prompt
        rng = random.Random(f"chain-{seed}")
        problems: dict[str, list[str]] = {}
        while len(problems) < num_train + num_heldout:
            problems.setdefault(*self._sample(rng))
        write = calculator_solution if solution_format == "calculator" else "\n".join
        items = [Problem(prompt=p, answer=lines[-1].removeprefix("Answer: "), solution=write(lines))
                 for p, lines in problems.items()]
        self._heldout, self._train = items[:num_heldout], items[num_heldout:]

    def _sample(self, rng: random.Random) -> tuple[str, list[str]]:
        """A problem text and its solution lines (one length: the same draws as before lists)."""
        steps = self._lengths[0] if len(self._lengths) == 1 else rng.choice(self._lengths)
        start = rng.randint(1, self.max_value)
        ops = [(op, rng.randint(1, 5 if op == "*" else self.max_value))
               for op in (rng.choice(self.operators) for _ in range(steps))]
        text = f"Start with {start}. " + " ".join(OPS[op].format(v) for op, v in ops)
        return text, solution_lines(start, ops)

    def train_problems(self) -> Sequence[Problem]:
        return self._train

    def heldout_problems(self) -> Sequence[Problem]:
        return self._heldout

    def score(self, completions: list[str], answers: list[str]) -> list[float]:
        return [number_reward(c, a) for c, a in zip(completions, answers, strict=True)]

    def first_error(self, problem: str, response: str) -> int | None:
        return first_error(problem, response)
