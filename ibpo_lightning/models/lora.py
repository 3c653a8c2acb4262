"""LoRA adapters through ``peft``, and the merged weights a rollout engine needs.

The trainer updates only the adapters; the engine (vLLM) knows nothing of them, so each weight
sync streams the base model's parameters under their original names with every adapted weight
replaced by ``W + scale * B @ A``. Nothing is merged in place: the trained weights never drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass
class LoraConfig:
    """Train LoRA adapters instead of every weight (``model.lora``); needs ``peft`` (the ``lora`` extra).

    Args:
        rank: adapter rank r.
        alpha: scale numerator (the update is ``alpha / rank * B @ A``).
        targets: module names to adapt, or ``all-linear`` (every linear layer but the head).
    """

    rank: int = 16
    alpha: float = 16.0
    targets: list[str] | str = "all-linear"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"model.lora.rank must be >= 1, got {self.rank} (no LoRA: leave model.lora unset)")


def add_lora(model: nn.Module, rank: int, alpha: float, targets: list[str] | str, dropout: float = 0.0) -> nn.Module:
    """Wrap ``model`` in a ``peft`` LoRA model (base weights frozen, adapters trainable)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ImportError("model.lora needs peft: pip install -e '.[lora]'") from err
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=dropout, bias="none",
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def base_model(model: nn.Module) -> nn.Module:
    """The model with its original structure (adapters, if any, injected and active)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def merged_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of the base model's parameters, adapters folded in; plain models pass through."""
    if base_model(model) is model:
        yield from model.named_parameters()
        return
    base = base_model(model)
    modules = dict(base.named_modules())
    for name, param in base.named_parameters():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            owner_name, leaf = name.split(".base_layer.", 1)
            owner = modules[owner_name]
            name = f"{owner_name}.{leaf}"
            if leaf == "weight" and not getattr(owner, "disable_adapters", False):
                with torch.no_grad():
                    param = param + sum(owner.get_delta_weight(a) for a in owner.active_adapters)
        yield name, param.detach()


def rollout_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """What a rollout engine loads: the base model's names, adapters merged, shards gathered
    one parameter at a time (a collective under FSDP2)."""
    from ibpo_lightning.models.sharding import full_tensors

    return full_tensors(merged_weights(model))
