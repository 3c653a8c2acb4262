"""Pure tensor math shared by estimators (no Lightning here, so tests hit it directly)."""

from __future__ import annotations

import torch


def group_mean_std(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and unbiased std of ``values`` [N] over rows of the same group id.

    A group of one row gets mean = its value and std = 1 (as verl does), so its advantage is 0.
    """
    mean = torch.zeros_like(values)
    std = torch.ones_like(values)
    for g in group_ids.unique():
        rows = group_ids == g
        v = values[rows]
        mean[rows] = v.mean()
        if v.numel() > 1:
            std[rows] = v.std(unbiased=True)
    return mean, std


def group_normalise(
    values: torch.Tensor, group_ids: torch.Tensor, *, divide_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantage (R - mean_g) / (std_g + eps), or R - mean_g without the std (Dr.GRPO)."""
    mean, std = group_mean_std(values, group_ids)
    centred = values - mean
    return centred / (std + eps) if divide_by_std else centred


def leave_one_out(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """RLOO advantage R_i - mean_{j != i} R_j within each group (0 for a group of one)."""
    out = torch.zeros_like(values)
    for g in group_ids.unique():
        rows = group_ids == g
        v = values[rows]
        k = v.numel()
        if k > 1:
            out[rows] = v - (v.sum() - v) / (k - 1)
    return out


def broadcast_to_tokens(per_row: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Spread a per-row value [N] over the masked tokens [N, L]."""
    return per_row.unsqueeze(-1) * token_mask


def levenshtein_kept(source: list[int], target: list[int]) -> list[bool]:
    """Which tokens of ``source`` an optimal Levenshtein alignment to ``target`` keeps unchanged.

    Unit costs for insert, delete and substitute; among optimal alignments, matches are
    preferred when tracing back, so a token is marked kept only if it is aligned to an equal one.
    """
    return levenshtein_matches(source, target)[0]


def levenshtein_matches(source: list[int], target: list[int]) -> tuple[list[bool], list[bool]]:
    """Both sides of the alignment of :func:`levenshtein_kept`: which tokens of ``source`` and
    which of ``target`` are matched to an equal token. The unmatched tokens of ``target`` are the
    ones an edit of ``source`` into ``target`` substituted or inserted."""
    n, m = len(source), len(target)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        dist[i][0] = i
    for j in range(m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        row, prev, s = dist[i], dist[i - 1], source[i - 1]
        for j in range(1, m + 1):
            sub = prev[j - 1] + (0 if s == target[j - 1] else 1)
            row[j] = min(sub, prev[j] + 1, row[j - 1] + 1)
    kept, matched = [False] * n, [False] * m
    i, j = n, m
    while i > 0 and j > 0:
        if source[i - 1] == target[j - 1] and dist[i][j] == dist[i - 1][j - 1]:
            kept[i - 1] = matched[j - 1] = True
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return kept, matched


def expand_to_steps(edited: list[bool], boundaries: tuple[int, ...]) -> list[bool]:
    """Mark every token of a step edited if any token in it is; ``boundaries`` are step ends."""
    out, start = list(edited), 0
    for end in list(boundaries) + [len(edited)]:
        if any(edited[start:end]):
            out[start:end] = [True] * (end - start)
        start = end
    return out


def zscore_within(values: torch.Tensor, ids: torch.Tensor, *, min_std: float = 1e-8) -> torch.Tensor:
    """(v - mean) / std over rows sharing an id, population std (ddof 0); 0 where std < ``min_std``.

    SRPO's sub-group normalisation: a uniform sub-group (or a sub-group of one) gets advantage 0.
    """
    out = torch.zeros_like(values)
    for g in ids.unique():
        rows = ids == g
        v = values[rows]
        std = v.std(unbiased=False) if v.numel() > 1 else v.new_zeros(())
        if std >= min_std:
            out[rows] = (v - v.mean()) / std
    return out


def value_differences(values: list[float], boundaries: tuple[int, ...], length: int) -> torch.Tensor:
    """Per-token advantage V(s_k) - V(s_{k-1}) on the tokens of step k (VinePPO, SPO).

    ``values`` holds V(s_0) (before the response), the value after each boundary, and the
    terminal value (the reward): ``len(boundaries) + 2`` numbers for a ``length``-token response.
    """
    if len(values) != len(boundaries) + 2:
        raise ValueError(f"need {len(boundaries) + 2} values for {len(boundaries)} boundaries, got {len(values)}")
    out = torch.zeros(length)
    for k, (start, end) in enumerate(zip((0, *boundaries), (*boundaries, length))):
        out[start:end] = values[k + 1] - values[k]
    return out


def overlong_penalty(lengths: torch.Tensor, max_length: int, buffer: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment of response lengths [N] (0 to -``factor``).

    0 up to ``max_length - buffer`` tokens, then falling linearly to -factor at ``max_length``,
    and -factor beyond it.
    """
    start = max_length - buffer
    ramp = (start - lengths.float()) / buffer
    return factor * torch.where(lengths <= start, torch.zeros_like(ramp), ramp.clamp(min=-1.0))


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(v - mean) / sqrt(var + eps) over the masked entries of the whole tensor, 0 elsewhere.

    Mean and variance are taken over tokens (so longer rows weigh more), the variance with
    Bessel's correction, as verl's ``masked_whiten``; ``shift_mean=False`` only rescales.
    """
    m = mask.float()
    n = m.sum().clamp(min=1.0)
    mean = (values * m).sum() / n
    var = ((values - mean).square() * m).sum() / n
    if n > 1:
        var = var * n / (n - 1)
    centred = values - mean if shift_mean else values
    return centred * torch.rsqrt(var + eps) * m


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{k >= t} gamma^(k - t) r_k along each row [N, L], over masked tokens only."""
    out = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[:, 0])
    r = token_rewards * mask
    for t in range(token_rewards.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running * mask[:, t].gt(0)
        out[:, t] = running
    return out * mask


def step_of_tokens(length: int, boundaries: tuple[int, ...]) -> torch.Tensor:
    """[length] index of the step each response token belongs to (boundaries are step ends)."""
    steps = torch.zeros(length, dtype=torch.long)
    for end in boundaries:
        steps[end:] += 1
    return steps


def zscore(values: torch.Tensor) -> torch.Tensor:
    """(v - mean) / std with the population std; all zeros for one value or equal values."""
    std = values.std(unbiased=False) if values.numel() > 1 else values.new_zeros(())
    return (values - values.mean()) / std if std > 1e-8 else torch.zeros_like(values)


def attribution_factors(z: torch.Tensor, sign: float, coef: float) -> torch.Tensor:
    """ACPO step credit max(0, 1 + coef * sign * z_k) for attribution z-scores ``z`` of the steps."""
    return (1.0 + coef * sign * z).clamp(min=0.0)
