"""The ``LightningModule``: the policy, a frozen reference where something needs one, and the RL step.

One ``training_step`` is one RL step: the data module hands it this step's problems, and
:class:`~ibpo_lightning.step.RLStep` samples, scores, credits and updates, top to bottom
(``step.py``). The module logs what the step returns and passes the batch on to the callbacks
(``outputs["rollout"]`` in ``on_train_batch_end``). Models, the optimizer, clipping and checkpoint
state come from the policy host (``host.py``), shared with supervised fine-tuning.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable

from ibpo_lightning.evaluation import EvalConfig
from ibpo_lightning.host import PolicyHost
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.models.lora import LoraConfig
from ibpo_lightning.precision import compute_dtype
from ibpo_lightning.step import RLStep
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.training import PolicyUpdate


class PolicyModule(PolicyHost):
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

    trains_with_credit = True

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
        super().__init__(model, optimizer, warmup_steps, micro_batch_size, micro_batch_tokens, logprob_chunk_tokens,
                         max_grad_norm, gradient_checkpointing, param_dtype, lora, evaluation, benchmarks,
                         offload_reference)
        # tasks hold data, the optimizer is a callable: neither goes into every checkpoint
        self.save_hyperparameters(ignore=["benchmarks", "optimizer"])
        self.loss = loss if loss is not None else PolicyLoss()
        self.ppo_epochs, self.mini_batches = ppo_epochs, mini_batches
        if max_policy_lag < 0 or tis_cap <= 0:
            raise ValueError(f"model.max_policy_lag must be >= 0 and model.tis_cap > 0, got "
                             f"{max_policy_lag} and {tis_cap}")
        self.max_policy_lag, self.tis, self.tis_cap = max_policy_lag, tis, tis_cap
        self.grad_noise_every = grad_noise_every
        self.empty_steps = 0
        self.rl_step: RLStep | None = None
        """Built at the start of ``fit`` from the run's parts (``on_fit_start``)."""

    @property
    def estimator(self):
        """The run's estimator (None outside a run, or when evaluating without one)."""
        return self._parts.estimator if self._parts is not None else None

    @property
    def needs_reference(self) -> bool:
        estimator = self.estimator
        return self.loss.kl_coef > 0 or bool(estimator is not None and estimator.needs_reference)

    def on_fit_start(self) -> None:
        """Build the step from the connected parts and the models (after a checkpoint, if any,
        was restored): the scorer scores at the sampler's temperature over the trainer's ranks."""
        parts = self.parts
        scorer = self.make_scorer(parts.sampler.scoring_temperature, share_prompts=self.device_mesh is None)
        half = compute_dtype(self.trainer.precision) != torch.float32
        tis = self.tis if self.tis is not None else self.max_policy_lag > 0 or half
        update = PolicyUpdate(self.loss, scorer, self.manual_backward, self.ppo_epochs, self.mini_batches,
                              self.max_grad_norm, self.tis_cap, lag_corrected=tis, clip_and_step=self.clip_and_step)
        self.rl_step = RLStep(parts, scorer, update, self.needs_reference, self.max_policy_lag, self.grad_noise_every)

    # -- training: one RL step ---------------------------------------------------------------
    def training_step(self, problems: list[Problem], batch_idx: int) -> dict:
        opt, sched = self.optimizers(), self.lr_schedulers()
        result = self.rl_step.run(problems, self.policy_version, opt, sched, next(self.policy.parameters()).device)
        self.policy_version += 1
        self.empty_steps += int(result.metrics.pop("train/empty_step"))
        metrics = {**result.metrics, "train/lr": sched.get_last_lr()[0], "policy_version": float(self.policy_version),
                   "train/skipped_updates": float(self.skipped_updates), "train/empty_steps": float(self.empty_steps),
                   "model/parameters": self.num_parameters}
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(result.batch),
                      sync_dist=self.trainer.world_size > 1)
        for logger in self.loggers if result.noise else ():  # straight to the loggers: log_dict would repeat it
            logger.log_metrics({**result.noise, "policy_version": float(self.policy_version)}, step=self.global_step)
        return {"rollout": result.batch}

    # -- checkpoint state (the host's, plus the count of steps with nothing to learn) -----------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["empty_steps"] = self.empty_steps

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.empty_steps = checkpoint.get("empty_steps", 0)
