"""Export the trained policy in Hugging Face format (safetensors + config + tokenizer).

The directory loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and with
``vllm.LLM(model=...)``. Three ways to get one:

- ``HFExport`` callback: writes ``<run's log directory>/export`` when ``fit`` ends (each run's
  own versioned directory, so a second run does not overwrite the first);
- ``python scripts/export_hf.py runs/x/checkpoints/last.ckpt OUT`` from a training checkpoint;
- ``save_hf(policy, tokenizer, OUT)`` from code.

Every path writes the same thing: the full weights under the base model's names, LoRA adapters
merged as the rollout engine receives them (``full_state_dict``), written by ``save_hf_state``.
``HFExport`` also handles an FSDP2-sharded policy (``configs/strategies/fsdp2.yaml``): every
rank takes part in gathering the weights, one parameter at a time, and process 0 writes them.
``scripts/export_hf.py`` reads both kinds of training checkpoint: a single ``.ckpt`` file, and
the directory of per-rank shards an FSDP2 run writes (the strategy's ``save_distributed_checkpoint``:
``meta.pt`` plus torch distributed-checkpoint files), which it reassembles in one process.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from lightning.pytorch import Callback

from ibpo_lightning.models import load_policy
from ibpo_lightning.models.lora import base_model, merged_weights
from ibpo_lightning.models.sharding import full_tensors, is_sharded

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(DTYPES)} or None, got {name!r}")
    return DTYPES[name]


def save_hf(policy, tokenizer, out: str | Path, dtype: str | None = None) -> Path:
    """Write a whole (unsharded) ``policy`` (safetensors, config, generation config; LoRA merged)
    and ``tokenizer`` to ``out``.

    ``dtype`` casts a copy of the weights (None: as they are); the policy itself is untouched.
    """
    return save_hf_state(policy, full_state_dict(policy), tokenizer, out, dtype)


def full_state_dict(policy, keep: bool = True) -> dict[str, torch.Tensor]:
    """The policy's full weights as CPU tensors under the base model's names (LoRA adapters merged,
    tied weights once) and its persistent buffers.

    A collective when the policy is sharded (FSDP2): every rank must call it. Parameters are
    gathered one at a time; only where ``keep`` is true (process 0) are they kept, so the other
    ranks never hold more than one full parameter.
    """
    base = base_model(policy)
    persistent = set(base.state_dict().keys())  # local under FSDP2 (sharded DTensors, no gather)
    buffers = ((name, buf) for name, buf in base.named_buffers() if name in persistent)
    state = {}
    with torch.no_grad():
        for source in (merged_weights(policy), buffers):
            for name, tensor in full_tensors(source):
                if keep:
                    state[name] = tensor.detach().to("cpu", copy=True)
    return state


def save_hf_state(policy, state: dict[str, torch.Tensor], tokenizer, out: str | Path,
                  dtype: str | None = None) -> Path:
    """Write full weights ``state`` (from ``full_state_dict``) as ``policy``'s Hugging Face directory.

    The architecture, config and generation config are ``policy``'s (its base model's for LoRA);
    ``policy`` itself is neither read for weights nor changed, so it may be sharded.
    """
    from transformers import AutoModelForCausalLM

    if not state:
        raise ValueError("no weights to save: `state` is empty (full_state_dict keeps them on process 0 only)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = _dtype(dtype)
    # a new dict either way: save_pretrained pops the entries of the one it is given
    state = {k: v.to(target) if target is not None and v.is_floating_point() else v for k, v in state.items()}
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    base = base_model(policy)
    with torch.device("meta"):  # a weightless shell: its class, config and dtype name the files
        shell = AutoModelForCausalLM.from_config(copy.deepcopy(base.config), dtype=stored)
    shell.generation_config = copy.deepcopy(base.generation_config)
    shell.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
    return out


def policy_from_checkpoint(ckpt_path: str | Path):
    """The policy and tokenizer of a training checkpoint (``PolicyModule`` state), on CPU: a
    ``.ckpt`` file, or the directory of shards an FSDP2 run writes."""
    path = Path(ckpt_path)
    sharded = path.is_dir()
    if sharded and not (path / "meta.pt").is_file():
        raise ValueError(f"{path} is a directory but not a sharded checkpoint (no meta.pt in it)")
    ckpt = torch.load(path / "meta.pt" if sharded else path, map_location="cpu", weights_only=False)
    try:
        name = ckpt["hyper_parameters"]["model"]
    except KeyError:
        raise ValueError(f"{ckpt_path} is not a PolicyModule checkpoint (no hyper_parameters.model)") from None
    policy, tokenizer = load_policy(name)
    if sharded:
        _load_shards(policy, path)
        return policy, tokenizer
    state = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items() if k.startswith("policy.")}
    if not state:
        raise ValueError(f"{ckpt_path} holds no policy weights (no 'policy.*' keys)")
    policy.load_state_dict(state, strict=True)
    return policy, tokenizer


def _load_shards(policy, path: Path) -> None:
    """Fill ``policy`` in place from a distributed checkpoint's ``state_dict.policy.*`` entries,
    whatever the number of ranks that wrote them (torch reassembles the shards; no process group).
    ``load`` copies into the given tensors, which are the parameters' own storage, and fails on
    any key the shards lack: every weight is read, none twice."""
    from torch.distributed.checkpoint import load

    wanted = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    try:
        load({"state_dict": wanted}, checkpoint_id=str(path), no_dist=True)
    except Exception as err:  # a missing key surfaces as a planner error naming it
        raise ValueError(f"{path}: its shards do not hold this policy's weights ({err})") from err


class HFExport(Callback):
    """Saves the policy in Hugging Face format when ``fit`` ends.

    Process 0 writes the directory. A sharded (FSDP2) policy is gathered first, with every rank
    taking part; otherwise process 0 saves its own whole copy.

    Args:
        dirpath: Output directory (None: ``<trainer.log_dir>/export``, the run's versioned log
            directory, or ``<trainer.default_root_dir>/export`` without a logger).
        dtype: ``float32``, ``bfloat16`` or ``float16`` to cast the saved weights to (None: the
            trainer's dtype).
    """

    def __init__(self, dirpath: str | None = None, dtype: str | None = None) -> None:
        _dtype(dtype)
        self.dirpath, self.dtype = dirpath, dtype
        self.saved_to: Path | None = None

    def on_fit_end(self, trainer, pl_module) -> None:
        out = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "export")  # every rank
        policy = pl_module.policy
        # a collective when the policy is sharded; a whole policy is read on process 0 only
        state = full_state_dict(policy, keep=trainer.is_global_zero) if trainer.is_global_zero or is_sharded(policy) else {}
        if trainer.is_global_zero:
            self.saved_to = save_hf_state(policy, state, pl_module.tokenizer, out, self.dtype)
        del state
        if trainer.is_global_zero:
            pl_module.print(f"policy exported in Hugging Face format to {out}")
        trainer.strategy.barrier("hf_export")
