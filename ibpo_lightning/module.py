"""The ``LightningModule``: the policy, a frozen reference where something needs one, and the update.

One ``training_step`` is one RL step on a batch the data stream sampled and planned: check the
batch was sampled by the current policy, fill the reference log-probs if the loss or the
estimator needs them, let the estimator score (``prepare``) and assign credit, then run the
policy update (``training.update``: PPO epochs x mini-batches of whole groups, manual
optimization, non-finite updates skipped). Every forward pass goes through one
:class:`~ibpo_lightning.training.scorer.Scorer`, which makes it safe under every strategy.
"""

from __future__ import annotations

import time

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy

from ibpo_lightning.diagnostics import group_gradient_noise
from ibpo_lightning.evaluation import EvalConfig, HeldoutEvaluation
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.models.lora import LoraConfig, base_model
from ibpo_lightning.models.policy import build_models
from ibpo_lightning.precision import compute_dtype
from ibpo_lightning.rng import rng_states, set_rng_states
from ibpo_lightning.tasks.base import Task
from ibpo_lightning.training import DataParallel, PolicyUpdate, Scorer, batch_metrics, with_warmup
from ibpo_lightning.types import RolloutBatch


class StaleBatchError(RuntimeError):
    """A batch sampled by an older policy reached the optimizer."""


