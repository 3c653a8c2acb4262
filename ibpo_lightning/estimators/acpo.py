"""ACPO, attribution-based credit assignment (Yin et al., arXiv 2510.08899), reconstructed.

The public record is the abstract and third-party summaries: trajectory segmentation, an
information-theoretic step attribution ("mutual information surrogate"), a factorised reward
over steps, attribution-driven entropy regulation and a two-stage difficulty curriculum. No
equation, hyperparameter or code is public, so **every formula below is a reconstruction**
(see ``docs/estimators.md``), each behind a switch:

1. Segmentation (``plan``): steps end at ``step_delimiter``; ``dynamic_cuts`` more steps start
   at each response's most surprising tokens (highest -log pi_old); at most ``max_steps``.
2. Attribution (``attribution: answer_logprob``, in ``prepare``): one teacher-forced, no-grad
   forward pass of the current policy per step boundary, through the scorer, L_k = log pi(a* | x, s_<=k, cue), a* the reference answer after
   ``answer_cue``; c_k = L_k - L_{k-1} is the information step k adds about the answer.
3. Factorised step credit: A_i,t = Â_i * max(0, 1 + eta * sign(Â_i) * z_k(t)), z the
   within-trajectory z-score of c, Â_i GRPO's group-normalised reward.
4. Entropy regulation (stage 1): while the batch entropy H (mean -log pi_old of sampled tokens)
   is below ``target_entropy``, tokens of crucial steps (|z| >= ``crucial_z``) get
   beta_H * (-log pi_old(y_t) - H) added to their advantage, the score-function form of an
   entropy bonus.
5. Curriculum: stage 1 trains groups whose pass rate lies in ``stage1_band``; from
   ``curriculum_switch_step`` (policy version) stage 2 trains ``stage2_band`` (harder) with the
   confidence-weighted reward R_i * exp(mean_t log pi_old) and no entropy regulation. The band
   is a loss weight on groups already sampled; prompt selection by pass rate and the stage-2
   KL anchor to the stage-1 policy are not built (use ``model.loss.kl_coef`` for a KL to the
   initial policy).
"""

from __future__ import annotations

from typing import Literal

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import (
    attribution_factors, broadcast_to_tokens, group_normalise, step_of_tokens, zscore)
from ibpo_lightning.estimators.segments import check_delimiter, segment, thin
from ibpo_lightning.types import RolloutBatch


