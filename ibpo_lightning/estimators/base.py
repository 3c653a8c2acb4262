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
what ``plan`` or ``prepare`` computes for ``assign`` travels in ``batch.notes``. State that must
outlive a step (random generators, curricula, running statistics) is checkpointed by default:
every ``random.Random`` attribute, and the attributes named in ``checkpointed``, are saved with
the run (the callback's ``state_dict``) and restored on resume.
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

    checkpointed: tuple[str, ...] = ()
    """Attributes (besides the ``random.Random`` ones, always saved) that a resumed run restores."""

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

    # -- checkpoint state: a Lightning callback hook pair ---------------------------------------
    def state_dict(self) -> dict:
        """Every random generator's state and the ``checkpointed`` attributes."""
        state = {name: value.getstate() for name, value in vars(self).items() if isinstance(value, random.Random)}
        state.update({name: copy.deepcopy(getattr(self, name)) for name in self.checkpointed})
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        for name, value in state_dict.items():
            current = getattr(self, name, None)
            if isinstance(current, random.Random):
                current.setstate(value)
            elif name in self.checkpointed:
                setattr(self, name, value)

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
