"""Monte-Carlo step values: VinePPO (arXiv 2410.01679) and SPO-chain (arXiv 2505.23564).

Each trained sample is cut at step boundaries b_1 < ... < b_{n-1}. From every boundary,
``n_probes`` (K) continuations of ``prompt + response[:b_k]`` are sampled: rows of kind ``PROBE``
with ``trained=False``, ``parent`` and ``prefix_len = b_k``, used for values only. Then

    V(s_k) = mean reward of the probes from b_k       V(s_n) = R_i (the terminal value)
    V(s_0) = mean reward of K probes from the prompt, shared by the group (``initial_value:
             probes``, VinePPO) or the group's mean reward (``group_mean``, SPO)
    A_t    = V(s_k) - V(s_{k-1}) on every token of step k            (gamma = 1)

In a multi-turn episode the steps are its model turns: probes replay the environment to a turn and
play the episode on (``Sampler.continue_rows``); environment tokens carry no loss.

SPO's switches: fixed-size segments (``segment_tokens``) instead of delimiter steps, and the
probability mask M_t = 1[pi_old(y_t) < ``prob_threshold``] (only low-probability tokens get
loss weight; with ``loss.aggregation: seq_mean_token_mean`` the loss of a sample is divided by
sum_t M_t, as in the paper). Compute: K probes per boundary state; samples of one group whose
responses agree up to a boundary are in the same state there and share its K probes
(``share_probes``; off, every sample probes its own boundaries as separate estimates).
``max_steps`` keeps at most that many evenly spaced boundaries per sample (merged steps get the
telescoped value difference) and ``max_probes`` caps the probed states of one RL step (times K)
by lowering that per-sample limit.

Reconstructed (docs/estimators.md): VinePPO's V(s_0) from probes of the prompt and the caps;
SPO's K, its segment length (600 tokens is the paper's SPO-tree length) and MC temperature
(0.7, from the SRPO authors' re-implementation). Not built: SPO-tree and SPO's cutpoint-based
segmentation.
"""

from __future__ import annotations

from typing import Literal

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import value_differences
from ibpo_lightning.estimators.segments import check_delimiter, continuation, steps, thin
from ibpo_lightning.types import GenerationKind, Kind, RolloutBatch, Trajectory


