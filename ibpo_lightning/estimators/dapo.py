"""DAPO (Yu et al., arXiv 2503.14476): GRPO's advantage with overlong shaping; dynamic sampling
is the run's switch (``rollout.dynamic_sampling``), which ``configs/estimators/dapo.yaml`` turns on.

    A_i = (R'_i - mean_g R') / (std_g R' + eps),   R'_i = R_i + R_len(|o_i|)

* **Dynamic sampling**: groups whose task rewards are all equal give no gradient; they are
  dropped and refilled from fresh prompts (``rollout/dynamic.py``). It used to live here; it now
  composes with every estimator, and DAPO is these loss settings plus that switch.
* **Soft overlong punishment**: R_len = 0 up to L_max - L_cache tokens, then linear down to -1 at
  L_max = ``rollout.max_new_tokens``; L_cache = ``overlong_buffer``.
* **Overlong filtering**: truncated samples get loss weight 0 (they stay in the group statistics).
* Clip-higher (eps_low 0.2, eps_high 0.28), the token-mean loss over the batch and no KL are the
  loss switches of ``configs/estimators/dapo.yaml``.

Reconstructed or chosen here: ``overlong_buffer_fraction`` (the paper's 4096 of 20480 tokens) for
the short budgets of this project; filtering off by default, as in verl's DAPO recipe (the
paper's ablation also stacks it).
"""

from __future__ import annotations

import math

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import broadcast_to_tokens, group_normalise, overlong_penalty
from ibpo_lightning.types import RolloutBatch


class DAPO(Estimator):
    """Group-normalised advantage with overlong filtering and soft punishment.

    Args:
        overlong_filtering: truncated samples (length limit hit) get loss weight 0.
        soft_overlong_punishment: add the linear length penalty R_len to the reward.
        overlong_buffer: L_cache, tokens of the penalty zone before the length limit; None =
            ``overlong_buffer_fraction`` of it.
        overlong_buffer_fraction: L_cache / L_max when ``overlong_buffer`` is None (paper 0.2).
        overlong_penalty: the penalty at the length limit (verl's ``penalty_factor``).
        max_length: L_max; None = ``rollout.max_new_tokens``.
        normalize_std: divide by the group std of the shaped reward.
        eps: added to the std.
    """

    name = "dapo"

    def __init__(
        self,
        overlong_filtering: bool = False,
        soft_overlong_punishment: bool = True,
        overlong_buffer: int | None = None,
        overlong_buffer_fraction: float = 0.2,
        overlong_penalty: float = 1.0,
        max_length: int | None = None,
        normalize_std: bool = True,
        eps: float = 1e-6,
    ) -> None:
        if overlong_buffer is not None and overlong_buffer < 1:
            raise ValueError(f"estimator.overlong_buffer must be >= 1 or null, got {overlong_buffer}")
        if not 0.0 < overlong_buffer_fraction <= 1.0:
            raise ValueError(f"estimator.overlong_buffer_fraction must be in (0, 1], got {overlong_buffer_fraction}")
        self.overlong_filtering, self.soft_overlong_punishment = overlong_filtering, soft_overlong_punishment
        self.overlong_buffer, self.overlong_buffer_fraction = overlong_buffer, overlong_buffer_fraction
        self.overlong_penalty, self.max_length = overlong_penalty, max_length
        self.normalize_std, self.eps = normalize_std, eps

    def plan(self, batch, sampler, task) -> None:
        if self.max_length is None:  # L_max: the run's response budget
            self.max_length = sampler.max_new_tokens

    # -- assign ------------------------------------------------------------------------------
    def buffer_tokens(self) -> int:
        """L_cache in tokens for the current L_max."""
        if self.max_length is None:
            raise ValueError("DAPO.max_length is unknown: set it or let plan() read rollout.max_new_tokens")
        if self.overlong_buffer is not None:
            if self.overlong_buffer > self.max_length:
                raise ValueError(f"estimator.overlong_buffer={self.overlong_buffer} exceeds the length limit "
                                 f"{self.max_length}")
            return self.overlong_buffer
        return max(1, math.ceil(self.overlong_buffer_fraction * self.max_length))

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        rewards = batch.rewards
        if self.soft_overlong_punishment:
            lengths = torch.tensor([len(t.response_ids) for t in batch.trajectories], device=rewards.device)
            penalty = overlong_penalty(lengths, self.max_length or 0, self.buffer_tokens(), self.overlong_penalty)
            rewards = rewards + penalty
            batch.stats[f"{self.name}/overlong_penalty_mean"] = float(penalty.mean())
        rows = self.trained_rows(batch)
        adv = torch.zeros_like(rewards)
        adv[rows] = group_normalise(rewards[rows], batch.group_ids[rows], divide_by_std=self.normalize_std, eps=self.eps)
        if self.overlong_filtering:
            truncated = torch.tensor([not t.finished for t in batch.trajectories], device=weights.device)
            weights = weights * (~truncated).unsqueeze(-1)
            batch.stats[f"{self.name}/filtered_truncated"] = float((truncated & rows).sum())
        return broadcast_to_tokens(adv, weights), weights

