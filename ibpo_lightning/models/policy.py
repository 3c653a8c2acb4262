"""Building the trained policy and, when something needs it, its frozen reference.

Scoring runs a model's decoder and output head separately (``losses.token_logprobs``), so each
model gets a ``token_logprobs`` method; under FSDP2 that method is registered as a forward, so
parameters are gathered around it like around ``forward``.
"""

from __future__ import annotations

import copy
import types

from ibpo_lightning.losses.logprobs import token_logprobs
from ibpo_lightning.models.loading import load_policy
from ibpo_lightning.models.lora import LoraConfig, add_lora
from ibpo_lightning.models.sharding import shard


def with_scoring(model):
    """``model`` with a ``token_logprobs`` method (see ``losses.logprobs.token_logprobs``)."""
    model.token_logprobs = types.MethodType(token_logprobs, model)
    return model


def build_models(name: str, *, with_reference: bool, lora: LoraConfig | None = None, gradient_checkpointing: bool = False,
                 mesh=None, param_dtype: str | None = None, offload_reference: bool = False):
    """``(policy, reference or None, tokenizer)``.

    The reference is a frozen copy of the initial weights, built only ``with_reference`` (KL in
    the loss or the reward): it doubles parameter memory. With a device ``mesh`` (Lightning's
    ``ModelParallelStrategy``) both are sharded with FSDP2 per decoder layer.
    """
    policy, tokenizer = load_policy(name)
    policy.train()
    if gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if with_reference else None
    if lora is not None:
        policy = add_lora(policy, lora.rank, lora.alpha, lora.targets)
    for model in (policy, reference):
        if model is None:
            continue
        with_scoring(model)
        if mesh is not None:
            shard(model, mesh, param_dtype, offload=offload_reference and model is reference,
                  methods=("token_logprobs",))
    return policy, reference, tokenizer
