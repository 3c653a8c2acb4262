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
from ibpo_lightning.training import MemoryConfig, PolicyUpdate, UpdateConfig


class PolicyModule(PolicyHost):
    """Policy + reference model + clipped policy-gradient loss.

    Args:
        model: a built-in model name, a local Hugging Face directory or a Hub id.
        loss: the policy-gradient loss and its switches.
        optimizer: the optimizer, as a ``class_path`` with ``init_args`` (LightningCLI's optimizer
            injection); None: ``AdamW(lr=1e-5)``.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        max_grad_norm: gradient clipping threshold (None = no clipping, the norm is still logged).
        memory: micro-batches, chunked output head, checkpointing, FSDP2 dtype and offload.
        lora: train LoRA adapters instead of every weight (None: full fine-tuning); the engine
            receives merged weights.
        update: PPO epochs and mini-batches per rollout batch, the allowed policy lag and its
            importance correction.
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
        max_grad_norm: float | None = 1.0,
        memory: MemoryConfig | None = None,
        lora: LoraConfig | None = None,
        update: UpdateConfig | None = None,
        evaluation: EvalConfig | None = None,
        benchmarks: dict[str, Task] | None = None,
        grad_noise_every: int = 0,
    ) -> None:
        super().__init__(model, optimizer, warmup_steps, max_grad_norm, memory or MemoryConfig(), lora, evaluation,
                         benchmarks)
        # tasks hold data, the optimizer is a callable: neither goes into every checkpoint
        self.save_hyperparameters(ignore=["benchmarks", "optimizer"])
        self.loss = loss if loss is not None else PolicyLoss()
        self.update_config = update or UpdateConfig()
        self.grad_noise_every = grad_noise_every
        self.empty_steps = 0
        self.rl_step: RLStep | None = None
        """Built at the start of ``fit`` from the run's parts (``on_fit_start``)."""

    @property
    def max_policy_lag(self) -> int:
        return self.update_config.max_policy_lag

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
        cfg, half = self.update_config, compute_dtype(self.trainer.precision) != torch.float32
        tis = cfg.tis if cfg.tis is not None else cfg.max_policy_lag > 0 or half
        update = PolicyUpdate(self.loss, scorer, self.manual_backward, cfg.ppo_epochs, cfg.mini_batches,
                              self.max_grad_norm, cfg.tis_cap, lag_corrected=tis, clip_and_step=self.clip_and_step)
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
    def run_signature(self, estimator=None) -> dict:
        """The estimator (by class; ``estimator`` or the connected run's) and the loss settings
        this run trains with; saved in checkpoints, so a resume made with other ones can say so."""
        if estimator is None and self._parts is not None:
            estimator = self._parts.estimator
        loss = {k: v for k, v in vars(self.loss).items() if k != "entropy_coef_now"}
        return {"estimator": type(estimator).__name__ if estimator is not None else None, "loss": loss}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["empty_steps"], checkpoint["loss_state"] = self.empty_steps, self.loss.state_dict()
        checkpoint["run_signature"] = self.run_signature()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.empty_steps = checkpoint.get("empty_steps", 0)
        self.loss.load_state_dict(checkpoint.get("loss_state", {}))
