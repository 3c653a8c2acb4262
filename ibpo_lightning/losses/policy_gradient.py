"""One clipped policy-gradient loss whose variants are switches, not separate classes.

Per token t of sequence i, with advantage A and loss weight w (both from the estimator):

* ratio ``token``: r = exp(logp - old_logp) (PPO / GRPO / DAPO);
  ratio ``sequence``: r_i = exp(mean_t w(logp - old_logp)) broadcast to every token (GSPO);
  ratio ``none``: plain REINFORCE, the per-token term is -A * logp.
* clipped term: max(-r A, -clip(r, 1 - eps_low, 1 + eps_high) A), optionally dual-clipped at
  -dual_clip * A for negative A (Ye et al. 2020).
* KL to the reference (k1 | k2 | k3, Schulman's estimators) added with coefficient ``kl_coef``.
* an entropy bonus: ``- entropy_coef * H_t`` per token (H_t the policy's entropy at the token's
  position, with its gradient), either fixed or, with ``target_entropy``, adapted after every
  optimizer update: the coefficient moves by ``entropy_coef_step`` up when the batch's mean entropy
  is under the target and down when it is over, within [0, ``entropy_coef_max``] (the fixed-step
  rule of adaptive entropy control, as Skywork-OR1 describes it; the step, the clamp and applying
  it per update are chosen here).
* aggregation ``token_mean`` (sum over all weighted tokens / their total, DAPO),
  ``seq_mean_token_mean`` (mean over sequences of per-sequence token means, GRPO),
  ``token_sum_norm`` (token sums / ``norm_constant``, averaged over sequences, Dr.GRPO).

The normaliser is passed in, so that micro-batches of one mini-batch accumulate to exactly the
mini-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Ratio = Literal["token", "sequence", "none"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "token_sum_norm"]
KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens."""
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    return torch.exp(log_ratio) - log_ratio - 1.0