class PolicyModule(HeldoutEvaluation, LightningModule):
    """Policy + reference model + clipped policy-gradient loss.

    Args:
        model: a built-in model name, a local Hugging Face directory or a Hub id.
        loss: the policy-gradient loss and its switches.
        optimizer: the optimizer, as a ``class_path`` with ``init_args`` (LightningCLI's optimizer
            injection); None: ``AdamW(lr=1e-5)``.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        ppo_epochs: passes over each rollout batch.
        mini_batches: optimizer updates per pass (groups are split evenly between them).
        micro_batch_size: rows per forward/backward; whole groups are packed up to this size.
        micro_batch_tokens: also cap each micro-batch at this many padded tokens (rows x longest
            row), so long responses get fewer rows per pass (None: rows only).
        logprob_chunk_tokens: the output head scores at most this many positions at a time and
            recomputes their logits in the backward pass, so no pass holds [positions x
            vocabulary] logits for more positions than this (None: all positions at once).
        max_grad_norm: gradient clipping threshold (None = no clipping, the norm is still logged).
        gradient_checkpointing: trade compute for memory in the policy's forward pass.
        param_dtype: under ``ModelParallelStrategy`` (FSDP2), the dtype parameters are gathered
            and computed in (``bfloat16``: mixed precision, gradients reduced in float32).
        offload_reference: under FSDP2, keep the frozen reference's shards in CPU memory (GPU).
        lora: train LoRA adapters instead of every weight (None: full fine-tuning); the engine
            receives merged weights.
        max_policy_lag: how many updates older than the policy a batch's sampler may be; 0 refuses
            any stale batch.
        tis: weight advantages by the truncated importance ratio ``min(pi_trainer / pi_engine,
            tis_cap)`` of each token, correcting for an engine that samples from a different
            distribution than the trainer scores; None: on where the engine may differ (a
            ``max_policy_lag`` above 0, or half-precision training, where engine and trainer
            round differently), off otherwise.
        tis_cap: truncation of that importance ratio.
        evaluation: how validation and ``ibpo test`` sample and score.
        benchmarks: extra benchmarks evaluated beside the held-out split, by name: each task's
            held-out problems (test problems in ``ibpo test``), logged as ``val/<name>/pass@k``
            (see ``docs/evaluation.md``).
        grad_noise_every: every this many steps, log the per-group gradient noise of the batch
            before the update (``grad/*``, see ``diagnostics/gradient_noise.py``; 0: never).
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        loss: PolicyLoss | None = None,
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 0,
        ppo_epochs: int = 1,
        mini_batches: int = 1,
        micro_batch_size: int = 16,
        micro_batch_tokens: int | None = None,
        logprob_chunk_tokens: int | None = 1024,
        max_grad_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        param_dtype: str | None = None,
        offload_reference: bool = False,
        lora: LoraConfig | None = None,
        max_policy_lag: int = 0,
        tis: bool | None = None,
        tis_cap: float = 2.0,
        evaluation: EvalConfig | None = None,
        benchmarks: dict[str, Task] | None = None,
        grad_noise_every: int = 0,
    ) -> None:
        super().__init__()
        # tasks hold data, the optimizer is a callable: neither goes into every checkpoint
        self.save_hyperparameters(ignore=["benchmarks", "optimizer"])
        self.automatic_optimization = False
        self.model_name, self.loss = model, loss if loss is not None else PolicyLoss()
        self.optimizer, self.warmup_steps = optimizer, warmup_steps
        self.ppo_epochs, self.mini_batches, self.micro_batch_size = ppo_epochs, mini_batches, micro_batch_size
        self.micro_batch_tokens, self.logprob_chunk_tokens = micro_batch_tokens, logprob_chunk_tokens
        if logprob_chunk_tokens is not None and logprob_chunk_tokens < 1:
            raise ValueError(f"model.logprob_chunk_tokens must be >= 1 or null, got {logprob_chunk_tokens}")
        self.max_grad_norm, self.gradient_checkpointing = max_grad_norm, gradient_checkpointing
        self.param_dtype, self.offload_reference = param_dtype, offload_reference
        self.lora = lora
        if max_policy_lag < 0 or tis_cap <= 0:
            raise ValueError(f"model.max_policy_lag must be >= 0 and model.tis_cap > 0, got "
                             f"{max_policy_lag} and {tis_cap}")
        self.max_policy_lag, self.tis, self.tis_cap = max_policy_lag, tis, tis_cap
        self.grad_noise_every = grad_noise_every
        self.policy = self.reference = self.tokenizer = None
        self.num_parameters = 0.0
        self.scorer: Scorer | None = None
        self.update: PolicyUpdate | None = None
        self.sampler = self.estimator = None
        self.policy_version = 0
        self.init_evaluation(evaluation, benchmarks)

    def connect(self, sampler, estimator=None) -> None:
        """The sampler (evaluation, and the temperature tokens are scored at) and the estimator
        (credit); called once by the wiring (``wiring.connect``)."""
        self.sampler, self.estimator = sampler, estimator

    @property
    def needs_reference(self) -> bool:
        return self.loss.kl_coef > 0 or bool(self.estimator is not None and self.estimator.needs_reference)

    # -- models ----------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                "FSDPStrategy (FSDP1) is not supported: scoring runs the decoder and output head "
                "outside the root module's forward, which FSDP1 does not gather for. Use "
                "-c configs/strategies/fsdp2.yaml (ModelParallelStrategy with FSDP2) instead"
            )
        self.policy, self.reference, self.tokenizer = build_models(
            self.model_name, with_reference=self.needs_reference, lora=self.lora,
            gradient_checkpointing=self.gradient_checkpointing, mesh=self.device_mesh,
            param_dtype=self.param_dtype, offload_reference=self.offload_reference)
        # parameters of the forward pass (adapters included, a tied head once): the FLOP count's base
        self.num_parameters = float(sum(p.numel() for p in base_model(self.policy).parameters()))
        world = self.trainer.world_size if self._trainer is not None else 1
        temperature = self.sampler.scoring_temperature if self.sampler is not None else 1.0
        self.scorer = Scorer(self.policy, self.reference, temperature, self.micro_batch_size, self.micro_batch_tokens,
                             DataParallel(world, self.policy), self.tokenizer.pad_token_id,
                             share_prompts=self.device_mesh is None, chunk_tokens=self.logprob_chunk_tokens)
        half = self._trainer is not None and compute_dtype(self.trainer.precision) != torch.float32
        tis = self.tis if self.tis is not None else self.max_policy_lag > 0 or half
        self.update = PolicyUpdate(self.loss, self.scorer, self.manual_backward, self.ppo_epochs, self.mini_batches,
                                   self.max_grad_norm, self.tis_cap, lag_corrected=tis)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: never in training mode, never updated
        return self

    def configure_optimizers(self):
        return with_warmup(self.policy, self.optimizer, self.warmup_steps)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # rollout batches move their tensors in place; validation batches are problem texts
        return batch.to(device) if isinstance(batch, RolloutBatch) else batch

    # -- training: one RL step ---------------------------------------------------------------
    def training_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        self.scorer.tokens_scored = 0
        lag = self.policy_version - batch.policy_version
        if not 0 <= lag <= self.max_policy_lag:
            raise StaleBatchError(
                f"batch sampled by policy version {batch.policy_version}, but the policy is at "
                f"{self.policy_version} (model.max_policy_lag={self.max_policy_lag}): the engine missed "
                "a weight sync or the stream fetched ahead of the optimizer step"
            )
        start = time.perf_counter()
        if self.needs_reference:  # KL in the loss or in the estimator's reward: computed once
            batch.ref_logprobs = self.scorer.full(batch, batch.rows(lambda t: t.trained), "reference")
        reference_time, start = time.perf_counter() - start, time.perf_counter()
        self.estimator.prepare(batch, self.scorer)
        batch.advantages, batch.loss_weights = self.estimator.assign(batch)
        credit_time = time.perf_counter() - start
        noise = self._gradient_noise(batch)
        opt, sched = self.optimizers(), self.lr_schedulers()
        metrics = self.update.run(batch, opt, sched, self.policy_version, lag)
        self.policy_version += 1
        metrics.update(batch_metrics(batch))
        metrics["time/estimator"] = metrics.get("time/estimator", 0.0) + credit_time  # plan + prepare + assign
        metrics["time/logprobs"] += reference_time  # reference and old-policy passes
        metrics.update({"train/lr": sched.get_last_lr()[0], "policy_version": float(self.policy_version),
                        "logprobs/tokens": float(self.scorer.tokens_scored), "model/parameters": self.num_parameters})
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch), sync_dist=self.scorer.parallel.world > 1)
        for logger in self.loggers if noise else ():  # straight to the loggers: log_dict would repeat it every step
            logger.log_metrics({**noise, "policy_version": float(self.policy_version)}, step=self.global_step)

    def _gradient_noise(self, batch: RolloutBatch) -> dict[str, float]:
        due = self.grad_noise_every and self.policy_version % self.grad_noise_every == 0
        if not due or self.scorer.parallel.world > 1:  # one process only
            return {}
        rows = [i for i in range(len(batch)) if bool(batch.loss_weights[i].any())]
        return group_gradient_noise(self.scorer, self.loss, batch, rows)

    # -- checkpoint state ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the frozen reference is rebuilt from `model` on load: no need to store it every time
        # (a sharded checkpoint is loaded key by key into the module, so there it stays)
        state = checkpoint["state_dict"]
        if not any(hasattr(v, "full_tensor") for v in state.values()):
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]
        checkpoint["policy_version"] = self.policy_version
        checkpoint["skipped_updates"], checkpoint["empty_steps"] = self.update.skipped_updates, self.update.empty_steps
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()
        state = checkpoint.get("state_dict")  # absent when a sharded checkpoint was loaded in place
        if state is not None:
            if self.reference is None:  # a checkpoint of a run that had one
                for key in [k for k in state if k.startswith("reference.")]:
                    del state[key]
            else:
                for key, value in self.reference.state_dict().items():
                    state.setdefault(f"reference.{key}", value)
        self.policy_version = checkpoint.get("policy_version", 0)
        self.update.skipped_updates = checkpoint.get("skipped_updates", 0)
        self.update.empty_steps = checkpoint.get("empty_steps", 0)
        if "rng_states" in checkpoint:  # estimators' random choices continue where they stopped
            set_rng_states(checkpoint["rng_states"])

