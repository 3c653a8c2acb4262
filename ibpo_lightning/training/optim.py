"""The optimizer and learning-rate schedule both training stages (RL and SFT) configure, and the
one clip-and-step rule both apply."""

from __future__ import annotations

import math

import torch


def with_warmup(module: torch.nn.Module, optimizer, warmup_steps: int):
    """Lightning's ``configure_optimizers`` value: ``optimizer`` (a callable taking parameters;
    None: AdamW at lr 1e-5) over ``module``'s trainable parameters, with a linear warm-up over
    ``warmup_steps`` optimizer steps, then a constant rate."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = optimizer(params) if optimizer is not None else torch.optim.AdamW(params, lr=1e-5)
    warmup = max(warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return [opt], [{"scheduler": sched, "interval": "step"}]


def clip_and_step(model: torch.nn.Module, opt, max_norm: float | None, parallel,
                  bad: str | None = None) -> tuple[float | None, str | None]:
    """Clip ``model``'s gradient at ``max_norm`` (None: no clipping) and step ``opt``: ``(norm,
    None)``. When the loss (``bad`` names it) or the gradient is not finite on any rank of
    ``parallel``, the gradients are zeroed and no rank steps: ``(None, what was not finite)``."""
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm or math.inf)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
    if bad is None and not torch.isfinite(norm):
        bad = "gradient"
    if parallel.reduce(bad is not None, "max"):  # one rank's bad update is every rank's
        opt.zero_grad(set_to_none=True)
        return None, bad or "loss or gradient on another rank"
    opt.step()
    return float(norm), None
