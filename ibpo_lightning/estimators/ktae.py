"""KTAE: key-token advantage estimation (Sun et al., arXiv 2505.16826), token credit from the group
itself, with no extra rollout.

Within each group, every token id o of the model's answers gets a 2x2 table over the group's G
samples: a (b) correct (wrong) samples that contain o at least once, c (d) correct (wrong) ones
that do not. From it:

    F(o)  = exp(-2 p), p the two-sided Fisher exact p-value of the table (F = 0 when p = 1)
    IG(o) = H(Y) - H(Y | o present), Y correctness, entropies in bits
    x(o)  = asin(sqrt(a / (a + c))) - asin(sqrt(b / (b + d)))          direction
            [+ tf_T / tf_F - tf_F / tf_T, a BM25-style frequency term]
    v(o)  = 2 top (sigmoid((alpha F + beta IG) x / (alpha + beta)) - 1/2)
    A_i,t = (R_i - mean_g R) / (std_g R + eps) + v(o_i,t)

so a token that appears mostly in correct answers raises the advantage wherever it occurs in the
group, in a wrong answer too, and one that appears mostly in wrong answers lowers it. A group
whose answers are all right or all wrong gets v = 0 (GRPO's advantage, 0).

Reconstructed from the paper's description and its public code (the paper's method section was not
available here): the exp(-2p) transform, the arcsine difference without the factor 2 of Cohen's h,
the frequency term (f_T, f_F: the token's share of all tokens of the correct, wrong answers;
tf = f (k1 + 1) / (f + k1 (1 - b + b L / L_avg)) with the sides' token totals L, k1 = 2, b = 0.5)
and alpha = beta = top = 1 are what that code computes (its run scripts pass beta = 2, which the
code does not read). Chosen here: ``correct_threshold`` (the code counts a reward > 0 as correct),
the tokens counted are the model's own (an episode's tool results are not), and the token that ends
an answer (the tokenizer's eos) gets v = 0 as the code does for its model's end token. The
sequence part is GRPO's; DAPO's loss settings and dynamic sampling are the run's switches, stacked
as the paper's KTAE-on-DAPO runs need them.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import group_normalise
from ibpo_lightning.types import RolloutBatch, Trajectory


def fisher_two_sided(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test of the table [[a, b], [c, d]]: the hypergeometric
    probability of every table with the same margins that is no more likely than this one."""
    row, col, n = a + b, a + c, a + b + c + d

    def log_p(k: int) -> float:
        return (math.lgamma(col + 1) - math.lgamma(k + 1) - math.lgamma(col - k + 1)
                + math.lgamma(n - col + 1) - math.lgamma(row - k + 1) - math.lgamma(n - col - row + k + 1)
                - math.lgamma(n + 1) + math.lgamma(row + 1) + math.lgamma(n - row + 1))

    here = log_p(a)
    tables = (log_p(k) for k in range(max(0, row + col - n), min(row, col) + 1))
    total = sum(math.exp(lp) for lp in tables if lp <= here + 1e-7)  # a relative tolerance for equal probabilities
    return min(1.0, total)


def _entropy(*counts: float) -> float:
    n = sum(counts)
    return -sum(k / n * math.log2(k / n) for k in counts if k > 0) if n > 0 else 0.0


def information_gain(a: int, b: int, c: int, d: int) -> float:
    """Bits of correctness a token's presence tells: H(Y) - H(Y | present)."""
    n = a + b + c + d
    return _entropy(a + c, b + d) - ((a + b) / n) * _entropy(a, b) - ((c + d) / n) * _entropy(c, d)


