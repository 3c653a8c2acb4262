"""FSDP2 sharding of the policy and reference models, and gathering their weights back.

Under Lightning's ``ModelParallelStrategy`` the module's ``configure_model`` receives a device
mesh; each decoder layer becomes its own ``fully_shard`` unit (its parameters are all-gathered
just before its forward and freed after), and the root unit holds the embeddings, the final norm
and the (possibly tied) output projection. Only data parallelism is supported: a tensor-parallel
mesh dimension above 1 is refused.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from ibpo_lightning.models.lora import base_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def data_parallel_mesh(mesh):
    """The data-parallel sub-mesh of Lightning's 2-D mesh (or the mesh itself if 1-D)."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError(
            f"tensor parallelism (tensor_parallel_size={mesh['tensor_parallel'].size()}) is not supported: "
            "set `trainer.strategy.init_args.tensor_parallel_size: 1` and data_parallel_size to the device count"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a Hugging Face causal LM (``model.model.layers`` and kin),
    inside a ``peft`` wrapper too."""
    model = base_model(model)
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return list(module)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")


def shard(model: nn.Module, mesh, param_dtype: str | None = None, offload: bool = False,
          methods: tuple[str, ...] = ()) -> nn.Module:
    """Apply FSDP2 ``fully_shard`` to each decoder layer, then to the whole model.

    Args:
        methods: names of the model's methods that run its parts directly (rather than through
            ``forward``); they are wrapped in the root's gather/reshard hooks.
        param_dtype: compute dtype of the all-gathered parameters (``bfloat16`` for mixed
            precision; gradients are reduced in float32); None keeps the stored dtype.
        offload: keep the sharded parameters in CPU memory between uses (GPU only).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    kwargs = {"mesh": data_parallel_mesh(mesh)}
    if param_dtype is not None:
        if param_dtype not in DTYPES:
            raise ValueError(f"param_dtype must be one of {sorted(DTYPES)}, got {param_dtype!r}")
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=torch.float32)
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    for name in methods:
        register_fsdp_forward_method(model, name)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, full tensor)`` pairs, gathering one sharded parameter at a time.

    A collective when parameters are sharded: every rank must consume the whole stream, in the
    same order. At most one gathered parameter is alive per rank at any moment.
    """
    from torch.distributed.tensor import DTensor

    for name, tensor in named:
        yield name, tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
