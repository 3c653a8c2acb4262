"""The optimizer and learning-rate schedule both training stages (RL and SFT) configure."""

from __future__ import annotations

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
