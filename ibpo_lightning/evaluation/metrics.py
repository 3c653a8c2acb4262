"""mean@k and the unbiased pass@k estimator as ``torchmetrics`` metrics.

Both are updated with a ``[problems, n]`` tensor of per-sample correctness (1 right, 0 wrong)
for ``n`` samples of each problem, and average over problems (summed states, so they reduce
correctly across processes).

- ``mean@n``: the mean over problems of ``c / n``, the fraction of right samples (``c`` of ``n``).
- ``pass@k`` (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the chance
  that at least one of ``k`` samples drawn without replacement from the ``n`` is right,
  ``1 - C(n - c, k) / C(n, k)``, computed as the product ``prod_{j<k} (n - c - j) / (n - j)``
  (no factorials, no overflow). pass@1 equals mean@n by definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` right samples out of ``n``."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return float(pass_at_k_tensor(torch.tensor([c]), n, k)[0])


def pass_at_k_tensor(correct_counts: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """pass@k of each problem given its number of right samples ``[P]`` out of ``n``."""
    c = correct_counts.to(torch.float64).unsqueeze(-1)
    j = torch.arange(k, dtype=torch.float64, device=c.device)
    # C(n-c, k) / C(n, k) = prod_j (n-c-j) / (n-j); a factor <= 0 means fewer than k wrong samples
    miss = ((n - c - j).clamp(min=0) / (n - j)).prod(-1)
    return 1.0 - miss


def _check(correct: torch.Tensor, need: int = 1) -> torch.Tensor:
    if correct.dim() != 2:
        raise ValueError(f"expected correctness of shape [problems, samples], got {tuple(correct.shape)}")
    if correct.shape[1] < need:
        raise ValueError(f"pass@{need} needs at least {need} samples per problem, got {correct.shape[1]}")
    return correct.float().clamp(0, 1)


class MeanAtK(Metric):
    """mean@n: average over problems of the fraction of right samples."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:
        correct = _check(correct)
        self.total += correct.mean(-1).to(torch.float64).sum()
        self.count += correct.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class PassAtK(Metric):
    """Unbiased pass@k averaged over problems (each problem needs at least ``k`` samples).

    Args:
        k: Samples drawn per problem in the estimate.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"pass@k needs k >= 1, got {k}")
        self.k = k
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor) -> None:
        correct = _check(correct, self.k)
        counts = correct.ge(0.5).sum(-1)
        self.total += pass_at_k_tensor(counts, correct.shape[1], self.k).sum()
        self.count += correct.shape[0]

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class BenchmarkMetrics(torch.nn.Module):
    """mean@n and pass@k for each requested k, for one benchmark with ``n`` samples per problem.

    Args:
        samples: Samples per problem (``n``).
        pass_k: The k of each pass@k; each between 1 and ``samples``.
        greedy: also keep ``greedy`` (the accuracy of one greedy answer per problem).
    """

    def __init__(self, samples: int, pass_k: Sequence[int], greedy: bool = False) -> None:
        super().__init__()
        bad = [k for k in pass_k if not 1 <= k <= samples]
        if bad:
            raise ValueError(f"pass@k needs 1 <= k <= samples per problem ({samples}), got k={bad}")
        self.samples = samples
        self.mean = MeanAtK()
        self.passes = torch.nn.ModuleDict({str(k): PassAtK(k) for k in sorted(set(pass_k))})
        self.greedy = MeanAtK() if greedy else None

    def update(self, correct: torch.Tensor, greedy: torch.Tensor | None = None) -> None:
        """``correct``: ``[problems, samples]``; ``greedy``: ``[problems, 1]`` when kept."""
        if (greedy is None) != (self.greedy is None):
            raise ValueError("BenchmarkMetrics.update: pass greedy answers exactly when built with greedy=True")
        self.mean.update(correct)
        for metric in self.passes.values():
            metric.update(correct)
        if greedy is not None:
            self.greedy.update(greedy)

    @property
    def problems(self) -> int:
        """Problems seen since the last reset (summed over processes once computed)."""
        return int(self.mean.count)

    def compute(self) -> dict[str, float]:
        """``{"mean@n": ..., "pass@k": ...}`` over the problems seen since the last reset."""
        out = {f"mean@{self.samples}": float(self.mean.compute())}
        out.update({f"pass@{k}": float(m.compute()) for k, m in self.passes.items()})
        if self.greedy is not None:
            out["greedy"] = float(self.greedy.compute())
        return out

    def reset(self) -> None:
        self.mean.reset()
        if self.greedy is not None:
            self.greedy.reset()
        for metric in self.passes.values():
            metric.reset()
