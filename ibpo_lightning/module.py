"""The ``LightningModule``: policy, frozen reference model, and the policy-gradient update.

One ``training_step`` consumes one rollout batch: it checks the batch was sampled by the current
policy, then runs ``ppo_epochs`` x ``mini_batches`` optimizer updates (manual optimization),
each accumulating micro-batches that never split a group. An update whose loss or gradients
are not finite is skipped, counted and reported, never applied.
"""

from __future__ import annotations

import copy
import math
import time
import types
import warnings

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import FSDPStrategy
from torchmetrics import MeanMetric

from ibpo_lightning.losses import LogprobMismatch, PolicyLoss, truncated_importance_weight
from ibpo_lightning.rng import rng_states, set_rng_states
from ibpo_lightning.models import load_policy
from ibpo_lightning.models.lora import add_lora
from ibpo_lightning.models.sharding import shard
from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.diagnostics import group_gradient_noise
from ibpo_lightning.evaluation import EvalSuite
from ibpo_lightning.rollout.callback import RolloutCallback, find_callback
from ibpo_lightning.tasks.base import Task
from ibpo_lightning.types import Kind, RolloutBatch


class StaleBatchError(RuntimeError):
    """A batch sampled by an older policy reached the optimizer."""


class PolicyModule(LightningModule):
    """Policy + reference model + clipped policy-gradient loss.

    Args:
        model: a built-in model name, a local Hugging Face directory or a Hub id.
        loss: the policy-gradient loss and its switches.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        ppo_epochs: passes over each rollout batch.
        mini_batches: optimizer updates per pass (groups are split evenly between them).
        micro_batch_size: rows per forward/backward; whole groups are packed up to this size.
        micro_batch_tokens: also cap each micro-batch at this many padded tokens (rows x longest
            row), so long responses get fewer rows per pass (None: rows only).
        max_grad_norm: gradient clipping threshold (None = no clipping, the norm is still logged).
        gradient_checkpointing: trade compute for memory in the policy's forward pass.
        param_dtype: under ``ModelParallelStrategy`` (FSDP2), the dtype parameters are gathered
            and computed in (``bfloat16``: mixed precision, gradients reduced in float32).
        offload_reference: under FSDP2, keep the frozen reference's shards in CPU memory (GPU).
        lora_rank: train LoRA adapters of this rank instead of every weight (0: full fine-tuning);
            the engine receives merged weights. Needs ``peft`` (the ``lora`` extra).
        lora_alpha: LoRA scale numerator (the update is ``alpha / rank * B @ A``).
        lora_targets: module names to adapt, or ``all-linear`` (every linear layer but the head).
        max_policy_lag: how many updates older than the policy a batch's sampler may be; 0 refuses
            any stale batch. Above 0, advantages are weighted by the truncated importance ratio
            ``min(pi_trainer / pi_engine, tis_cap)`` of each token.
        tis_cap: truncation of that importance ratio.
        eval_samples: answers sampled per problem in validation (1 with ``eval_temperature`` 0:
            greedy, as before).
        eval_temperature: sampling temperature in validation (0: greedy).
        pass_k: the k of each ``val/pass@k`` (None: 1 and ``eval_samples``); each <= ``eval_samples``.
        eval_max_new_tokens: response length limit in validation (None: ``rollout.max_new_tokens``).
        benchmarks: extra benchmarks evaluated beside the held-out split, by name: each task's
            held-out problems, logged as ``val/<name>/pass@k`` (see ``docs/evaluation.md``).
        heldout_name: name of the datamodule task's held-out split in the results table.
        grad_noise_every: every this many steps, log the per-group gradient noise of the batch
            before the update (``grad/*``, see ``diagnostics/gradient_noise.py``; 0: never).
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        loss: PolicyLoss | None = None,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        ppo_epochs: int = 1,
        mini_batches: int = 1,
        micro_batch_size: int = 16,
        micro_batch_tokens: int | None = None,
        max_grad_norm: float | None = 1.0,
        gradient_checkpointing: bool = False,
        param_dtype: str | None = None,
        offload_reference: bool = False,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_targets: list[str] | str = "all-linear",
        max_policy_lag: int = 0,
        tis_cap: float = 2.0,
        eval_samples: int = 1,
        eval_temperature: float = 0.0,
        pass_k: list[int] | None = None,
        eval_max_new_tokens: int | None = None,
        benchmarks: dict[str, Task] | None = None,
        heldout_name: str = "heldout",
        grad_noise_every: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["benchmarks"])  # tasks hold data: not in every checkpoint
        self.automatic_optimization = False
        self.model_name, self.loss = model, loss if loss is not None else PolicyLoss()
        self.lr, self.weight_decay, self.betas, self.warmup_steps = lr, weight_decay, tuple(betas), warmup_steps
        self.ppo_epochs, self.mini_batches, self.micro_batch_size = ppo_epochs, mini_batches, micro_batch_size
        self.micro_batch_tokens = micro_batch_tokens
        self.max_grad_norm, self.gradient_checkpointing = max_grad_norm, gradient_checkpointing
        self.param_dtype, self.offload_reference = param_dtype, offload_reference
        if lora_rank < 0:
            raise ValueError(f"model.lora_rank must be >= 0, got {lora_rank}")
        self.lora_rank, self.lora_alpha, self.lora_targets = lora_rank, lora_alpha, lora_targets
        if max_policy_lag < 0 or tis_cap <= 0:
            raise ValueError(f"model.max_policy_lag must be >= 0 and model.tis_cap > 0, got "
                             f"{max_policy_lag} and {tis_cap}")
        self.max_policy_lag, self.tis_cap, self.grad_noise_every = max_policy_lag, tis_cap, grad_noise_every
        self.policy = self.reference = self.tokenizer = None
        self.policy_version = 0
        self.skipped_updates = 0
        self.val_accuracy = MeanMetric()
        self.benchmarks, self.heldout_name = dict(benchmarks or {}), heldout_name
        if heldout_name in self.benchmarks:
            raise ValueError(f"model.benchmarks may not reuse the held-out split's name {heldout_name!r}")
        self.evaluation = EvalSuite([heldout_name, *self.benchmarks], eval_samples,
                                    pass_k or sorted({1, eval_samples}), eval_temperature, eval_max_new_tokens)

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
        self.policy, self.tokenizer = load_policy(self.model_name)
        self.policy.train()
        if self.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.lora_rank:
            self.policy = add_lora(self.policy, self.lora_rank, self.lora_alpha, self.lora_targets)
        for model in (self.policy, self.reference):  # scoring runs the decoder and head separately
            model.token_logprobs = types.MethodType(token_logprobs, model)
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the data-parallel ranks
            shard(self.policy, self.device_mesh, self.param_dtype, methods=("token_logprobs",))
            shard(self.reference, self.device_mesh, self.param_dtype, offload=self.offload_reference,
                  methods=("token_logprobs",))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: never in training mode, never updated
        return self

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        warmup = max(self.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def temperature(self) -> float:
        rollout = find_callback(self.trainer, RolloutCallback) if self._trainer else None
        return rollout.temperature if rollout is not None and rollout.temperature > 0 else 1.0

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # rollout batches move their tensors in place; validation batches are problem texts
        return batch.to(device) if isinstance(batch, RolloutBatch) else batch

    # -- training --------------------------------------------------------------------------
    def training_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        lag = self.policy_version - batch.policy_version
        if not 0 <= lag <= self.max_policy_lag:
            raise StaleBatchError(
                f"batch sampled by policy version {batch.policy_version}, but the policy is at "
                f"{self.policy_version} (model.max_policy_lag={self.max_policy_lag}): the engine missed "
                "a weight sync or the stream fetched ahead of the optimizer step"
            )
        rows = [i for i in range(len(batch)) if bool(batch.loss_weights[i].any())]
        noise = self._gradient_noise(batch, rows)
        start = time.perf_counter()
        # rows whose every token has zero advantage add nothing to the gradient (without a KL
        # term) but still count in the loss normaliser: no forward or backward pass for them
        busy = rows if self.loss.kl_coef > 0 else [i for i in rows if bool(batch.advantages[i].any())]
        busy_set = set(busy)
        old = self._old_logprobs(batch, busy)
        ref = self._reference_logprobs(batch, busy)
        logprob_time = time.perf_counter() - start
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        mismatch = LogprobMismatch()
        updates = 0
        minis = batch.split_groups(rows, self.mini_batches)
        minis += [[] for _ in range(int(self._reduce(len(minis), "max")) - len(minis))]  # same count on every rank
        for epoch in range(self.ppo_epochs):
            for mini in minis:
                stats = self._update(batch, mini, [i for i in mini if i in busy_set], old, ref, opt,
                                     mismatch if epoch == 0 else None)
                if stats is None:
                    continue
                sched.step()
                updates += 1
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + v
        self.policy_version += 1
        metrics = {f"train/{k}": v / max(updates, 1) for k, v in totals.items()}
        metrics.update(mismatch.metrics(lag))
        metrics.update(self._batch_metrics(batch, rows))
        metrics.update({"time/logprobs": logprob_time, "time/train": time.perf_counter() - start - logprob_time,
                        "train/skipped_updates": float(self.skipped_updates), "train/lr": sched.get_last_lr()[0]})
        self.log("reward", metrics["train/reward_mean"], prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(batch), sync_dist=self._world() > 1)
        for logger in self.loggers if noise else ():  # straight to the loggers: log_dict would repeat it every step
            logger.log_metrics({**noise, "policy_version": float(self.policy_version)}, step=self.global_step)

    def _update(self, batch, rows, busy, old, ref, opt, mismatch=None) -> dict[str, float] | None:
        """One optimizer update over ``rows`` (forward passes on ``busy`` only); None if skipped.

        ``mismatch`` collects trainer-vs-engine log-prob differences (first pass over the batch).
        With several data-parallel ranks the normaliser covers every rank's rows (gradients are
        averaged across ranks, so the update equals one process training on the whole batch), and
        every rank runs the same number of forward/backward passes (FSDP gathers in each).
        """
        local = self.loss.normaliser(batch.loss_weights[rows]) if rows else 0.0
        normaliser = self._reduce(local) / self._world()
        opt.zero_grad(set_to_none=True)
        stats: dict[str, float] = {}
        n_micro, bad = 0, None
        for micro in self._in_step(batch.group_chunks(busy, self.micro_batch_size, self.micro_batch_tokens)):
            if micro is None:  # a pass that adds nothing, to match another rank's extra micro-batch
                self.manual_backward(self._logprobs(self.policy, batch, [0])[0].sum() * 0.0)
                continue
            logp, entropy, width = self._logprobs(self.policy, batch, micro, with_entropy=True)
            w = batch.loss_weights[micro, :width]
            old_logp = old[micro, :width] if old is not None else logp.detach()
            ref_logp = ref[micro, :width] if ref is not None else None
            engine_logp, scored = batch.engine_logprobs[micro, :width], batch.response_mask[micro, :width] > 0
            if mismatch is not None:
                mismatch.add((old_logp - engine_logp).abs()[scored])
            adv = batch.advantages[micro, :width]
            if self.max_policy_lag > 0:  # truncated importance sampling: engine -> trainer policy
                adv = adv * truncated_importance_weight(old_logp, engine_logp, self.tis_cap)
            loss, st = self.loss(logp, old_logp, adv, w, normaliser, ref_logp)
            if not torch.isfinite(loss):
                bad = bad or "loss"  # still backward: the other ranks' passes wait for this one's
            self.manual_backward(loss)
            n_micro += 1
            st.entropy = float((entropy * w.gt(0)).sum() / w.gt(0).sum().clamp(min=1))
            for k, v in vars(st).items():
                merge = max if k == "ratio_max" else min if k == "ratio_min" else lambda a, b: a + b
                stats[k] = merge(stats[k], v) if k in stats else v
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm or math.inf)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
        if bad is None and not torch.isfinite(norm):
            bad = "gradient"
        if self._reduce(bad is not None, "max"):  # one rank's bad update is every rank's
            return self._skip(opt, bad or "loss or gradient on another rank")
        opt.step()
        averaged = ("kl", "clip_fraction", "entropy")
        out = {k: v / max(n_micro, 1) if k in averaged else v for k, v in stats.items()}
        out["grad_norm"] = float(norm)
        return out

    def _gradient_noise(self, batch: RolloutBatch, rows: list[int]) -> dict[str, float]:
        due = self.grad_noise_every and self.policy_version % self.grad_noise_every == 0
        return group_gradient_noise(self, batch, rows) if due and self._world() == 1 else {}  # one process only

    def _world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _reduce(self, value: float, op: str = "sum") -> float:
        """``value`` summed (or maxed) over the data-parallel ranks; itself on one process."""
        if self._world() == 1:
            return float(value)
        total = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        dist = torch.distributed
        dist.all_reduce(total, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(total)

    def _in_step(self, chunks: list[list[int]]) -> list[list[int] | None]:
        """``chunks`` padded with None up to the largest count on any rank."""
        return chunks + [None] * (int(self._reduce(len(chunks), "max")) - len(chunks))

    def _skip(self, opt, what: str) -> None:
        opt.zero_grad(set_to_none=True)
        self.skipped_updates += 1
        warnings.warn(f"step {self.policy_version}: non-finite {what}; update skipped "
                      f"({self.skipped_updates} skipped so far)", RuntimeWarning, stacklevel=2)
        return None

    def _logprobs(self, model, batch, rows, with_entropy=False):
        width = int(batch.attention_mask[rows].sum(-1).max())
        logp, entropy = model.token_logprobs(batch.input_ids[rows, :width], batch.attention_mask[rows, :width],
                                             batch.response_mask[rows, :width], self.temperature(), with_entropy,
                                             share_prompts=self.device_mesh is None)
        return logp, entropy, width

    @torch.no_grad()
    def _full_logprobs(self, model, batch, rows) -> torch.Tensor:
        out = torch.zeros_like(batch.engine_logprobs)
        for micro in self._in_step(batch.group_chunks(rows, self.micro_batch_size, self.micro_batch_tokens)):
            if micro is None:  # matches another rank's extra forward pass
                self._logprobs(model, batch, [0])
                continue
            logp, _, width = self._logprobs(model, batch, micro)
            out[micro, :width] = logp
        return out

    def _old_logprobs(self, batch, rows) -> torch.Tensor | None:
        """Trainer-side behaviour log-probs; only needed when one batch feeds several updates."""
        if self.ppo_epochs * self.mini_batches == 1:
            return None  # the single update is on-policy: old = current, detached
        return self._full_logprobs(self.policy, batch, rows)

    def _reference_logprobs(self, batch, rows) -> torch.Tensor | None:
        if self.loss.kl_coef <= 0:
            return None
        return self._full_logprobs(self.reference, batch, rows)

    def _batch_metrics(self, batch: RolloutBatch, rows: list[int]) -> dict[str, float]:
        fresh = [i for i, t in enumerate(batch.trajectories) if t.kind == Kind.FRESH]
        rewards = batch.rewards[fresh]
        lengths = torch.tensor([len(batch.trajectories[i].response_ids) for i in fresh], dtype=torch.float32)
        mask = batch.loss_weights[rows] > 0
        adv = batch.advantages[rows][mask] if mask.any() else torch.zeros(1)
        metrics = {
            "train/reward_mean": float(rewards.mean()),
            "train/reward_std": float(rewards.std()) if len(fresh) > 1 else 0.0,
            "train/accuracy": float((rewards >= 1.0).float().mean()),
            "train/response_length": float(lengths.mean()),
            "train/truncated_fraction": sum(not batch.trajectories[i].finished for i in fresh) / len(fresh),
            "train/adv_mean": float(adv.mean()),
            "train/adv_std": float(adv.std()) if adv.numel() > 1 else 0.0,
            "train/adv_abs_mean": float(adv.abs().mean()),
            "train/adv_zero_fraction": float((adv == 0).float().mean()),
            "policy_version": float(self.policy_version),
        }
        metrics.update({k: v for k, v in batch.stats.items()})
        return metrics

    # -- validation: mean@n / pass@k on the held-out split and on extra benchmarks -----------------
    def validation_step(self, problems, batch_idx: int) -> None:
        rollout = find_callback(self.trainer, RolloutCallback)
        right = self.evaluation.evaluate(rollout, self.heldout_name, self.trainer.datamodule.task, problems)
        self.val_accuracy.update(right.flatten())  # val/accuracy: the mean over all samples

    def on_validation_epoch_end(self) -> None:
        rollout = find_callback(self.trainer, RolloutCallback)
        chunk = getattr(self.trainer.datamodule, "val_batch_size", 64)
        for name, task in self.benchmarks.items():
            problems = list(task.heldout_problems())
            for start in range(0, len(problems), chunk):
                self.evaluation.evaluate(rollout, name, task, problems[start : start + chunk])
        accuracy = float(self.val_accuracy.compute())
        self.val_accuracy.reset()
        results = self.evaluation.compute()
        table = self.evaluation.table(results)
        self.evaluation.reset()
        metrics = {"val/accuracy": accuracy}
        for name, values in results.items():
            prefix = "val/" if name == self.heldout_name else f"val/{name}/"
            metrics.update({prefix + key: value for key, value in values.items()})
        if self.trainer.sanity_checking:  # the sanity pass is the "before training" measurement
            for logger in self.loggers:
                logger.log_metrics({**metrics, "val/policy_version": 0.0}, step=0)
            self.print(f"held-out accuracy before training: {accuracy:.3f}\n{table}")
            return
        self.log("val/accuracy", metrics.pop("val/accuracy"), prog_bar=True)
        self.log_dict(metrics)
        self.log("val/policy_version", float(self.policy_version))
        self.print(f"held-out accuracy after {self.policy_version} steps: {accuracy:.3f}\n{table}")

    # -- checkpoint state ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the frozen reference is rebuilt from `model` on load: no need to store it every time
        # (a sharded checkpoint is loaded key by key into the module, so there it stays)
        state = checkpoint["state_dict"]
        if not any(hasattr(v, "full_tensor") for v in state.values()):
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]
        checkpoint["policy_version"] = self.policy_version
        checkpoint["skipped_updates"] = self.skipped_updates
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.configure_model()
        state = checkpoint.get("state_dict")  # absent when a sharded checkpoint was loaded in place
        for key, value in self.reference.state_dict().items() if state is not None else ():
            state.setdefault(f"reference.{key}", value)
        self.policy_version = checkpoint.get("policy_version", 0)
        self.skipped_updates = checkpoint.get("skipped_updates", 0)
        if "rng_states" in checkpoint:  # estimators' random choices continue where they stopped
            set_rng_states(checkpoint["rng_states"])

