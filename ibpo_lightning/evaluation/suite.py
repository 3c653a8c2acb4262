"""Evaluation of named benchmarks: sample ``n`` answers per problem, verify, accumulate metrics.

The ``Evaluation`` callback owns one ``EvalSuite``: the datamodule task's held-out split is one benchmark,
each task in ``model.benchmarks`` another. Correctness is the task's ``verify`` where it has one
(the answer check without shaping terms, see ``rewards.composite``), else ``score >= 1``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ibpo_lightning.evaluation.metrics import BenchmarkMetrics
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.types import GenerationKind


def correctness(task: Task, completions: list[str], answers: list[str]) -> list[bool]:
    """Whether each completion answers right, without shaping terms (``Task.verify``)."""
    return [float(s) >= 1.0 for s in task.verify(completions, answers)]


def sample_correctness(sampler, task: Task, problems: Sequence[Problem], samples: int,
                       temperature: float, max_new_tokens: int | None = None) -> torch.Tensor:
    """``[problems, samples]`` correctness of ``samples`` answers to each problem.

    ``sampler`` is the run's :class:`~ibpo_lightning.rollout.sampler.Sampler`; temperature 0 is greedy.
    With a ``rollout.environment`` each answer is a multi-turn episode, scored on its last turn.
    """
    prompts = [sampler.encode(p.prompt, task.system_prompt) for p in problems]
    groups = sampler.answer(problems, prompts, samples, temperature=temperature,
                            max_new_tokens=max_new_tokens, kind=GenerationKind.VALIDATION)
    completions = [s.scored_text for group in groups for s in group]  # an episode: its last turn
    answers = [p.answer for p in problems for _ in range(samples)]
    right = correctness(task, completions, answers)
    return torch.tensor(right, dtype=torch.float32).view(len(problems), samples)


@dataclass
class EvalConfig:
    """How validation and ``ibpo test`` sample and score (``model.evaluation``).

    Args:
        samples: answers sampled per problem (1 with temperature 0: greedy).
        temperature: sampling temperature (0: greedy).
        pass_k: the k of each ``pass@k`` (None: 1 and ``samples``); each <= ``samples``.
        max_new_tokens: response length limit (None: ``rollout.max_new_tokens``).
        heldout_name: name of the data module task's held-out split in the results table.
        greedy: with ``temperature > 0``, also decode each problem greedily and report its accuracy
            as ``greedy`` beside mean@n (RL sharpens the sampling distribution first, so the two
            can move apart); ``<split>/accuracy`` stays the sampled mean.
    """

    samples: int = 1
    temperature: float = 0.0
    pass_k: list[int] | None = None
    max_new_tokens: int | None = None
    heldout_name: str = "heldout"
    greedy: bool = False


class EvalSuite(torch.nn.Module):
    """Per-benchmark metrics and seconds, and the results table.

    Args:
        names: Benchmark names, in table order.
        samples: Samples per problem.
        pass_k: The k of each pass@k.
        temperature: Sampling temperature (0: greedy, then ``samples`` must be 1).
        max_new_tokens: Response length limit (None: the sampler's).
        greedy: also one greedy answer per problem, reported as ``greedy`` (needs temperature > 0).
    """

    def __init__(self, names: Sequence[str], samples: int = 1, pass_k: Sequence[int] = (1,),
                 temperature: float = 0.0, max_new_tokens: int | None = None, greedy: bool = False) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"model.evaluation.samples must be >= 1, got {samples}")
        if samples > 1 and temperature <= 0:
            raise ValueError(f"model.evaluation.samples={samples} needs model.evaluation.temperature > 0: "
                             "greedy samples are identical")
        if greedy and temperature <= 0:
            raise ValueError("model.evaluation.greedy needs model.evaluation.temperature > 0: "
                             "the samples are already greedy")
        for name in names:
            if not name or "." in name or "/" in name:
                raise ValueError(f"benchmark name {name!r} must be non-empty, without '.' or '/'")
        self.samples, self.temperature, self.max_new_tokens, self.greedy = samples, temperature, max_new_tokens, greedy
        self.metrics = torch.nn.ModuleDict({name: BenchmarkMetrics(samples, pass_k, greedy) for name in names})
        self.seconds = dict.fromkeys(names, 0.0)

    def evaluate(self, sampler, name: str, task: Task, problems: Sequence[Problem]) -> torch.Tensor:
        """Sample, verify and record ``problems`` under benchmark ``name``; their correctness."""
        start = time.perf_counter()
        right = sample_correctness(sampler, task, problems, self.samples, self.temperature, self.max_new_tokens)
        greedy = sample_correctness(sampler, task, problems, 1, 0.0, self.max_new_tokens) if self.greedy else None
        device = self.metrics[name].mean.device
        self.metrics[name].update(right.to(device), None if greedy is None else greedy.to(device))
        self.seconds[name] += time.perf_counter() - start
        return right

    def compute(self) -> dict[str, dict[str, float]]:
        """Metrics of every benchmark that saw problems since the last reset."""
        return {name: m.compute() for name, m in self.metrics.items() if m.problems}

    def table(self, results: dict[str, dict[str, float]]) -> str:
        """The results as an aligned text table, one row per benchmark."""
        rows = [{"benchmark": name, "problems": str(self.metrics[name].problems), "samples": str(self.samples),
                 "temp": f"{self.temperature:g}", **{k: f"{v:.3f}" for k, v in values.items()},
                 "seconds": f"{self.seconds[name]:.1f}"} for name, values in results.items()]
        if not rows:
            return "(no benchmark problems evaluated)"
        columns = list(rows[0])
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
        lines = ["  ".join(c.ljust(widths[c]) if c == "benchmark" else c.rjust(widths[c]) for c in columns)]
        lines += ["  ".join(r[c].ljust(widths[c]) if c == "benchmark" else r[c].rjust(widths[c]) for c in columns)
                  for r in rows]
        return "\n".join(lines)

    def reset(self) -> None:
        for name, metrics in self.metrics.items():
            metrics.reset()
            self.seconds[name] = 0.0
