"""TEMPO: tree-estimated mean prefix values (Tran, Yao, Yu; arXiv 2509.18314), token credit from the
prefix tree of a group's own samples, with no extra rollout.

The G answers of a prompt share prefixes: as token sequences they form a tree whose root is the
prompt and whose leaves are the answers. The value of a prefix s is the mean over the answers
that pass through it,

    V(s) = mean_{i : s is a prefix of answer i} A_i,      A_i = (R_i - mean_g R) / (std_g R + eps)

(GRPO's normalised reward), and at a branching token, where the group's answers part ways, the
temporal-difference step of the tree is added to GRPO's advantage:

    A_i,t = A_i + td_coef * (V(s_i,<=t) - V(s_i,<t))     if the node s_i,<t has two or more children
    A_i,t = A_i                                          elsewhere (there the difference is 0 anyway)

so the token at which a wrong answer left the prefixes that were still going right carries the
larger share of its blame, and the token at which a right answer left the failing ones the larger
share of its credit. Along one answer the steps add up to A_i - V(root) = A_i.

Reconstructed from the paper's abstract and summaries (its method section and code were not
available here): V from the group-normalised rewards (a raw-reward V would only rescale the
steps), a branching token as one whose parent node has several children, and ``td_coef`` (1, the
unweighted sum of the two terms). An episode's tree is built over all its tokens, tool results
included (they follow from the model's calls), and only the model's tokens are trained on.
"""

from __future__ import annotations

import torch

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.functional import group_normalise
from ibpo_lightning.types import RolloutBatch


def prefix_steps(answers: list[list[int]], values: list[float]) -> list[list[float]]:
    """For each answer, the tree's step V(s_<=t) - V(s_<t) at each of its tokens where the group's
    answers branch (0 elsewhere), with V the mean of ``values`` over the answers through a prefix."""
    children: list[dict[int, int]] = [{}]  # node -> {token: child node}; node 0 is the root
    total, count = [0.0], [0]
    paths = []
    for ids, v in zip(answers, values):
        node, path = 0, [0]
        total[0] += v
        count[0] += 1
        for tok in ids:
            if tok not in children[node]:
                children[node][tok] = len(children)
                children.append({})
                total.append(0.0)
                count.append(0)
            node = children[node][tok]
            total[node] += v
            count[node] += 1
            path.append(node)
        paths.append(path)
    value = [t / c for t, c in zip(total, count)]
    return [[value[child] - value[parent] if len(children[parent]) > 1 else 0.0
             for parent, child in zip(path, path[1:])] for path in paths]


class TEMPO(Estimator):
    """GRPO's advantage plus the prefix tree's temporal-difference step at branching tokens.

    Args:
        td_coef: weight of the tree's step at branching tokens (0: GRPO).
        normalize_std: divide by the group's reward std (GRPO).
        eps: added to the std.
    """

    name = "tempo"

    def __init__(self, td_coef: float = 1.0, normalize_std: bool = True, eps: float = 1e-6) -> None:
        self.td_coef, self.normalize_std, self.eps = td_coef, normalize_std, eps

    def assign(self, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.trained_mask(batch)
        seq = self.per_trained_row(
            batch, lambda r, g: group_normalise(r, g, divide_by_std=self.normalize_std, eps=self.eps))
        adv = seq.unsqueeze(-1) * weights.gt(0)
        trajs, stepped, tokens = batch.trajectories, 0, 0
        for members in batch.groups_of(batch.rows(lambda t: t.trained)):
            steps = prefix_steps([list(trajs[i].response_ids) for i in members], [float(seq[i]) for i in members])
            for i, step in zip(members, steps):
                span = batch.response_slice(i)
                trained = weights[i, span].gt(0)
                extra = torch.tensor(step, dtype=adv.dtype, device=adv.device)
                adv[i, span] += self.td_coef * extra * trained
                stepped += int(((extra != 0) & trained).sum())
                tokens += int(trained.sum())
        batch.stats[f"{self.name}/step_token_fraction"] = stepped / tokens if tokens else 0.0  # tokens the tree moved
        return adv, weights
