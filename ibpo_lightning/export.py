"""Export the trained policy in Hugging Face format (safetensors + config + tokenizer).

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and with
``vllm.LLM(model=...)``. Three ways to get one:

- ``HFExport`` callback: writes ``<trainer.default_root_dir>/export`` when ``fit`` ends;
- ``python scripts/export_hf.py runs/x/checkpoints/last.ckpt OUT`` from a training checkpoint;
- ``save_hf(policy, tokenizer, OUT)`` from code.

The policy must be whole on one process (single device or DDP); a sharded (FSDP) policy needs
its full state dict gathered first.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning.pytorch import Callback

from ibpo_lightning.models import load_policy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(DTYPES)} or None, got {name!r}")
    return DTYPES[name]


def save_hf(policy, tokenizer, out: str | Path, dtype: str | None = None) -> Path:
    """Write ``policy`` (safetensors, config, generation config) and ``tokenizer`` to ``out``.

    ``dtype`` casts a copy of the weights (None: as they are); the policy itself is untouched.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = _dtype(dtype)
    model = policy
    if target is not None and next(policy.parameters()).dtype != target:
        model = copy.deepcopy(policy).to(target)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def policy_from_checkpoint(ckpt_path: str | Path):
    """The policy and tokenizer of a training checkpoint (``PolicyModule`` state), on CPU."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    try:
        name = ckpt["hyper_parameters"]["model"]
    except KeyError:
        raise ValueError(f"{ckpt_path} is not a PolicyModule checkpoint (no hyper_parameters.model)") from None
    policy, tokenizer = load_policy(name)
    state = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    if not state:
        raise ValueError(f"{ckpt_path} holds no policy weights (no 'policy.*' keys)")
    policy.load_state_dict(state, strict=True)
    return policy, tokenizer


class HFExport(Callback):
    """Saves the policy in Hugging Face format when ``fit`` ends (process 0 only).

    Args:
        dirpath: Output directory (None: ``<trainer.default_root_dir>/export``).
        dtype: ``float32``, ``bfloat16`` or ``float16`` to cast the saved weights to (None: the
            trainer's dtype).
    """

    def __init__(self, dirpath: str | None = None, dtype: str | None = None) -> None:
        _dtype(dtype)
        self.dirpath, self.dtype = dirpath, dtype
        self.saved_to: Path | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        out = Path(self.dirpath or Path(trainer.default_root_dir) / "export")
        if trainer.is_global_zero:
            self.saved_to = save_hf(pl_module.policy, pl_module.tokenizer, out, self.dtype)
            pl_module.print(f"policy exported in Hugging Face format to {out}")
        trainer.strategy.barrier("hf_export")
