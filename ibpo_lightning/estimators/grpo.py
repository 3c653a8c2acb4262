"""GRPO (DeepSeekMath, arXiv 2402.03300) and, with ``normalize_std=False``, Dr.GRPO (arXiv 2503.20783).

A_i = (R_i - mean_g R) / (std_g R + eps) on every response token of sample i. The std is the
unbiased one, as in verl. Dr.GRPO's other change (token sums over a constant) is the loss switch
``aggregation: token_sum_norm``.
"""

from __future__ import annotations

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import broadcast_to_tokens, group_normalise
from ibpo_lightning.types import RolloutBatch


class GRPO(Estimator):
    """Group-normalised outcome advantage.

    Args:
        normalize_std: divide by the group's reward std (GRPO); off gives Dr.GRPO.
        eps: added to the std before dividing.
    """

    name = "grpo"

    def __init__(self, normalize_std: bool = True, eps: float = 1e-6) -> None:
        self.normalize_std, self.eps = normalize_std, eps

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        adv = self.per_trained_row(
            batch, lambda r, g: group_normalise(r, g, divide_by_std=self.normalize_std, eps=self.eps)
        )
        return broadcast_to_tokens(adv, weights), weights
