"""The rollout engine interface shared by the HF engine and the vLLM engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch


@dataclass
class Sample:
    """One generated continuation of a token prompt."""

    token_ids: list[int]
    logprobs: list[float]
    """Log-prob of each generated token under the sampling distribution."""
    text: str
    finished: bool
    """True when generation ended on an end-of-sequence token, False at the length limit."""

    @property
    def scored_text(self) -> str:
        """What a reward reads: the text (a multi-turn ``EpisodeSample``: its last turn)."""
        return self.text


class RolloutEngine(ABC):
    """Generates continuations of token prompts with the current policy.

    ``bind`` hands the engine the trainer's model and tokenizer once, with the dtype the trainer
    computes in (``compute_dtype``: bf16 under ``bf16-mixed``; None: the model's parameter
    dtype), which an engine samples in unless configured otherwise, so that sampling and scoring
    share one numeric format; ``sync_weights`` streams updated ``(name, tensor)`` pairs after
    optimizer steps (a no-op for engines that share the trainer's module).
    """

    tokenizer = None
    shares_weights = False
    """True when the engine samples with the trainer's own module (never stale, no sync)."""
    max_context: int | None = None
    """Longest prompt + response the engine accepts (vLLM's ``max_model_len``); None: the model's own
    context is the only limit."""

    @abstractmethod
    def bind(self, model: torch.nn.Module, tokenizer, compute_dtype: torch.dtype | None = None) -> None: ...

    @abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        *,
        max_new_tokens: int | list[int],
        temperature: float,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """``n`` samples for each token prompt; temperature 0 means greedy. ``max_new_tokens`` is
        one budget for every prompt or one per prompt (multi-turn episodes: the tokens each has left).

        With a ``seed`` the call is reproducible: the same seed, prompts, weights and cache state
        (see ``reset_cache``) give the same samples (how a resumed run repeats the uninterrupted
        one). None draws from the engine's own random stream.
        """

    def reset_cache(self) -> None:
        """Forget cached prompt state; the rollout callback calls it at the start of every step, so
        that what a step samples does not depend on what was sampled before it."""

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load updated weights; engines sharing the trainer's module need nothing."""