class VinePPO(Estimator):
    """Step advantages from Monte-Carlo values at step boundaries.

    Args:
        n_probes: K, continuations per boundary (VinePPO: 9).
        delimiter: text that ends a step (VinePPO: a newline).
        segment_tokens: if set, cut every this many tokens instead of at ``delimiter`` (SPO).
        initial_value: V(s_0) from K ``probes`` of the prompt, or the ``group_mean`` reward.
        prob_threshold: if set, only tokens sampled with probability below it get loss weight (SPO: 0.9).
        max_steps: at most this many boundaries per sample, evenly spaced (None = all).
        max_probes: cap on boundary probes per RL step (None = no cap); prompt probes not included.
        probe_temperature: sampling temperature of the probes (None = the rollout's).
        share_probes: samples of a group with equal prefixes share the probes of that state.
    """

    name = "vineppo"

    def __init__(self, n_probes: int = 9, delimiter: str = "\n", segment_tokens: int | None = None,
                 initial_value: Literal["probes", "group_mean"] = "probes", prob_threshold: float | None = None,
                 max_steps: int | None = None, max_probes: int | None = None,
                 probe_temperature: float | None = None, share_probes: bool = True) -> None:
        if n_probes < 1:
            raise ValueError(f"estimator.n_probes must be >= 1, got {n_probes}")
        if segment_tokens is None and not delimiter:
            raise ValueError("estimator.delimiter must be non-empty when estimator.segment_tokens is null")
        if segment_tokens is not None and segment_tokens < 1:
            raise ValueError(f"estimator.segment_tokens must be >= 1 or null, got {segment_tokens}")
        if initial_value not in ("probes", "group_mean"):
            raise ValueError(f"estimator.initial_value must be probes or group_mean, got {initial_value!r}")
        for field, value in (("max_steps", max_steps), ("max_probes", max_probes)):
            if value is not None and value < 0:
                raise ValueError(f"estimator.{field} must be >= 0 or null, got {value}")
        if segment_tokens is None:
            check_delimiter("delimiter", delimiter)
        self.n_probes, self.delimiter, self.segment_tokens = n_probes, delimiter, segment_tokens
        self.initial_value, self.prob_threshold = initial_value, prob_threshold
        self.max_steps, self.max_probes, self.probe_temperature = max_steps, max_probes, probe_temperature
        self.share_probes = share_probes
        self.group_relative = initial_value == "group_mean"

    def state(self, t: Trajectory, row: int, cut: int) -> tuple:
        """The state after ``cut`` response tokens of ``t`` (row ``row``) whose value probes estimate."""
        return (t.group, tuple(t.response_ids[:cut])) if self.share_probes else (row, cut)

    def states(self, trajs: list[Trajectory], cuts: dict[int, tuple[int, ...]]) -> dict[tuple, tuple[int, int]]:
        """Each distinct probed state, with the first (row, cut) that reaches it."""
        first: dict[tuple, tuple[int, int]] = {}
        for i, bs in cuts.items():
            for b in bs:
                first.setdefault(self.state(trajs[i], i, b), (i, b))
        return first

    def boundaries(self, batch: RolloutBatch, rows: list[int], tokenizer) -> dict[int, tuple[int, ...]]:
        """Probed boundaries of each row, within ``max_steps`` and ``max_probes``."""
        trajs = batch.trajectories
        cuts = {i: thin(steps(tokenizer, trajs[i], self.delimiter, self.segment_tokens), self.max_steps) for i in rows}
        if self.max_probes is not None:
            budget, keep = self.max_probes // self.n_probes, max((len(c) for c in cuts.values()), default=0)
            while keep > 0 and len(self.states(trajs, {i: thin(c, keep) for i, c in cuts.items()})) > budget:
                keep -= 1
            cuts = {i: thin(c, keep) for i, c in cuts.items()}
        return cuts

    def plan(self, batch, sampler, task) -> None:
        trajs, tok = batch.trajectories, sampler.tokenizer
        rows = batch.rows(lambda t: t.kind == Kind.FRESH and t.trained)
        cuts = self.boundaries(batch, rows, tok)
        items = [(i, b, i) for i, b in self.states(trajs, cuts).values()]  # (source row, prefix length, parent)
        cut_count, probed = sum(len(c) for c in cuts.values()), len(items)
        if self.initial_value == "probes":
            items += [(g[0], 0, -1) for g in batch.groups_of(rows)]
        for i in rows:
            trajs[i].step_boundaries = cuts[i]
        samples = sampler.continue_rows(batch, [i for i, _, _ in items], [b for _, b, _ in items], self.n_probes,
                                        kind=GenerationKind.PROBE, temperature=self.probe_temperature)
        probes = []
        for (i, b, parent), group in zip(items, samples):
            probes += [continuation(tok, trajs[i], b, s, kind=Kind.PROBE, parent=parent, trained=False)
                       for s in group]
        batch.add_scored(probes, task)
        batch.stats[f"{self.name}/probes"] = float(len(probes))
        batch.stats[f"{self.name}/steps"] = sum(len(c) + 1 for c in cuts.values()) / max(len(cuts), 1)
        batch.stats[f"{self.name}/shared_boundaries"] = (cut_count - probed) / max(cut_count, 1)

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights, trajs = self.trained_mask(batch), batch.trajectories
        start: dict[int, list[float]] = {}
        after: dict[tuple, list[float]] = {}
        for t in trajs:
            if t.kind == Kind.PROBE and t.parent < 0:
                start.setdefault(t.group, []).append(t.reward)
            elif t.kind == Kind.PROBE:
                after.setdefault(self.state(t, t.parent, t.prefix_len), []).append(t.reward)
        rows = self.trained_rows(batch).nonzero().flatten().tolist()
        group_rewards: dict[int, list[float]] = {}
        for i in rows:
            group_rewards.setdefault(trajs[i].group, []).append(trajs[i].reward)
        adv = torch.zeros_like(weights)
        for i in rows:
            t = trajs[i]
            if self.initial_value == "probes" and t.group not in start:
                raise ValueError(f"group {t.group} has no probes of its prompt: was {self.name}.plan run?")
            v0 = _mean(start[t.group] if self.initial_value == "probes" else group_rewards[t.group])
            valued = [(b, after[key]) for b in t.step_boundaries if (key := self.state(t, i, b)) in after]
            bounds = tuple(b for b, _ in valued)
            values = [v0, *(_mean(rewards) for _, rewards in valued), t.reward]
            adv[i, batch.response_slice(i)] = value_differences(values, bounds, len(t.response_ids)).to(adv)
        if self.prob_threshold is not None:
            weights = weights * (batch.engine_logprobs.exp() < self.prob_threshold)
        return adv * weights.gt(0), weights


class SPO(VinePPO):
    """SPO-chain: fixed-size segments, V(s_0) = group mean, probability mask (VinePPO's switches).

    Args:
        n_probes: K, continuations per segment boundary.
        delimiter: text that ends a segment when ``segment_tokens`` is null.
        segment_tokens: segment length in tokens (the paper's SPO-tree uses 600).
        initial_value: V(s_0): the ``group_mean`` reward (SPO) or K ``probes`` of the prompt.
        prob_threshold: only tokens sampled with probability below it get loss weight (rho = 0.9).
        max_steps: at most this many boundaries per sample, evenly spaced (None = all).
        max_probes: cap on boundary probes per RL step (None = no cap).
        probe_temperature: sampling temperature of the probes (0.7).
        share_probes: samples of a group with equal prefixes share the probes of that state.
    """

    name = "spo"

    def __init__(self, n_probes: int = 4, delimiter: str = "\n", segment_tokens: int | None = 600,
                 initial_value: Literal["probes", "group_mean"] = "group_mean", prob_threshold: float | None = 0.9,
                 max_steps: int | None = None, max_probes: int | None = None,
                 probe_temperature: float | None = 0.7, share_probes: bool = True) -> None:
        super().__init__(n_probes, delimiter, segment_tokens, initial_value, prob_threshold, max_steps, max_probes,
                         probe_temperature, share_probes)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)
