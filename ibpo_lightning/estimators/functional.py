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
    kept = [False] * n
    i, j = n, m
    while i > 0 and j > 0:
        if source[i - 1] == target[j - 1] and dist[i][j] == dist[i - 1][j - 1]:
            kept[i - 1] = True
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j - 1] + 1:
            i, j = i - 1, j - 1
        elif dist[i][j] == dist[i - 1][j] + 1:
            i -= 1
        else:
            j -= 1
    return kept
