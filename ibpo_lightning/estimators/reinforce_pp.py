"""REINFORCE++ (Hu, arXiv 2501.03262) and REINFORCE++-baseline: advantages whitened over the batch.

Token reward r_t = 1[t = last] * R - beta * KL_t with KL_t an estimate of KL(pi_old || pi_ref) at
token t (``kl_estimator``: k1 = log pi_old/pi_ref, the paper's), then

* REINFORCE++:           G_t = sum_{k>=t} gamma^(k-t) r_k,             A = whiten_batch(G)
* REINFORCE++-baseline:  S_i = sum_t r_t,  A_i = S_i - mean_g S,       A = whiten_batch(A_i on every token)

``whiten_batch`` is (x - mean) / std over all trained response tokens of the batch (token-
weighted, unbiased std: verl's ``masked_whiten``). The loss is PPO-clip with token-mean
aggregation and no KL term (``configs/estimators/reinforce_pp*.yaml``).

KL in the reward needs reference log-probs: with ``kl_coef > 0`` the estimator declares
``needs_reference``, the module's scorer fills ``batch.ref_logprobs`` once per step (the same
values a KL term in the loss would use), and pi_old is the engine's sampling log-probs. The alternative, KL in the loss, is ``estimator.kl_coef: 0`` with
``model.loss.kl_coef`` / ``model.loss.kl_estimator``.

Chosen here (not from a paper): the baseline variant sums the token rewards to one score before
the group mean, as verl does, so ``gamma`` only acts on the non-baseline variant;
``shift_mean: false`` whitens without re-centring, which keeps a uniform group at exactly 0 in
the baseline variant (verl and OpenRLHF re-centre, giving such groups a small shift).
"""

from __future__ import annotations

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import discounted_returns, group_mean_std, masked_whiten
from ibpo_lightning.losses import kl_penalty
from ibpo_lightning.losses.policy_gradient import KLEstimator
from ibpo_lightning.types import RolloutBatch


class ReinforcePP(Estimator):
    """Batch-whitened REINFORCE returns with an optional group-mean baseline and KL in the reward.

    Args:
        group_baseline: subtract the group mean of the score first (REINFORCE++-baseline).
        kl_coef: beta, the weight of the per-token KL penalty in the reward (0 = none).
        kl_estimator: ``k1`` (log-ratio, the paper's), ``k2`` or ``k3``.
        gamma: discount of the token returns (REINFORCE++ without baseline only).
        shift_mean: subtract the batch mean when whitening (false only divides by the std).
        eps: added to the variance when whitening.
    """

    name = "reinforce_pp"

    def __init__(
        self,
        group_baseline: bool = False,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k1",
        gamma: float = 1.0,
        shift_mean: bool = True,
        eps: float = 1e-8,
    ) -> None:
        if kl_coef < 0:
            raise ValueError(f"estimator.kl_coef must be >= 0, got {kl_coef}")
        if kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"estimator.kl_estimator must be k1, k2 or k3, got {kl_estimator!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"estimator.gamma must be in [0, 1], got {gamma}")
        self.group_baseline, self.kl_coef, self.kl_estimator = group_baseline, kl_coef, kl_estimator
        self.gamma, self.shift_mean, self.eps = gamma, shift_mean, eps
        self.group_relative = group_baseline  # plain REINFORCE++ works with groups of one

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0

    def token_rewards(self, batch: RolloutBatch, mask: torch.Tensor) -> torch.Tensor:
        """r_t: the outcome on each row's last trained token, minus beta * KL_t on every token."""
        rewards = torch.zeros_like(mask)
        has = mask.sum(-1) > 0
        last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # index of the last masked token
        rows = torch.nonzero(has).squeeze(-1)
        rewards[rows, last[rows]] = batch.rewards[rows]
        if self.kl_coef > 0:
            if batch.ref_logprobs is None:
                raise ValueError("ReinforcePP.kl_coef > 0 but the batch carries no reference log-probs")
            kl = kl_penalty(batch.engine_logprobs, batch.ref_logprobs, self.kl_estimator)
            rewards = rewards - self.kl_coef * kl * mask
            batch.stats["reinforce_pp/kl"] = float((kl * mask).sum() / mask.sum().clamp(min=1))
        return rewards

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        r = self.token_rewards(batch, weights)
        if self.group_baseline:
            rows = self.trained_rows(batch)
            score = r.sum(-1)
            centred = torch.zeros_like(score)
            centred[rows] = score[rows] - group_mean_std(score[rows], batch.group_ids[rows])[0]
            returns = centred.unsqueeze(-1) * weights
        else:
            returns = discounted_returns(r, weights, self.gamma)
        return masked_whiten(returns, weights, shift_mean=self.shift_mean, eps=self.eps), weights