def truncated_importance_weight(behaviour_logp: torch.Tensor, engine_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token ``min(pi_behaviour / pi_engine, cap)``, detached: corrects tokens sampled by a lagging
    or numerically different engine toward the trainer's behaviour policy (truncated IS)."""
    return torch.exp(behaviour_logp.detach() - engine_logp).clamp(max=cap)


@dataclass
class LossStats:
    """Diagnostics of one loss evaluation (detached scalars, summed over micro-batches)."""

    pg_loss: float = 0.0
    kl: float = 0.0
    clip_fraction: float = 0.0
    ratio_max: float = 0.0
    ratio_min: float = 0.0
    entropy: float = 0.0


class PolicyLoss:
    """Clipped policy-gradient loss.

    Args:
        ratio: ``token`` (PPO/GRPO), ``sequence`` (GSPO geometric-mean ratio) or ``none``
            (REINFORCE on log-probs, no clipping).
        eps_low: lower clip range, ratio >= 1 - eps_low.
        eps_high: upper clip range, ratio <= 1 + eps_high (DAPO clip-higher uses 0.28).
        dual_clip: if set (> 1), bound the loss of negative-advantage tokens by dual_clip * |A|.
        aggregation: how token losses become one number (see the module docstring).
        norm_constant: the constant dividing token sums under ``token_sum_norm``
            (Dr.GRPO uses the maximum generation length).
        kl_coef: coefficient of the KL-to-reference term; 0 turns the reference forward off.
        kl_estimator: ``k1``, ``k2`` or ``k3``.
        entropy_coef: coefficient of the entropy bonus (the starting one when adaptive); 0 and no
            ``target_entropy``: no bonus.
        target_entropy: mean token entropy (nats) the adaptive coefficient holds; None: fixed.
        entropy_coef_step: how far the adaptive coefficient moves per optimizer update.
        entropy_coef_max: the adaptive coefficient's upper bound.
    """

    def __init__(
        self,
        ratio: Ratio = "token",
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        dual_clip: float | None = None,
        aggregation: Aggregation = "seq_mean_token_mean",
        norm_constant: float = 1024.0,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k3",
        entropy_coef: float = 0.0,
        target_entropy: float | None = None,
        entropy_coef_step: float = 0.001,
        entropy_coef_max: float = 0.05,
    ) -> None:
        if ratio not in ("token", "sequence", "none"):
            raise ValueError(f"loss.ratio must be token, sequence or none, got {ratio!r}")
        if aggregation not in ("token_mean", "seq_mean_token_mean", "token_sum_norm"):
            raise ValueError(f"loss.aggregation: unknown value {aggregation!r}")
        if kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"loss.kl_estimator must be k1, k2 or k3, got {kl_estimator!r}")
        if dual_clip is not None and dual_clip <= 1.0:
            raise ValueError(f"loss.dual_clip must be > 1, got {dual_clip}")
        self.ratio, self.eps_low, self.eps_high, self.dual_clip = ratio, eps_low, eps_high, dual_clip
        self.aggregation, self.norm_constant = aggregation, norm_constant
        self.kl_coef, self.kl_estimator = kl_coef, kl_estimator
        if entropy_coef < 0 or entropy_coef_step < 0 or entropy_coef_max < 0:
            raise ValueError("loss.entropy_coef, loss.entropy_coef_step and loss.entropy_coef_max must be >= 0")
        if target_entropy is not None and target_entropy <= 0:
            raise ValueError(f"loss.target_entropy must be > 0 (nats) or null, got {target_entropy}")
        self.entropy_coef, self.target_entropy = entropy_coef, target_entropy
        self.entropy_coef_step, self.entropy_coef_max = entropy_coef_step, entropy_coef_max
        self.entropy_coef_now = entropy_coef
        """The coefficient in use (moves when adaptive; saved in checkpoints)."""

    @property
    def entropy_bonus(self) -> bool:
        """Whether the loss needs the entropy with its gradient."""
        return self.entropy_coef_now > 0 or self.target_entropy is not None

    def adapt(self, mean_entropy: float) -> None:
        """One step of the adaptive coefficient toward ``target_entropy`` (no-op when fixed)."""
        if self.target_entropy is None:
            return
        step = self.entropy_coef_step if mean_entropy < self.target_entropy else -self.entropy_coef_step
        self.entropy_coef_now = min(max(self.entropy_coef_now + step, 0.0), self.entropy_coef_max)

    def state_dict(self) -> dict:
        return {"entropy_coef_now": self.entropy_coef_now}

    def load_state_dict(self, state: dict) -> None:
        self.entropy_coef_now = state.get("entropy_coef_now", self.entropy_coef_now)

    def normaliser(self, weights: torch.Tensor) -> float:
        """The denominator for a whole mini-batch; weights [N, L]."""
        seqs = float((weights.sum(-1) > 0).sum().clamp(min=1))
        if self.aggregation == "token_mean":
            return float(weights.sum().clamp(min=1e-8))
        if self.aggregation == "token_sum_norm":
            return seqs * self.norm_constant
        return seqs

    def __call__(
        self,
        logp: torch.Tensor,  # [n, L] current policy log-prob of each token
        old_logp: torch.Tensor,  # [n, L] behaviour log-prob (detached)
        advantages: torch.Tensor,  # [n, L]
        weights: torch.Tensor,  # [n, L] loss weights, 0 outside trained tokens
        normaliser: float,
        ref_logp: torch.Tensor | None = None,  # [n, L]
        entropy: torch.Tensor | None = None,  # [n, L] with its gradient, for the entropy bonus
    ) -> tuple[torch.Tensor, LossStats]:
        """Loss contribution of these rows to a mini-batch whose normaliser is given."""
        active = weights > 0
        if self.ratio == "none":
            per_token = -advantages * logp
            ratio = torch.ones_like(logp)
            clipped = torch.zeros_like(active)
        else:
            log_ratio = (logp - old_logp) * active
            if self.ratio == "sequence":
                seq = log_ratio.sum(-1) / weights.gt(0).sum(-1).clamp(min=1)  # [n]
                log_ratio = seq.unsqueeze(-1).expand_as(logp)
            ratio = torch.exp(log_ratio)
            bounded = ratio.clamp(1.0 - self.eps_low, 1.0 + self.eps_high)
            unclipped_loss, clipped_loss = -advantages * ratio, -advantages * bounded
            per_token = torch.maximum(unclipped_loss, clipped_loss)
            clipped = (clipped_loss > unclipped_loss) & active
            if self.dual_clip is not None:
                dual = torch.minimum(per_token, -advantages * self.dual_clip)
                per_token = torch.where(advantages < 0, dual, per_token)
        kl = torch.zeros_like(logp)
        if ref_logp is not None and self.kl_coef > 0:
            kl = kl_penalty(logp, ref_logp, self.kl_estimator)
            per_token = per_token + self.kl_coef * kl
        if entropy is not None and self.entropy_coef_now > 0:
            per_token = per_token - self.entropy_coef_now * entropy
        loss = self._aggregate(per_token, weights) / normaliser
        n_active = active.sum().clamp(min=1)
        masked_ratio = ratio.detach()[active] if active.any() else ratio.new_ones(1)
        stats = LossStats(
            pg_loss=float(loss.detach()),
            kl=float((kl.detach() * active).sum() / n_active),
            clip_fraction=float(clipped.sum() / n_active),
            ratio_max=float(masked_ratio.max()),
            ratio_min=float(masked_ratio.min()),
        )
        return loss, stats

    def _aggregate(self, per_token: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        weighted = per_token * weights
        if self.aggregation == "seq_mean_token_mean":
            lengths = weights.gt(0).sum(-1).clamp(min=1)
            return (weighted.sum(-1) / lengths).sum()
        return weighted.sum()


class LogprobMismatch:
    """Running mean and max of |trainer log-prob - engine log-prob| over response tokens."""

    def __init__(self) -> None:
        self.total, self.count, self.max = 0.0, 0, 0.0

    def add(self, diffs: torch.Tensor) -> None:
        if diffs.numel():
            self.total += float(diffs.sum())
            self.count += diffs.numel()
            self.max = max(self.max, float(diffs.max()))

    def metrics(self, lag: int) -> dict[str, float]:
        out = {"rollout/policy_lag": float(lag)}
        if self.count:
            out.update({"rollout/logprob_diff_mean": self.total / self.count, "rollout/logprob_diff_max": self.max})
        return out
