"""Resets (arXiv 2605.25507, code ``Ankur-Samanta/SRPO``): the shared base of SRPO and RRPO, and RRPO.

In each group whose fresh samples include a wrong one, the first wrong sample is the *parent*:

1. split the parent into thoughts at ``delimiter`` (the paper's thoughts end with ``</thought>``);
   in a multi-turn episode the thoughts are its model turns, and a reset replays the environment
   to that turn and plays the episode on (``Sampler.continue_rows``);
2. pick the reset thought N in 1..n: RRPO draws N uniformly; SRPO (``srpo.py``) asks the
   policy to name the first wrong thought (the localisation call);
3. sample ``n_resets`` suffixes from the shared prefix (thoughts 1..N-1): rows of kind
   ``RESET_SUFFIX`` with ``parent`` and ``prefix_len`` set, so the prefix is outside the response
   mask and gets exactly zero gradient;
4. A_i = (R_i - mean) / std with the population std, separately over the fresh rows (G1) and the
   reset rows (G2) of a group; 0 where std < ``min_std``. Groups with no wrong sample are plain
   GRPO over their fresh rows. The parent itself is not trained on (``train_parent``).

The paper's loss is REINFORCE on the sequence mean of token-mean log-probs (``model.loss.ratio:
none``, ``aggregation: seq_mean_token_mean``); its clipped ablation is ``ratio: token`` with
``dual_clip: 3`` (see ``configs/estimators/srpo.yaml``).

Reconstructed or changed (docs/estimators.md): fresh samples are the rollout's ``group_size``
drawn once (the paper redraws, up to 12, until it has 4 plus a failure), so ``group_size: 5``
gives its 4 G1 rows + parent; thoughts are cut after generation (no stop strings, no
``max_thoughts`` or per-thought limits).
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import broadcast_to_tokens, zscore_within
from ibpo_lightning.estimators.segments import check_delimiter, continuation, steps
from ibpo_lightning.types import GenerationKind, Kind, RolloutBatch


class ResetEstimator(Estimator):
    """Resets from a wrong sample's prefix, fresh and reset rows normalised separately.

    Args:
        n_resets: suffix continuations sampled from the shared prefix (G2 size; paper: 4).
        delimiter: text that ends a thought (``</thought>`` in the paper, ``"\\n\\n"`` for blank lines).
        train_parent: also train on the wrong parent in G1 (the paper does not).
        reset_temperature: sampling temperature of the suffixes (None = the rollout's).
        correct_threshold: a reward at or above this counts as correct.
        min_std: sub-groups whose reward std is below this get advantage 0.
        seed: seed of the random choices (RRPO's reset point, SRPO's fallback).
    """

    def __init__(self, n_resets: int = 4, delimiter: str = "</thought>", train_parent: bool = False,
                 reset_temperature: float | None = None, correct_threshold: float = 1.0,
                 min_std: float = 1e-8, seed: int = 0) -> None:
        if n_resets < 1:
            raise ValueError(f"estimator.n_resets must be >= 1, got {n_resets}")
        if not delimiter:
            raise ValueError("estimator.delimiter must be a non-empty string")
        check_delimiter("delimiter", delimiter)
        self.n_resets, self.delimiter, self.train_parent = n_resets, delimiter, train_parent
        self.reset_temperature, self.correct_threshold, self.min_std = reset_temperature, correct_threshold, min_std
        self.seed = seed  # with each step's seed (``Estimator.generator``)

    @abstractmethod
    def reset_points(self, batch: RolloutBatch, parents: list[int], sampler, task) -> list[int]:
        """The reset thought N (1-based, within 1..thoughts) of each parent row."""

    def parents(self, batch: RolloutBatch) -> list[int]:
        """The first wrong fresh row of each group that has one."""
        trajs, out = batch.trajectories, []
        for rows in batch.groups_of(batch.rows(lambda t: t.kind == Kind.FRESH)):
            wrong = [i for i in rows if trajs[i].reward < self.correct_threshold]
            out += wrong[:1]
        return out

    def plan(self, batch, sampler, task) -> None:
        trajs, tok = batch.trajectories, sampler.tokenizer
        parents = self.parents(batch)
        for i in parents:
            trajs[i].step_boundaries = steps(tok, trajs[i], self.delimiter)
            trajs[i].trained = self.train_parent
        points = self.reset_points(batch, parents, sampler, task) if parents else []
        cuts = [(0, *trajs[i].step_boundaries)[n - 1] for i, n in zip(parents, points)]
        samples = sampler.continue_rows(batch, parents, cuts, self.n_resets, kind=GenerationKind.RESET_SUFFIX,
                                        temperature=self.reset_temperature)
        new = []
        for i, cut, group in zip(parents, cuts, samples):
            new += [continuation(tok, trajs[i], cut, s, kind=Kind.RESET_SUFFIX, parent=i) for s in group]
        rewards = batch.add_scored(new, task)
        batch.stats[f"{self.name}/resets"] = float(len(parents))
        fractions = [c / max(len(trajs[i].response_ids), 1) for i, c in zip(parents, cuts)]
        batch.stats[f"{self.name}/prefix_fraction"] = sum(fractions) / len(fractions) if fractions else 0.0
        batch.stats[f"{self.name}/suffix_accuracy"] = (
            sum(r >= self.correct_threshold for r in rewards) / len(rewards) if rewards else 0.0)

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights, rows = self.trained_mask(batch), self.trained_rows(batch)
        reset = torch.tensor([t.kind == Kind.RESET_SUFFIX for t in batch.trajectories], device=rows.device)
        sub_groups = batch.group_ids * 2 + reset.long()
        adv = torch.zeros_like(batch.rewards)
        adv[rows] = zscore_within(batch.rewards[rows], sub_groups[rows], min_std=self.min_std)
        return broadcast_to_tokens(adv, weights), weights


class RRPO(ResetEstimator):
    """Random resets: the reset thought is drawn uniformly from 1..thoughts (seeded), no extra call."""

    name = "rrpo"

    def reset_points(self, batch, parents, sampler, task) -> list[int]:
        rng = self.generator(batch)
        return [rng.randint(1, len(batch.trajectories[i].step_boundaries) + 1) for i in parents]
