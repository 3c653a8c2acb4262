"""Token log-probs and the clipped policy-gradient loss with orthogonal switches."""

from ibpo_lightning.losses.logprobs import token_logprobs
from ibpo_lightning.losses.policy_gradient import (
    LogprobMismatch,
    LossStats,
    PolicyLoss,
    kl_penalty,
    truncated_importance_weight,
)

__all__ = ["LogprobMismatch", "LossStats", "PolicyLoss", "kl_penalty", "token_logprobs", "truncated_importance_weight"]
