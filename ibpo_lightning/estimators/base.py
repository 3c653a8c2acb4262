"""The estimator contract: a Lightning callback with declared hooks, called by the RL step.

* ``plan(batch, sampler, task)``: optional; ask the sampler for extra generations (revisions,
  reset suffixes, Monte-Carlo probes), score them with the task and append them to the batch as
  linked :class:`~ibpo_lightning.types.Trajectory` rows. Runs before the batch is collated.
* ``needs_reference``: whether ``assign`` reads ``batch.ref_logprobs``; the module then builds
  the frozen reference and fills them once per step, through its scorer.
* ``prepare(batch, scorer)``: optional; extra forward passes, only through the
  :class:`~ibpo_lightning.training.scorer.Scorer` (which makes them safe under every strategy).
* ``assign(batch) -> (advantages [N, L], loss_weights [N, L])``: per-token credit.

All four are called, in this order, by one function: ``RLStep.run`` (``ibpo_lightning/step.py``).
An estimator never touches a model or another component directly, and holds no per-batch state:
what ``plan`` or ``prepare`` computes for ``assign`` travels in ``batch.notes``. Random choices
come from ``generator(batch)``, a generator seeded from the estimator's ``seed`` and the step's
own seed (``batch.seed``: the rollout seed, the rank, the policy version), so they are a function
of the step and a resumed run repeats them on every rank, with nothing to checkpoint. State that
must outlive a step (curricula, running statistics) is named in ``checkpointed`` and saved with
the run by default (the callback's ``state_dict``); as Lightning stores one copy of a callback's
state, keep such state equal on every rank (reduce it first).
"""

from __future__ import annotations

import copy
import random
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from lightning.pytorch import Callback

from ibpo_lightning.types import RolloutBatch

if TYPE_CHECKING:
    from ibpo_lightning.rollout.sampler import Sampler
    from ibpo_lightning.tasks.base import Task
    from ibpo_lightning.training.scorer import Scorer


class Estimator(Callback, ABC):
    """Base class of advantage estimators; subclasses implement ``assign`` (and maybe ``plan``)."""

    name: str = "estimator"
    """Prefix of the estimator's own metrics (``<name>/...``)."""

    group_relative: bool = True
    """Whether the method compares samples of one prompt (then a group needs >= 2 samples)."""

    multi_turn: bool = True
    """Whether the method credits multi-turn episodes (``rollout.environment``); every built-in one
    does. A method whose extra rollouts cannot continue an episode sets False and is refused
    at start-up with an environment."""

    seed: int = 0
    """Seed of the estimator's random choices (combined with each step's ``batch.seed``)."""

    checkpointed: tuple[str, ...] = ()
    """Attributes that outlive a step and that a resumed run restores (equal on every rank)."""

    @property
    def needs_reference(self) -> bool:
        """Whether ``assign`` reads ``batch.ref_logprobs`` (the frozen reference's log-probs)."""
        return False

    def plan(self, batch: RolloutBatch, sampler: "Sampler", task: "Task") -> None:
        """Add extra rollouts to ``batch``; the default asks for none."""

    def prepare(self, batch: RolloutBatch, scorer: "Scorer") -> None:
        """Extra forward passes before ``assign``, through ``scorer``; the default runs none."""

    @abstractmethod
    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token advantages and loss weights, both [N, L], zero on untrained tokens."""

    def generator(self, batch: RolloutBatch) -> random.Random:
        """A generator for this step's random choices: a function of ``seed``, the step's seed
        (rollout seed, rank) and the policy version only."""
        return random.Random(f"{self.seed}:{batch.seed}:{batch.policy_version}")

    # -- checkpoint state: a Lightning callback hook pair ---------------------------------------
    def state_dict(self) -> dict:
        """The ``checkpointed`` attributes."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.checkpointed}

    def load_state_dict(self, state_dict: dict) -> None:
        for name in self.checkpointed:
            if name in state_dict:
                setattr(self, name, state_dict[name])

    @staticmethod
    def trained_rows(batch: RolloutBatch) -> torch.Tensor:
        """[N] bool: rows the loss trains on."""
        flags = [t.trained for t in batch.trajectories]
        return torch.tensor(flags, dtype=torch.bool, device=batch.rewards.device)

    def trained_mask(self, batch: RolloutBatch) -> torch.Tensor:
        """[N, L] response-token mask of the rows the loss trains on."""
        return batch.response_mask * self.trained_rows(batch).unsqueeze(-1)

    def per_trained_row(self, batch: RolloutBatch, fn) -> torch.Tensor:
        """Apply ``fn(rewards, group_ids)`` to the trained rows only; other rows get 0."""
        rows = self.trained_rows(batch)
        out = torch.zeros_like(batch.rewards)
        out[rows] = fn(batch.rewards[rows], batch.group_ids[rows])
        return out