class ACPO(Estimator):
    """Attribution-weighted step credit, entropy regulation and a pass-rate curriculum.

    Args:
        step_delimiter: text that ends a step (None = no delimiter steps).
        dynamic_cuts: extra step starts per response, at its most surprising tokens.
        max_steps: cap on steps per response (boundaries thinned evenly); None = no cap.
        attribution: ``answer_logprob`` (one forward pass per step boundary) or ``none``
            (every step gets factor 1: GRPO plus entropy regulation and curriculum).
        answer_cue: text put between the response prefix and the reference answer when scoring.
        attribution_coef: eta, how strongly attribution reweights the steps.
        entropy_coef: beta_H of the entropy regulation (0 = off).
        target_entropy: regulate while the batch entropy (nats per token) is below this.
        crucial_z: a step is crucial when its attribution z-score is at least this in size.
        stage1_band: (low, high) pass rates of the groups trained in stage 1.
        stage2_band: (low, high) pass rates of the groups trained in stage 2.
        curriculum_switch_step: policy version where stage 2 starts; None = stage 1 throughout.
        confidence_weighting: in stage 2, reward R_i * exp(mean_t log pi_old(y_t)).
        correct_threshold: a reward at or above this counts as correct for the pass rate.
        normalize_std: divide by the group std (GRPO); off gives Dr.GRPO's centring.
        eps: added to the std.
    """

    name = "acpo"
    PROBES = "acpo/probes"
    """``batch.notes`` key: the answer probes ``plan`` builds, ``(row, context, answer)``."""
    STEP_SCORES = "acpo/step_scores"
    """``batch.notes`` key: c_k of each probed row's steps (row -> K values), set by ``prepare``."""

    def __init__(
        self,
        step_delimiter: str | None = "\n\n",
        dynamic_cuts: int = 2,
        max_steps: int | None = 8,
        attribution: Literal["answer_logprob", "none"] = "answer_logprob",
        answer_cue: str = "\nFinal answer: ",
        attribution_coef: float = 0.5,
        entropy_coef: float = 0.01,
        target_entropy: float = 1.0,
        crucial_z: float = 1.0,
        stage1_band: tuple[float, float] = (0.2, 0.8),
        stage2_band: tuple[float, float] = (0.0, 0.5),
        curriculum_switch_step: int | None = None,
        confidence_weighting: bool = True,
        correct_threshold: float = 1.0,
        normalize_std: bool = True,
        eps: float = 1e-6,
    ) -> None:
        if attribution not in ("answer_logprob", "none"):
            raise ValueError(f"estimator.attribution must be answer_logprob or none, got {attribution!r}")
        if dynamic_cuts < 0 or (max_steps is not None and max_steps < 1):
            raise ValueError(f"estimator.dynamic_cuts must be >= 0 and max_steps >= 1, got {dynamic_cuts}, {max_steps}")
        for name, (lo, hi) in (("stage1_band", stage1_band), ("stage2_band", stage2_band)):
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"estimator.{name} must satisfy 0 <= low <= high <= 1, got {(lo, hi)}")
        if attribution_coef < 0 or entropy_coef < 0:
            raise ValueError("estimator.attribution_coef and estimator.entropy_coef must be >= 0")
        check_delimiter("step_delimiter", step_delimiter)
        self.step_delimiter, self.dynamic_cuts, self.max_steps = step_delimiter, dynamic_cuts, max_steps
        self.attribution, self.answer_cue, self.attribution_coef = attribution, answer_cue, attribution_coef
        self.entropy_coef, self.target_entropy, self.crucial_z = entropy_coef, target_entropy, crucial_z
        self.stage1_band, self.stage2_band = tuple(stage1_band), tuple(stage2_band)
        self.curriculum_switch_step, self.confidence_weighting = curriculum_switch_step, confidence_weighting
        self.correct_threshold, self.normalize_std, self.eps = correct_threshold, normalize_std, eps

    # -- plan: segmentation ------------------------------------------------------------------
    def boundaries(self, tokenizer, token_ids: list[int], logprobs: list[float]) -> tuple[int, ...]:
        """Step ends: after delimiters, and before the ``dynamic_cuts`` most surprising tokens."""
        cuts = set(segment(tokenizer, token_ids, self.step_delimiter)) if self.step_delimiter else set()
        cuts |= set(sorted(range(1, len(token_ids)), key=lambda t: logprobs[t])[: self.dynamic_cuts])
        return thin(tuple(sorted(cuts)), None if self.max_steps is None else self.max_steps - 1)

    def plan(self, batch, sampler, task) -> None:
        for t in batch.trajectories:
            t.step_boundaries = self.boundaries(sampler.tokenizer, t.response_ids, t.logprobs)
        batch.stats[f"{self.name}/steps_mean"] = sum(len(t.step_boundaries) + 1 for t in batch.trajectories) / max(len(batch), 1)
        if self.attribution == "answer_logprob":  # ``prepare`` scores them
            batch.notes[self.PROBES] = self.probes(batch, sampler.tokenizer)

    def probes(self, batch: RolloutBatch, tokenizer) -> list[tuple[int, list[int], list[int]]]:
        """``(row, context, answer)`` for every trained row and every step end (0 included): the
        context is the prompt, the response up to that end and ``answer_cue``."""
        cue = tokenizer.encode(self.answer_cue, add_special_tokens=False)
        out = []
        for i, t in enumerate(batch.trajectories):
            if not t.trained:
                continue
            answer = tokenizer.encode(batch.answers[t.group], add_special_tokens=False)
            out += [(i, t.prompt_ids + t.response_ids[:end] + cue, answer)
                    for end in (0, *t.step_boundaries, len(t.response_ids))]
        return out

    # -- attribution: extra forward passes of the current policy, through the scorer ------------
    def prepare(self, batch: RolloutBatch, scorer) -> None:
        if self.PROBES in batch.notes:
            batch.notes[self.STEP_SCORES] = self.attribute(batch.notes[self.PROBES], scorer)

    @staticmethod
    def attribute(probes: list[tuple[int, list[int], list[int]]], scorer) -> dict[int, list[float]]:
        """c_k = L_k - L_{k-1} for every probed row, L_k the answer's log-prob after step k."""
        levels: dict[int, list[float]] = {}
        totals = scorer.sequences([(context, answer) for _, context, answer in probes])
        for (i, _, _), total in zip(probes, totals):
            levels.setdefault(i, []).append(total)
        return {i: [b - a for a, b in zip(v, v[1:])] for i, v in levels.items()}

    # -- assign ------------------------------------------------------------------------------
    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights, rows = self.trained_mask(batch), self.trained_rows(batch)
        stage2 = self.curriculum_switch_step is not None and batch.policy_version >= self.curriculum_switch_step
        rewards = batch.rewards
        if stage2 and self.confidence_weighting:
            lengths = batch.response_mask.sum(-1).clamp(min=1)
            rewards = rewards * torch.exp((batch.engine_logprobs * batch.response_mask).sum(-1) / lengths)
        seq_adv = torch.zeros_like(rewards)
        seq_adv[rows] = group_normalise(rewards[rows], batch.group_ids[rows], divide_by_std=self.normalize_std, eps=self.eps)
        correct = (batch.rewards >= self.correct_threshold).float()
        pass_rate = torch.zeros_like(rewards)
        for g in batch.group_ids[rows].unique():
            members = rows & (batch.group_ids == g)
            pass_rate[members] = correct[members].mean()
        surprisal = -batch.engine_logprobs
        entropy = float((surprisal * weights).sum() / weights.sum().clamp(min=1))
        low, high = self.stage2_band if stage2 else self.stage1_band
        in_band = (pass_rate >= low - 1e-9) & (pass_rate <= high + 1e-9)
        weights = weights * in_band.unsqueeze(-1)
        regulate = not stage2 and self.entropy_coef > 0 and entropy < self.target_entropy
        adv = broadcast_to_tokens(seq_adv, weights)
        for i in torch.nonzero(rows & in_band).squeeze(-1).tolist():
            t, span = batch.trajectories[i], batch.response_slice(i)
            steps = step_of_tokens(len(t.response_ids), t.step_boundaries).to(adv.device)
            n_steps, scores = len(t.step_boundaries) + 1, batch.notes.get(self.STEP_SCORES, {}).get(i)
            if scores is not None and len(scores) != n_steps:
                raise ValueError(f"{self.STEP_SCORES} of row {i} has {len(scores)} values for {n_steps} steps")
            z = zscore(torch.tensor(scores, device=adv.device)) if scores else torch.zeros(n_steps, device=adv.device)
            sign = float(torch.sign(seq_adv[i]))
            adv[i, span] = adv[i, span] * attribution_factors(z, sign, self.attribution_coef)[steps]
            if regulate:
                crucial = (z.abs() >= self.crucial_z)[steps] if scores else torch.ones_like(steps, dtype=torch.bool)
                adv[i, span] += self.entropy_coef * (surprisal[i, span] - entropy) * crucial * weights[i, span]
        batch.stats.update({f"{self.name}/stage": 2.0 if stage2 else 1.0, f"{self.name}/entropy": entropy,
                            f"{self.name}/entropy_regulated": float(regulate),
                            f"{self.name}/in_band_fraction": float(in_band[rows].float().mean()) if rows.any() else 0.0})
        return adv, weights
