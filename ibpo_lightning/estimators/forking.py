"""Forking tokens: the policy gradient on the high-entropy minority of tokens only (Wang et al.,
"Beyond the 80/20 rule", arXiv 2506.01939).

Most tokens of an answer are near-certain; a minority, where the policy's next-token entropy is
high, decide which way the answer goes. The paper keeps GRPO/DAPO's advantage on the top
``top_share`` (0.2) of response tokens by entropy and zeroes it on the rest:

    A_i,t = A_i * 1[H_i,t >= tau],   tau such that a share top_share of the batch's tokens is kept
    H_i,t = entropy of pi(. | x, y_<t) at the sampling temperature

Reconstructed from the paper and its public code: the entropy is the current policy's (this
estimator's ``prepare`` scores it, one no-grad pass over the trained rows: the policy the update
starts from), the top share is an exact top-k (k = ceil(top_share * tokens)) among this process's
trained response tokens (the code selects within each device's micro-batch; the paper within the
batch), and only the policy-gradient term is masked: the loss weights stay on every token, so the
loss is divided by all tokens as in the paper's objective (the code divides by the kept tokens) and
a KL or entropy term still covers every token, as in the code. The sequence advantage is GRPO's;
DAPO's loss settings and dynamic sampling, which the paper trains with, are the run's switches.
"""

from __future__ import annotations

import math

import torch

from ibpo_lightning.estimators.grpo import GRPO
from ibpo_lightning.types import RolloutBatch


class ForkingTokens(GRPO):
    """GRPO's advantage on the ``top_share`` of response tokens with the highest policy entropy.

    Args:
        top_share: share of the trained response tokens that keep their advantage (1: GRPO).
        normalize_std: divide by the group's reward std (GRPO).
        eps: added to the std.
    """

    name = "forking"
    ENTROPY = "forking/entropy"
    """``batch.notes`` key: [N, L] entropy of the policy at each response token, set by ``prepare``."""

    def __init__(self, top_share: float = 0.2, normalize_std: bool = True, eps: float = 1e-6) -> None:
        if not 0.0 < top_share <= 1.0:
            raise ValueError(f"estimator.top_share must be in (0, 1], got {top_share}")
        super().__init__(normalize_std=normalize_std, eps=eps)
        self.top_share = top_share

    def prepare(self, batch: RolloutBatch, scorer) -> None:
        # on every rank alike, rows or not: the passes of a sharded policy must match
        batch.notes[self.ENTROPY] = scorer.entropies(batch, batch.rows(lambda t: t.trained))

    def forks(self, entropy: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """[N, L] bool: the ceil(top_share * n) trained tokens of highest entropy (n trained tokens)."""
        trained = weights.gt(0)
        n = int(trained.sum())
        keep = torch.zeros_like(trained)
        if n:
            flat = torch.where(trained, entropy.float(), torch.tensor(-math.inf, device=entropy.device)).flatten()
            keep.view(-1)[torch.topk(flat, math.ceil(self.top_share * n)).indices] = True
        return keep

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ENTROPY not in batch.notes:
            raise ValueError("ForkingTokens.assign needs the entropies its prepare() scores: call prepare first")
        adv, weights = super().assign(batch)
        entropy = batch.notes[self.ENTROPY]
        keep = self.forks(entropy, weights)
        if keep.any():
            batch.stats[f"{self.name}/entropy_threshold"] = float(entropy[keep].min())
            batch.stats[f"{self.name}/kept_entropy_mean"] = float(entropy[keep].mean())
        return adv * keep, weights
