"""The two configuration groups of the policy modules (``model.memory``, ``model.update``): plain
dataclasses, so that each module takes about a dozen arguments and a yaml reads by topic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryConfig:
    """How forward and backward passes are cut, and where weights live: every memory knob.

    Args:
        micro_batch_size: rows per forward/backward; whole groups are packed up to this size.
        micro_batch_tokens: also cap each micro-batch at this many padded tokens (rows x longest
            row), so long responses get fewer rows per pass (None: rows only).
        logprob_chunk_tokens: the output head scores at most this many positions at a time and
            recomputes their logits in the backward pass, so no pass holds [positions x
            vocabulary] logits for more positions than this (None: all positions at once).
        gradient_checkpointing: trade compute for memory in the policy's forward pass.
        param_dtype: under ``ModelParallelStrategy`` (FSDP2), the dtype parameters are gathered
            and computed in (``bfloat16``: mixed precision, gradients reduced in float32).
        offload_reference: under FSDP2, keep the frozen reference's shards in CPU memory (GPU).
    """

    micro_batch_size: int = 16
    micro_batch_tokens: int | None = None
    logprob_chunk_tokens: int | None = 1024
    gradient_checkpointing: bool = False
    param_dtype: str | None = None
    offload_reference: bool = False

    def __post_init__(self) -> None:
        if self.micro_batch_size < 1 or (self.micro_batch_tokens is not None and self.micro_batch_tokens < 1):
            raise ValueError(f"model.memory.micro_batch_size and micro_batch_tokens must be >= 1, got "
                             f"{self.micro_batch_size} and {self.micro_batch_tokens}")
        if self.logprob_chunk_tokens is not None and self.logprob_chunk_tokens < 1:
            raise ValueError(f"model.memory.logprob_chunk_tokens must be >= 1 or null, got {self.logprob_chunk_tokens}")


@dataclass
class UpdateConfig:
    """How one rollout batch becomes optimizer updates, and how off-policy it may be.

    Args:
        ppo_epochs: passes over each rollout batch.
        mini_batches: optimizer updates per pass (groups are split evenly between them).
        max_policy_lag: how many updates older than the policy the engine's weights may be when
            it samples; 0 refuses any lag.
        tis: weight advantages by the truncated importance ratio ``min(pi_trainer / pi_engine,
            tis_cap)`` of each token, correcting for an engine that samples from a different
            distribution than the trainer scores; None: on where the engine may differ (a
            ``max_policy_lag`` above 0, or half-precision training, where engine and trainer
            round differently), off otherwise.
        tis_cap: truncation of that importance ratio.
    """

    ppo_epochs: int = 1
    mini_batches: int = 1
    max_policy_lag: int = 0
    tis: bool | None = None
    tis_cap: float = 2.0

    def __post_init__(self) -> None:
        if self.ppo_epochs < 1 or self.mini_batches < 1:
            raise ValueError(f"model.update.ppo_epochs and mini_batches must be >= 1, got "
                             f"{self.ppo_epochs} and {self.mini_batches}")
        if self.max_policy_lag < 0 or self.tis_cap <= 0:
            raise ValueError(f"model.update.max_policy_lag must be >= 0 and model.update.tis_cap > 0, got "
                             f"{self.max_policy_lag} and {self.tis_cap}")
