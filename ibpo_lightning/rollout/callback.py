"""The rollout callback: owns the engine, samples trajectory groups, keeps weights in sync."""

from __future__ import annotations

import hashlib
import time
from typing import TypeVar

from lightning.pytorch import Callback, Trainer

from ibpo_lightning.models.lora import rollout_weights
from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.rollout.vllm_engine import default_engine
from ibpo_lightning.types import RolloutBatch, Trajectory

C = TypeVar("C")


def find_callback(trainer: Trainer, cls: type[C]) -> C | None:
    """The one callback of type ``cls`` (error if several are configured)."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
    if len(found) > 1:
        names = ", ".join(type(cb).__name__ for cb in found)
        raise ValueError(f"expected one {cls.__name__} callback, found {len(found)}: {names}")
    return found[0] if found else None


class RolloutCallback(Callback):
    """Samples groups of responses with the rollout engine and syncs weights after updates.

    Args:
        engine: the rollout engine; default: vLLM where installed, else the HF engine.
        group_size: samples per prompt (G).
        max_new_tokens: response length limit.
        temperature: sampling temperature (the trainer scores tokens at the same temperature).
        top_p: nucleus sampling threshold.
        sync_every: sync weights into the engine every this many policy updates.
        seed: seed of sampling. Each generate call is seeded from (seed, policy version, call
            number within the step), so a resumed run samples exactly what the uninterrupted run
            would have; None leaves the engine to its own random stream.
    """

    def __init__(
        self,
        engine: RolloutEngine | None = None,
        group_size: int = 8,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        sync_every: int = 1,
        seed: int | None = 0,
    ) -> None:
        if group_size < 1:
            raise ValueError(f"rollout.group_size must be >= 1, got {group_size}")
        if max_new_tokens < 1:
            raise ValueError(f"rollout.max_new_tokens must be >= 1, got {max_new_tokens}")
        if sync_every < 1:
            raise ValueError(f"rollout.sync_every must be >= 1, got {sync_every}")
        self.engine = engine if engine is not None else default_engine()
        self.group_size, self.max_new_tokens = group_size, max_new_tokens
        self.temperature, self.top_p, self.sync_every = temperature, top_p, sync_every
        self.seed, self.calls = seed, 0
        self.module = None
        self.tokens_by_kind: dict[str, int] = {}
        self.engine_version = 0
        """Policy version whose weights the engine holds (the version of what it samples)."""

    # -- wiring ----------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        self.module = pl_module
        if not self.engine.shares_weights:
            self._check_lag()

    def _check_lag(self) -> None:
        allowed = getattr(self.module, "max_policy_lag", 0)
        if self.sync_every - 1 > allowed:
            raise ValueError(
                f"rollout.sync_every={self.sync_every} lets the engine sample with weights up to "
                f"{self.sync_every - 1} updates old, but model.max_policy_lag={allowed}: raise "
                f"model.max_policy_lag to {self.sync_every - 1} (truncated importance sampling then "
                "corrects for the lag) or sync every update"
            )

    @property
    def tokenizer(self):
        return self.module.tokenizer

    def _engine(self) -> RolloutEngine:
        if self.engine.tokenizer is None:  # bound lazily: the policy exists after configure_model
            self.engine.bind(self.module.policy, self.module.tokenizer)
            self.engine_version = self.module.policy_version
            if not self.engine.shares_weights:  # e.g. the HF engine keeps a copy of a sharded policy
                self._check_lag()
        return self.engine

    @property
    def policy_version(self) -> int:
        """The version of the weights the engine samples with."""
        return self.module.policy_version if self.engine.shares_weights else self.engine_version

    # -- the sampler interface used by the data stream and estimators ------------------------
    def encode(self, user_text: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of a chat prompt ending where the assistant's answer starts."""
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user_text})
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def generate(
        self,
        prompts: list[list[int]],
        n: int,
        *,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        kind: str = "fresh",
    ) -> list[list[Sample]]:
        """``n`` samples per token prompt, counted under ``kind`` for compute accounting."""
        out = self._engine().generate(
            prompts, n,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p,
            seed=self._call_seed(kind),
        )
        produced = sum(len(s.token_ids) for group in out for s in group)
        self.tokens_by_kind[kind] = self.tokens_by_kind.get(kind, 0) + produced
        return out

    def _call_seed(self, kind: str) -> int | None:
        """A seed that depends only on (seed, policy version, kind, call number in this step)."""
        if self.seed is None:
            return None
        self.calls += 1
        key = f"{self.seed}:{self.module.global_rank}:{self.module.policy_version}:{kind}:{self.calls}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")

    def sample_groups(self, problems, system_prompt: str | None) -> RolloutBatch:
        """One group of ``group_size`` fresh samples per problem (rewards not yet scored)."""
        start = time.perf_counter()
        self.tokens_by_kind, self.calls = {}, 0
        self._engine().reset_cache()  # this step's samples depend on the weights and the step only
        prompts = [self.encode(p.prompt, system_prompt) for p in problems]
        groups = self.generate(prompts, self.group_size)
        trajs = [
            Trajectory(prompt_ids=prompt, response_ids=s.token_ids, logprobs=s.logprobs,
                       prompt_text=p.prompt, response_text=s.text, group=g, finished=s.finished)
            for g, (p, prompt, group) in enumerate(zip(problems, prompts, groups))
            for s in group
        ]
        batch = RolloutBatch(trajs, policy_version=self.policy_version,
                             problems=[p.prompt for p in problems], answers=[p.answer for p in problems])
        batch.stats["time/generate"] = time.perf_counter() - start
        return batch

    # -- weight sync -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.policy_version % self.sync_every:
            return
        start = time.perf_counter()
        # LoRA adapters merged; under FSDP every rank gathers one parameter at a time into its engine
        self._engine().sync_weights(rollout_weights(pl_module.policy))
        self.engine_version = pl_module.policy_version
        pl_module.log("time/sync", time.perf_counter() - start, on_step=True, on_epoch=False)
