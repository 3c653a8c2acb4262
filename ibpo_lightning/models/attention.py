"""Attention that keeps the CPU fast under bf16 autocast.

Measured here (torch 2.13, 2-core Xeon with AMX-BF16, SmolLM2-135M shapes): PyTorch's CPU
flash-attention kernel runs its *backward* 4-10x slower in bf16 than in fp32, so under
``bf16-mixed`` one training micro-batch spent 30% of its time there and bf16 trained barely
faster than fp32 (``docs/benchmarks.md``). The matrix multiplies around it are where bf16 pays
(2.4x). ``sdpa_cpu_fp32`` is transformers' SDPA attention with one change: on CPU, where SDPA
would run in half precision (under bf16/fp16 autocast, or with half inputs), it runs in fp32
with autocast off and its output is cast to that half dtype. Anything else (fp32, CUDA) goes
to the plain SDPA function untouched.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "sdpa_cpu_fp32"
_HALF = (torch.bfloat16, torch.float16)


def _half_dtype(*tensors: torch.Tensor) -> torch.dtype | None:
    """The half dtype plain SDPA would run in here: autocast's, else the inputs' (None: fp32).

    Under autocast the queries and keys often arrive in fp32 (rotary embeddings promote them)
    and the values in bf16; autocast would run SDPA in bf16 all the same.
    """
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _HALF:
        return torch.get_autocast_dtype("cpu")
    return next((t.dtype for t in tensors if t.dtype in _HALF), None)


def _attention(module, query, key, value, attention_mask, **kwargs):
    half = _half_dtype(query, key, value) if query.device.type == "cpu" else None
    if half is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(half), weights


AttentionInterface.register(NAME, _attention)
# the masks SDPA takes: without this, transformers builds none for an unknown name and padding leaks
AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def use_cpu_fp32_attention(model) -> None:
    """Switch a transformers model that uses SDPA to ``sdpa_cpu_fp32`` (others are left as they are)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(NAME)
