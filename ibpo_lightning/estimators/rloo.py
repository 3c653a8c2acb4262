"""RLOO (Ahmadian et al., arXiv 2402.14740): leave-one-out baseline within each group.

A_i = R_i - mean_{j != i} R_j = G/(G-1) * (R_i - mean_g R), on every response token.
"""

from __future__ import annotations

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import broadcast_to_tokens, leave_one_out
from ibpo_lightning.types import RolloutBatch


class RLOO(Estimator):
    """Leave-one-out REINFORCE baseline (pair it with ``loss.ratio: none`` for the paper's loss)."""

    name = "rloo"

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        return broadcast_to_tokens(self.per_trained_row(batch, leave_one_out), weights), weights
