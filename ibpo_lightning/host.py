"""The policy host: what the RL module and the supervised fine-tuning module share.

A :class:`PolicyHost` builds the policy (and, where something needs it, the frozen reference),
its optimizer and schedule, clips and steps (skipping non-finite updates on every rank), counts
its updates, evaluates on held-out problems, and carries that state through checkpoints. It is
also the declared interface the callbacks use: ``policy``, ``tokenizer``, ``policy_version``,
``max_policy_lag`` (the rollout callback, ``HFExport``) and ``parts`` (what the run samples with).

The host is whole or says what is missing: its ``setup`` hook asks the wiring for the run's parts
(``wiring.run_parts``) whenever a ``Trainer`` runs it, hand-built or from the CLI; a module
restored with ``load_from_checkpoint`` has models but no parts, and anything that would sample
says so instead of falling back to a default.
"""

from __future__ import annotations

import warnings

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy

from ibpo_lightning.data.lengths import check_problems, prompt_room
from ibpo_lightning.evaluation import EvalConfig, HeldoutEvaluation
from ibpo_lightning.models.lora import LoraConfig, base_model
from ibpo_lightning.models.policy import build_models
from ibpo_lightning.rng import rng_states, set_rng_states
from ibpo_lightning.tasks.base import Task
from ibpo_lightning.training import DataParallel, MemoryConfig, Scorer, with_warmup
from ibpo_lightning.training.optim import clip_and_step
from ibpo_lightning.wiring import RunParts, run_parts


