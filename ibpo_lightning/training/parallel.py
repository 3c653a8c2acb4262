"""The data-parallel rules every rank must follow: sums over ranks, and equal pass counts.

Under FSDP2 each forward pass all-gathers parameters, so every rank must run the same number of
passes in the same order whatever its rows; under DDP each backward all-reduces gradients. A
rank with fewer micro-batches than another therefore runs empty passes (``None`` chunks) to
match it. On one process both rules are no-ops.
"""

from __future__ import annotations

import torch


class DataParallel:
    """Reductions over the data-parallel ranks of ``world`` processes (1: a plain process).

    Args:
        world: number of data-parallel ranks.
        model: a module whose parameters tell the device collectives run on.
    """

    def __init__(self, world: int = 1, model: torch.nn.Module | None = None) -> None:
        self.world, self.model = world, model

    def reduce(self, value: float, op: str = "sum") -> float:
        """``value`` summed (``op="sum"``) or maxed (``"max"``) over the ranks."""
        if self.world == 1:
            return float(value)
        device = next(self.model.parameters()).device if self.model is not None else "cpu"
        total = torch.tensor(float(value), dtype=torch.float64, device=device)
        dist = torch.distributed
        dist.all_reduce(total, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(total)

    def same_keys(self, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics`` with every key any rank has (0 where this rank has none): a rank-synced
        log runs one collective per key, so the ranks must log the same keys (one rank may
        generate a kind of tokens, or an estimator statistic, that another does not)."""
        if self.world == 1:
            return metrics
        keys: list = [None] * self.world
        torch.distributed.all_gather_object(keys, sorted(metrics))
        return {**{k: 0.0 for ks in keys for k in ks}, **metrics}

    def pad(self, chunks: list) -> list:
        """``chunks`` followed by ``None`` up to the largest count on any rank."""
        return chunks + [None] * (int(self.reduce(len(chunks), "max")) - len(chunks))
