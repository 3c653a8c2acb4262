"""The rollout callback: builds the sampler, binds its engine to the policy, keeps weights in sync.

It reads four things of the module it serves, the policy host's declared interface
(``ibpo_lightning.host.PolicyHost``): ``policy``, ``tokenizer``, ``policy_version`` and
``max_policy_lag``."""

from __future__ import annotations

import time

from lightning.pytorch import Callback

from ibpo_lightning.environments.base import Environment
from ibpo_lightning.models.lora import rollout_weights
from ibpo_lightning.precision import compute_dtype
from ibpo_lightning.rollout.dynamic import DynamicSampling
from ibpo_lightning.rollout.engine import RolloutEngine
from ibpo_lightning.rollout.sampler import Sampler
from ibpo_lightning.rollout.vllm_engine import default_engine


class RolloutCallback(Callback):
    """Owns the :class:`~ibpo_lightning.rollout.sampler.Sampler` and the engine's weight sync.

    Args:
        engine: the rollout engine; default: vLLM where installed, else the HF engine.
        group_size: samples per prompt (G).
        max_new_tokens: response length limit; with the prompt it must fit the model's context.
        temperature: sampling temperature, >= 0 (0: greedy); the trainer scores tokens at the
            same temperature (1 when greedy).
        top_p: nucleus sampling threshold, in (0, 1].
        sync_every: sync weights into the engine every this many policy updates.
        seed: seed of sampling. Each generate call is seeded from (seed, rank, policy version,
            kind, call number within the step), so a resumed run samples exactly what the
            uninterrupted run would have; None leaves the engine to its own random stream.
        dynamic_sampling: drop groups whose samples all got the same reward and refill them from
            fresh prompts (DAPO's dynamic sampling, for every estimator; see
            ``rollout/dynamic.py``); None: off.
        environment: answer in multi-turn episodes with this environment (tools the model calls
            between its turns, ``ibpo_lightning.environments``); ``max_new_tokens`` is then the
            budget of a whole episode, model and environment tokens together. None: single-turn.
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
        dynamic_sampling: DynamicSampling | None = None,
        environment: Environment | None = None,
    ) -> None:
        for name, value in (("group_size", group_size), ("max_new_tokens", max_new_tokens), ("sync_every", sync_every)):
            if value < 1:
                raise ValueError(f"rollout.{name} must be >= 1, got {value}")
        if temperature < 0:
            raise ValueError(f"rollout.temperature must be >= 0 (0: greedy), got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"rollout.top_p must be in (0, 1], got {top_p}")
        self.sync_every, self.dynamic_sampling = sync_every, dynamic_sampling
        self.sampler = Sampler(engine if engine is not None else default_engine(), group_size, max_new_tokens,
                               temperature, top_p, seed, environment=environment)

    @property
    def engine(self) -> RolloutEngine:
        return self.sampler.engine

    def check_lag(self, max_policy_lag: int) -> None:
        """Refuse a sync interval that lets the engine fall further behind than the trainer allows."""
        if not self.engine.shares_weights and self.sync_every - 1 > max_policy_lag:
            raise ValueError(
                f"rollout.sync_every={self.sync_every} lets the engine sample with weights up to "
                f"{self.sync_every - 1} updates old, but model.update.max_policy_lag={max_policy_lag}: raise "
                f"model.update.max_policy_lag to {self.sync_every - 1} (truncated importance sampling then "
                "corrects for the lag) or sync every update"
            )

    # -- binding: once the policy exists and a checkpoint, if any, is restored ------------------
    def _bind(self, trainer, pl_module) -> None:
        if not self.sampler.bound:
            self.sampler.bind(pl_module.policy, pl_module.tokenizer, pl_module.policy_version, trainer.global_rank,
                              compute_dtype(trainer.precision))
            self.check_lag(pl_module.max_policy_lag)  # the HF engine keeps a copy of a sharded policy

    def on_train_start(self, trainer, pl_module) -> None:
        self._bind(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._bind(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._bind(trainer, pl_module)

    # -- weight sync -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        version = pl_module.policy_version
        self.sampler.policy_version = version
        if self.engine.shares_weights:
            self.sampler.engine_version = version
            return
        if version % self.sync_every:
            return
        start = time.perf_counter()
        # LoRA adapters merged; under FSDP every rank gathers one parameter at a time into its engine
        self.engine.sync_weights(rollout_weights(pl_module.policy))
        self.sampler.engine_version = version
        pl_module.log("time/sync", time.perf_counter() - start, on_step=True, on_epoch=False)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # a resumed run's engine starts from the restored weights (bound after loading)
        self.sampler.policy_version = self.sampler.engine_version = checkpoint.get("policy_version", 0)
