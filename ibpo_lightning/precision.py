"""One precision switch for trainer and engine, with an automatic choice.

``trainer.precision: auto`` (the CLI's default) resolves, once at start-up, to ``bf16-mixed``
where the hardware multiplies bf16 natively (a CUDA device that supports it; a CPU with
AVX512-BF16 or AMX-BF16) and to ``32-true`` otherwise, and says which and why in one line. The
rollout engine then samples in the dtype the trainer computes in (``compute_dtype``): the engine's
``dtype: auto`` follows the trainer, so sampling and scoring share one numeric format and the
log-prob mismatch between them stays small (it is logged as ``train/logprob_mismatch_*``).

Any explicit Lightning precision (``32-true``, ``bf16-mixed``, ...) is passed through unchanged.
"""

from __future__ import annotations

from pathlib import Path

import lightning
import torch
from lightning.pytorch.utilities import rank_zero_info

_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def native_bf16() -> tuple[bool, str]:
    """Whether the device training will run on multiplies bf16 natively, and the evidence."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"{name} supports bf16"
        return False, f"{name} has no bf16 support"
    flags = [f for f in _CPU_BF16_FLAGS if f in _cpu_flags()]
    if flags:
        return True, "this CPU has native bf16 (" + ", ".join(flags) + ")"
    return False, "this CPU has no native bf16 (no amx_bf16 / avx512_bf16 flag)"


def resolve_precision(precision) -> tuple[str | int | None, str]:
    """``(Lightning precision, reason)``; only ``"auto"`` is changed."""
    if precision != "auto":
        return precision, "as configured"
    native, why = native_bf16()
    return ("bf16-mixed" if native else "32-true"), f"auto: {why}"


def compute_dtype(precision) -> torch.dtype:
    """The dtype matrix multiplies run in under a Lightning precision setting."""
    text = str(precision)
    if "bf16" in text:
        return torch.bfloat16
    if text.startswith("16"):
        return torch.float16
    if text.startswith("64"):
        return torch.float64
    return torch.float32


class Trainer(lightning.Trainer):
    """``lightning.Trainer`` that also takes ``precision="auto"`` (its default here).

    Args:
        precision: ``auto`` (bf16-mixed on hardware with native bf16, else 32-true; one line at
            start-up says which and why) or any Lightning precision.
        **kwargs: every other ``lightning.Trainer`` argument.
    """

    def __init__(self, *, precision: str | int | None = "auto", **kwargs) -> None:
        resolved, why = resolve_precision(precision)
        rank_zero_info(f"precision: {resolved} ({why}); the rollout engine samples in "
                       f"{str(compute_dtype(resolved)).removeprefix('torch.')}")
        super().__init__(precision=resolved, **kwargs)