class KTAE(Estimator):
    """GRPO's advantage plus a key-token value per token id of the group.

    Args:
        alpha: weight of the Fisher score F.
        beta: weight of the information gain IG.
        top: the largest magnitude of a key-token value.
        frequency_term: add the BM25-style frequency term to the direction score.
        k1: the frequency term's saturation.
        b: the frequency term's length normalisation.
        normalize_std: divide the sequence advantage by the group's reward std (GRPO).
        correct_threshold: a reward at or above this counts as correct.
        eps: added to the std.
    """

    name = "ktae"
    SKIP = "ktae/skip_ids"
    """``batch.notes`` key: token ids whose value is 0 (the end token), set by ``plan``."""

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, top: float = 1.0, frequency_term: bool = True,
                 k1: float = 2.0, b: float = 0.5, normalize_std: bool = True, correct_threshold: float = 1.0,
                 eps: float = 1e-6) -> None:
        if alpha < 0 or beta < 0 or alpha + beta <= 0:
            raise ValueError(f"estimator.alpha and estimator.beta must be >= 0 with a positive sum, got {alpha}, {beta}")
        if top < 0:
            raise ValueError(f"estimator.top must be >= 0, got {top}")
        self.alpha, self.beta, self.top, self.frequency_term, self.k1, self.b = alpha, beta, top, frequency_term, k1, b
        self.normalize_std, self.correct_threshold, self.eps = normalize_std, correct_threshold, eps

    def plan(self, batch, sampler, task) -> None:
        eos = sampler.tokenizer.eos_token_id
        batch.notes[self.SKIP] = [] if eos is None else [int(eos)]

    def key_values(self, answers: list[list[int]], correct: list[bool], skip=()) -> dict[int, float]:
        """v(o) of every token id in one group's ``answers`` (model tokens), given which are correct."""
        n_right = sum(correct)
        n_wrong = len(correct) - n_right
        if n_right == 0 or n_wrong == 0:
            return {}
        present = {True: Counter(), False: Counter()}
        counts = {True: Counter(), False: Counter()}
        for ids, ok in zip(answers, correct):
            present[ok].update(set(ids))
            counts[ok].update(ids)
        length = {ok: max(sum(counts[ok].values()), 1) for ok in (True, False)}
        mean_length = (length[True] + length[False]) / 2
        values = {}
        for o in set(present[True]) | set(present[False]):
            if o in skip:
                continue
            a, b = present[True][o], present[False][o]
            c, d = n_right - a, n_wrong - b
            p = fisher_two_sided(a, b, c, d)
            fisher = 0.0 if p >= 1.0 else math.exp(-2.0 * p)
            x = math.asin(math.sqrt(a / n_right)) - math.asin(math.sqrt(b / n_wrong))
            if self.frequency_term:
                tf = {}
                for ok in (True, False):
                    f = counts[ok][o] / length[ok]
                    tf[ok] = f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * length[ok] / mean_length))
                x += tf[True] / (tf[False] + 1e-5) - tf[False] / (tf[True] + 1e-5)
            z = (self.alpha * fisher + self.beta * information_gain(a, b, c, d)) * x / (self.alpha + self.beta)
            values[o] = self.top * math.tanh(z / 2)  # = 2 top (sigmoid(z) - 1/2), without overflow
        return values

    @staticmethod
    def model_ids(t: Trajectory) -> list[int]:
        """The response tokens the model wrote (an episode's tool results left out)."""
        env = {k for start, end in t.env_spans for k in range(start, end)}
        return [tok for k, tok in enumerate(t.response_ids) if k not in env]

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        seq = self.per_trained_row(
            batch, lambda r, g: group_normalise(r, g, divide_by_std=self.normalize_std, eps=self.eps))
        adv = seq.unsqueeze(-1) * weights.gt(0)
        trajs, skip = batch.trajectories, set(batch.notes.get(self.SKIP, []))
        magnitudes = []
        for members in batch.groups_of(batch.rows(lambda t: t.trained)):
            values = self.key_values([self.model_ids(trajs[i]) for i in members],
                                     [trajs[i].reward >= self.correct_threshold for i in members], skip)
            if not values:
                continue
            magnitudes += [abs(v) for v in values.values()]
            for i in members:
                span = batch.response_slice(i)
                extra = torch.tensor([values.get(tok, 0.0) for tok in trajs[i].response_ids], dtype=adv.dtype,
                                     device=adv.device)
                adv[i, span] += extra * weights[i, span].gt(0)
        batch.stats[f"{self.name}/value_abs_mean"] = sum(magnitudes) / len(magnitudes) if magnitudes else 0.0
        return adv, weights
