"""The estimator contract: a Lightning callback with two hooks.

* ``plan(batch, rollout, task)``: optional; ask the rollout engine for extra generations
  (revisions, reset suffixes, Monte-Carlo probes), score them with the task and append them to
  the batch as linked :class:`~ibpo_lightning.types.Trajectory` rows. Runs in the data stream,
  before the batch is collated.
* ``assign(batch) -> (advantages [N, L], loss_weights [N, L])``: per-token credit. Runs in
  ``on_train_batch_start``, so the module's ``training_step`` sees the filled batch.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from lightning.pytorch import Callback

from ibpo_lightning.types import RolloutBatch

if TYPE_CHECKING:
    from ibpo_lightning.rollout.callback import RolloutCallback
    from ibpo_lightning.tasks.base import Task


class Estimator(Callback, ABC):
    """Base class of advantage estimators; subclasses implement ``assign`` (and maybe ``plan``)."""

    group_relative: bool = True
    """Whether the method compares samples of one prompt (then a group needs >= 2 samples)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        from ibpo_lightning.rollout.callback import find_callback, RolloutCallback

        rollout = find_callback(trainer, RolloutCallback)
        if self.group_relative and rollout is not None and rollout.group_size < 2:
            raise ValueError(
                f"rollout.group_size={rollout.group_size}: {type(self).__name__} compares samples "
                "of the same prompt and needs a group size of at least 2"
            )

    def plan(self, batch: RolloutBatch, rollout: "RolloutCallback", task: "Task") -> None:
        """Add extra rollouts to ``batch``; the default asks for none."""

    @abstractmethod
    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token advantages and loss weights, both [N, L], zero on untrained tokens."""

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

    def on_train_batch_start(self, trainer, pl_module, batch: RolloutBatch, batch_idx: int) -> None:
        start = time.perf_counter()
        batch.advantages, batch.loss_weights = self.assign(batch)
        batch.stats["time/estimator"] = batch.stats.get("time/estimator", 0.0) + time.perf_counter() - start
