"""The policy update of one RL step: PPO epochs x mini-batches over one rollout batch.

Each optimizer update accumulates micro-batches of whole groups; the loss normaliser covers
every rank's rows (gradients are averaged across ranks, so the update equals one process
training on the whole batch). Rows whose every token has zero advantage add nothing to the
gradient without a KL term: with ``loss.kl_coef == 0`` they get no forward or backward pass,
though they still count in the normaliser. An update whose loss or gradient norm is not finite
on any rank is skipped on every rank, counted and reported, never applied.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch

from ibpo_lightning.losses import LogprobMismatch, PolicyLoss, truncated_importance_weight
from ibpo_lightning.training.optim import clip_and_step
from ibpo_lightning.training.scorer import Scorer
from ibpo_lightning.types import RolloutBatch

_MERGE = {"ratio_max": max, "ratio_min": min}
_AVERAGED = ("kl", "clip_fraction", "entropy")


class PolicyUpdate:
    """Runs the optimizer updates of one rollout batch.

    Args:
        loss: the policy-gradient loss.
        scorer: the scoring seam (policy and, for KL, reference log-probs).
        backward: ``LightningModule.manual_backward`` (precision and strategy aware).
        ppo_epochs: passes over the batch.
        mini_batches: optimizer updates per pass.
        max_grad_norm: clipping threshold (None: none; the norm is still reported).
        tis_cap: truncation of the engine -> trainer importance ratio, applied when ``lag_corrected``.
        clip_and_step: ``clip_and_step(opt, parallel, bad) -> grad norm or None``: clip and step, or skip an update
            whose loss (``bad`` names it) or gradient is not finite on some rank
            (``PolicyHost.clip_and_step``); None: plain clipping at ``max_grad_norm`` and skipping.
    """

    def __init__(self, loss: PolicyLoss, scorer: Scorer, backward: Callable, ppo_epochs: int = 1,
                 mini_batches: int = 1, max_grad_norm: float | None = 1.0, tis_cap: float = 2.0,
                 lag_corrected: bool = False, clip_and_step: Callable | None = None) -> None:
        self.loss, self.scorer, self.backward = loss, scorer, backward
        self.ppo_epochs, self.mini_batches, self.max_grad_norm = ppo_epochs, mini_batches, max_grad_norm
        self.tis_cap, self.lag_corrected = tis_cap, lag_corrected
        self.clip_and_step = clip_and_step or self._clip_and_step
        self.tokens_real = self.tokens_padded = 0
        """Tokens of this step's forward/backward passes, without and with padding."""

    def run(self, batch: RolloutBatch, opt, sched, lag: int = 0) -> dict[str, float]:
        """All updates of ``batch``: averaged loss statistics, the log-prob mismatch, counters, and
        the seconds of the old-policy pass (``time/logprobs``) and of the updates (``time/train``)."""
        parallel = self.scorer.parallel
        rows = [i for i in range(len(batch)) if bool(batch.loss_weights[i].any())]
        empty = parallel.reduce(len(rows), "max") == 0  # every group solved or hopeless: nothing to learn
        busy = set(rows if self.loss.kl_coef > 0 else [i for i in rows if bool(batch.advantages[i].any())])
        several = self.ppo_epochs * self.mini_batches > 1  # then old log-probs are the trainer's, before the update
        start = time.perf_counter()
        old = self.scorer.full(batch, sorted(busy)) if several else None
        logprob_time, start = time.perf_counter() - start, time.perf_counter()
        minis = parallel.pad(batch.split_groups(rows, self.mini_batches))
        totals: dict[str, float] = {}
        mismatch, updates = LogprobMismatch(), 0
        self.tokens_real = self.tokens_padded = 0
        for epoch in range(self.ppo_epochs):
            for mini in minis:
                mini = mini or []
                stats = self._update(batch, mini, [i for i in mini if i in busy], old, opt,
                                     mismatch if epoch == 0 else None)
                if stats is None:
                    continue
                sched.step()
                updates += 1
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
        out = {f"train/{k}": v / max(updates, 1) for k, v in totals.items()}
        out.update({"train/tokens_real": float(self.tokens_real), "train/tokens_padded": float(self.tokens_padded)})
        out.update(mismatch.metrics(lag))
        out.update({"train/empty_step": float(empty), "train/updates": float(updates),
                    "time/logprobs": logprob_time, "time/train": time.perf_counter() - start})
        return out

    def _update(self, batch, rows, busy, old, opt, mismatch) -> dict[str, float] | None:
        """One optimizer update over ``rows`` (passes on ``busy`` only); None if skipped."""
        parallel = self.scorer.parallel
        local = self.loss.normaliser(batch.loss_weights[rows]) if rows else 0.0
        normaliser = parallel.reduce(local) / parallel.world
        opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        n_micro, bad = 0, None
        for micro in self.scorer.chunks(batch, busy):
            if micro is None:  # a pass that adds nothing, to match another rank's micro-batch
                self.backward(self.scorer.empty_pass())
                continue
            logp, entropy, width = self.scorer.logprobs(batch, micro, with_entropy=True,
                                                        entropy_grad=self.loss.entropy_bonus)
            self.tokens_real += sum(batch.row_length(i) for i in micro)
            self.tokens_padded += len(micro) * width
            w = batch.loss_weights[micro, :width]
            old_logp = old[micro, :width] if old is not None else logp.detach()
            ref_logp = batch.ref_logprobs[micro, :width] if batch.ref_logprobs is not None else None
            engine_logp, scored = batch.engine_logprobs[micro, :width], batch.response_mask[micro, :width] > 0
            if mismatch is not None:
                mismatch.add((old_logp - engine_logp).abs()[scored])
            adv = batch.advantages[micro, :width]
            if self.lag_corrected:  # truncated importance sampling: engine -> trainer policy
                adv = adv * truncated_importance_weight(old_logp, engine_logp, self.tis_cap)
            loss, st = self.loss(logp, old_logp, adv, w, normaliser, ref_logp,
                                 entropy if self.loss.entropy_bonus else None)
            if not torch.isfinite(loss):
                bad = bad or "loss"  # still backward: the other ranks' passes wait for this one's
            self.backward(loss)
            n_micro += 1
            st.entropy = float((entropy.detach() * w.gt(0)).sum() / w.gt(0).sum().clamp(min=1))
            for k, v in vars(st).items():
                stats[k] = _MERGE.get(k, float.__add__)(stats[k], v) if k in stats else v
        norm = self.clip_and_step(opt, parallel, bad)
        if norm is None:  # skipped on every rank
            return None
        out = {k: v / max(n_micro, 1) if k in _AVERAGED else v for k, v in stats.items()}
        out["grad_norm"], out["entropy_coef"] = norm, self.loss.entropy_coef_now
        if self.loss.target_entropy is not None:  # every rank moves the coefficient alike
            self.loss.adapt(parallel.reduce(out.get("entropy", 0.0)) / parallel.world)
        return out

    def _clip_and_step(self, opt, parallel, bad: str | None) -> float | None:
        """Clip at ``max_grad_norm`` and step; skip (with a warning) a non-finite update."""
        norm, skipped = clip_and_step(self.scorer.model("policy"), opt, self.max_grad_norm, parallel, bad)
        if skipped:
            warnings.warn(f"non-finite {skipped}; update skipped", RuntimeWarning, stacklevel=3)
        return norm