class PolicyHost(HeldoutEvaluation, LightningModule):
    """Base of ``PolicyModule`` and ``SFTModule``; subclasses add their ``training_step``.

    Args: as documented on the subclasses (the names are shared).
    """

    max_policy_lag: int = 0
    """How many updates older than the policy the engine's weights may be (RL sets it)."""
    trains_with_credit: bool = False
    """Whether ``fit`` needs an estimator and a data module that draws problems (RL)."""

    def __init__(self, model: str, optimizer: OptimizerCallable | None, warmup_steps: int,
                 max_grad_norm: float | None, memory: MemoryConfig, lora: LoraConfig | None,
                 evaluation: EvalConfig | None, benchmarks: dict[str, Task] | None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model_name, self.optimizer, self.warmup_steps = model, optimizer, warmup_steps
        self.max_grad_norm, self.memory, self.lora = max_grad_norm, memory, lora
        self.policy = self.reference = self.tokenizer = None
        self.num_parameters = 0.0
        self.policy_version = 0
        """Optimizer updates so far (it keys the sampler's seeds and the engine's weight version)."""
        self.skipped_updates = 0
        self._parts: RunParts | None = None
        self.init_evaluation(evaluation, benchmarks)

    # -- the run's parts ------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._parts = run_parts(self.trainer, stage, with_estimator=self.trains_with_credit,
                                max_policy_lag=self.max_policy_lag)

    @property
    def parts(self) -> RunParts:
        if self._parts is None:
            raise RuntimeError(f"{type(self).__name__} is not connected to a run: its sampler, task and estimator "
                               "are handed over by its setup hook when a Trainer with a RolloutCallback runs it "
                               "(trainer.fit / validate / test); a module restored with load_from_checkpoint "
                               "alone can score and export, not sample")
        return self._parts

    @property
    def needs_reference(self) -> bool:
        return False

    # -- models and optimizer -------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.policy is None:
            self._build_models()
        if self._trainer is not None and self._parts is not None:
            self._fit_prompts(self.trainer.state.fn)

    def _build_models(self) -> None:
        if self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy):
            raise ValueError(
                "FSDPStrategy (FSDP1) is not supported: scoring runs the decoder and output head "
                "outside the root module's forward, which FSDP1 does not gather for. Use "
                "-c configs/strategies/fsdp2.yaml (ModelParallelStrategy with FSDP2) instead"
            )
        memory = self.memory
        self.policy, self.reference, self.tokenizer = build_models(
            self.model_name, with_reference=self.needs_reference, lora=self.lora,
            gradient_checkpointing=memory.gradient_checkpointing, mesh=self.device_mesh,
            param_dtype=memory.param_dtype, offload_reference=memory.offload_reference)
        # parameters of the forward pass (adapters included, a tied head once): the FLOP count's base
        self.num_parameters = float(sum(p.numel() for p in base_model(self.policy).parameters()))

    def _fit_prompts(self, stage) -> None:
        """Have the data module check the prompts ``stage`` uses against the context, before the
        first step draws one that cannot fit (``data/lengths.py``)."""
        fit = getattr(self.trainer.datamodule, "fit_prompts", None)
        if fit is None:
            return
        sampler, task = self.parts.sampler, self.parts.task
        context = getattr(self.policy.config, "max_position_embeddings", None)
        evaluation = self.evaluation.max_new_tokens
        rooms = {"training": prompt_room(context, sampler.engine.max_context, sampler.max_new_tokens,
                                         "rollout.max_new_tokens")}
        rooms["held-out"] = rooms["test"] = rooms["training"] if evaluation is None else prompt_room(
            context, sampler.engine.max_context, evaluation, "model.evaluation.max_new_tokens")

        def fits(problems, split: str, drop: bool):
            return check_problems(self.tokenizer, problems, task.system_prompt, rooms[split], split,
                                  type(task).__name__, drop)

        fit(stage, fits)
        # each model.benchmarks task is evaluated with the held-out (test) budget, its own system prompt
        split = "test" if stage == "test" else "held-out"
        drop = bool(getattr(self.trainer.datamodule, "drop_long_prompts", False))
        self.checked_benchmarks = {
            name: check_problems(self.tokenizer, bench.test_problems() if split == "test" else bench.heldout_problems(),
                                 bench.system_prompt, rooms[split], f"{name} {split}", type(bench).__name__, drop)
            for name, bench in self.benchmarks.items()}

    def make_scorer(self, temperature: float, share_prompts: bool) -> Scorer:
        """A scorer of this host's models over the trainer's data-parallel ranks."""
        memory = self.memory
        return Scorer(self.policy, self.reference, temperature, memory.micro_batch_size, memory.micro_batch_tokens,
                      DataParallel(self.trainer.world_size, self.policy), self.tokenizer.pad_token_id,
                      share_prompts=share_prompts, chunk_tokens=memory.logprob_chunk_tokens)

    def configure_optimizers(self):
        return with_warmup(self.policy, self.optimizer, self.warmup_steps)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # frozen: never in training mode, never updated
        return self

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        return batch  # lists of problems; tensors are built inside the step, on the policy's device

    def clip_and_step(self, opt, parallel: DataParallel, bad: str | None = None) -> float | None:
        """Clip the gradient and step ``opt`` (``training.optim.clip_and_step``); the gradient norm,
        or None when the update was skipped on every rank, counted and reported."""
        norm, skipped = clip_and_step(self.policy, opt, self.max_grad_norm, parallel, bad)
        if skipped:
            self.skipped_updates += 1
            warnings.warn(f"step {self.policy_version}: non-finite {skipped}; update skipped "
                          f"({self.skipped_updates} skipped so far)", RuntimeWarning, stacklevel=2)
        return norm

    # -- checkpoint state -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the frozen reference is rebuilt from `model` on load: no need to store it every time
        # (a sharded checkpoint is loaded key by key into the module, so there it stays)
        state = checkpoint["state_dict"]
        if not any(hasattr(v, "full_tensor") for v in state.values()):
            for key in [k for k in state if k.startswith("reference.")]:
                del state[key]
        checkpoint["policy_version"], checkpoint["skipped_updates"] = self.policy_version, self.skipped_updates
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
        self.skipped_updates = checkpoint.get("skipped_updates", 0)
        if "rng_states" in checkpoint:  # anything drawing from the global generators continues
            set_rng_states(checkpoint["rng_states"])
