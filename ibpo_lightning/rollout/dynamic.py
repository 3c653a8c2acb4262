"""Dynamic sampling (DAPO, arXiv 2503.14476), for every estimator: keep only groups that can teach.

A group whose samples all got the same *outcome* reward (all right or all wrong) has zero
group-relative advantage: it costs a forward and backward pass and teaches nothing. With the
switch on (``rollout.dynamic_sampling``), the RL step drops such groups and samples fresh prompts
in their place, round after round, until the batch holds as many groups with reward variance as
it was drawn with, or ``max_rounds`` extra rounds have run.

* The filter reads the task's reward as ``Task.score`` returned it, before any estimator shapes
  it (never IBPO's shaped reward, never DAPO's length penalty): verl's ``filter_groups.metric: acc``.
* Every extra generation is counted under ``tokens/resample``: compare runs at equal tokens.
* Under data parallelism the ranks agree on the rounds: each round, every rank draws as many
  problems as the neediest rank is missing (the shared prompt order advances alike on every
  rank), and only the ranks still short of groups sample them.
* When the rounds run out the batch keeps the varied groups it has; if it has none it keeps the
  original groups (the step then trains on nothing, and ``train/empty_steps`` counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.types import GenerationKind, RolloutBatch, Trajectory


@dataclass(frozen=True)
class DynamicSampling:
    """Drop groups without reward variance and refill them from fresh prompts.

    Args:
        max_rounds: extra sampling rounds per step at most (0: drop only, never refill).
        oversample: prompts drawn per missing group in each round.
    """

    max_rounds: int = 10
    oversample: int = 1

    def __post_init__(self) -> None:
        if self.max_rounds < 0:
            raise ValueError(f"rollout.dynamic_sampling.max_rounds must be >= 0, got {self.max_rounds}")
        if self.oversample < 1:
            raise ValueError(f"rollout.dynamic_sampling.oversample must be >= 1, got {self.oversample}")

    def fill(self, batch: RolloutBatch, sampler, task: Task, draw: Callable[[int], list[Problem]],
             most: Callable[[int], int] = int) -> dict[str, float]:
        """Refill ``batch`` (scored, not collated) in place; returns ``dynamic/*`` metrics.

        ``draw(k)`` gives the next ``k`` problems of the run's prompt order; ``most(n)`` is the
        largest ``n`` over the data-parallel ranks (the identity on one process)."""
        target, rounds = len(batch.groups), 0
        while rounds < self.max_rounds:
            missing = target - len(varied_groups(batch))
            neediest = most(max(missing, 0))
            if neediest == 0:
                break
            problems = draw(neediest * self.oversample)
            if missing > 0:
                add_groups(batch, problems, sampler, task)
            rounds += 1
        varied = varied_groups(batch)[:target]
        drawn = len(batch.groups)
        keep_groups(batch, varied or list(range(target)))
        return {"dynamic/groups_drawn": float(drawn), "dynamic/groups_kept": float(len(varied)),
                "dynamic/rounds": float(rounds)}


def varied_groups(batch: RolloutBatch) -> list[int]:
    """Groups whose fresh samples' rewards are not all equal, in group order."""
    rewards = {g: [batch.trajectories[i].reward for i in rows] for g, rows in batch.fresh_groups().items()}
    return sorted(g for g, r in rewards.items() if max(r) > min(r))


def add_groups(batch: RolloutBatch, problems: list[Problem], sampler, task: Task) -> None:
    """Sample and score one fresh group per problem and append them as new groups."""
    prompts = [sampler.encode(p.prompt, task.system_prompt) for p in problems]
    groups = sampler.answer(problems, prompts, sampler.group_size, kind=GenerationKind.RESAMPLE)
    rows = []
    for p, prompt, samples in zip(problems, prompts, groups):
        rows += [Trajectory.from_sample(prompt, p.prompt, s, group=len(batch.groups)) for s in samples]
        batch.groups.append(p)
    batch.add_scored(rows, task)


def keep_groups(batch: RolloutBatch, groups: list[int]) -> None:
    """Keep only the rows of ``groups`` (renumbered 0..k-1 in that order); before collation."""
    new = {g: k for k, g in enumerate(groups)}
    batch.trajectories[:] = [t for t in batch.trajectories if t.group in new]
    for t in batch.trajectories:
        t.group = new[t.group]
    batch.groups[:] = [batch.groups[g] for g in groups]
