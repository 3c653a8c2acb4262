"""The RL loop end to end on a tiny random model: CLI, staleness guard, frozen reference, skips."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import GRPO, IBPO
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.training import MemoryConfig
from ibpo_lightning.rollout import HFEngine, RolloutCallback
from ibpo_lightning.step import StaleEngineError
from ibpo_lightning.types import Kind
from tests.helpers import LastRollout, ParityTask, adamw

ROOT = Path(__file__).parents[1]


def tiny_trainer(tmp_path, *callbacks, steps=3, estimator=None, loss=None, lr=1e-3, checkpointing=False):
    module = PolicyModule(model="tiny-random-llama", optimizer=adamw(lr), memory=MemoryConfig(micro_batch_size=4), loss=loss)
    data = RLDataModule(ParityTask(num_train=32, num_heldout=4), prompts_per_step=2, steps=steps)
    rollout = RolloutCallback(HFEngine(), group_size=4, max_new_tokens=6)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=checkpointing,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[rollout, estimator or GRPO(), *callbacks])
    return trainer, module, data


def test_cli_fit_tiny_two_steps(tmp_path):
    """``ibpo fit -c configs/tiny.yaml`` through the installed ``ibpo`` console script."""
    ibpo = Path(sys.executable).parent / "ibpo"
    assert ibpo.exists(), "the package's console script is not installed"
    proc = subprocess.run(
        [str(ibpo), "fit", "-c", "configs/tiny.yaml",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy before training" in proc.stdout
    assert "held-out accuracy after 2 steps" in proc.stdout
    assert list(tmp_path.rglob("events.out.tfevents.*")), "no TensorBoard log written"


class VersionRecorder(Callback):
    """(version that sampled the step's batch, version the step trained) per step."""

    def __init__(self):
        self.pairs = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.pairs.append((outputs["rollout"].policy_version, pl_module.policy_version - 1))


def test_every_batch_is_sampled_by_the_policy_it_trains(tmp_path):
    recorder = VersionRecorder()
    trainer, module, data = tiny_trainer(tmp_path, recorder, steps=4)
    trainer.fit(module, data)
    assert recorder.pairs == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert module.policy_version == 4


def test_a_step_refuses_an_engine_that_missed_a_sync(tmp_path):
    trainer, module, data = tiny_trainer(tmp_path, steps=1)
    trainer.fit(module, data)
    module.parts.sampler.engine_version = module.policy_version - 1
    with pytest.raises(StaleEngineError, match="engine holds policy version 0, but the policy is at 1"):
        module.rl_step.run(data.draw_problems(2), module.policy_version, None, None, "cpu")


def test_a_module_without_a_run_says_what_is_missing(tmp_path):
    """No silent fallback: a module no Trainer has set up has models but no sampler to score at."""
    module = PolicyModule(model="tiny-random-llama")
    module.configure_model()
    with pytest.raises(RuntimeError, match="not connected to a run.*RolloutCallback"):
        module.parts
    trainer, module, data = tiny_trainer(tmp_path, steps=1)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, RolloutCallback)]
    with pytest.raises(ValueError, match="expected exactly one RolloutCallback callback, found none"):
        trainer.fit(module, data)


def test_reference_never_changes_while_policy_does(tmp_path):
    trainer, module, data = tiny_trainer(tmp_path, steps=3, loss=PolicyLoss(kl_coef=0.1))
    module.configure_model()
    policy_before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    ref_before = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer.fit(module, data)
    assert not module.reference.training
    assert not any(p.requires_grad for p in module.reference.parameters())
    assert all(torch.equal(v, module.reference.state_dict()[k]) for k, v in ref_before.items())
    changed = [k for k, v in policy_before.items() if not torch.equal(v, module.policy.state_dict()[k])]
    assert len(changed) > len(policy_before) // 2


class FaultInjector(Callback):
    """Makes the logits, the loss or the gradients of one RL step non-finite."""

    def __init__(self, where: str, step: int = 1):
        self.where, self.step, self.handles = where, step, []
        self.params_before = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx != self.step:
            return
        self.params_before = [p.detach().clone() for p in pl_module.policy.parameters()]
        if self.where == "loss":  # the estimator's credit becomes non-finite
            estimator = pl_module.parts.estimator
            assign = estimator.assign

            def poisoned(rollout):
                rollout.rewards[0] = float("inf")
                return assign(rollout)

            estimator.assign = poisoned
            self.handles.append(type("Undo", (), {"remove": lambda _: delattr(estimator, "assign")})())
        elif self.where == "logits":
            head = pl_module.policy.get_output_embeddings()
            self.handles.append(head.register_forward_hook(lambda m, i, out: out * float("nan")))
        else:
            param = next(pl_module.policy.parameters())
            self.handles.append(param.register_hook(lambda g: g * float("nan")))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.step:
            for h in self.handles:
                h.remove()
            self.after = [p.detach().clone() for p in pl_module.policy.parameters()]


@pytest.mark.parametrize("where", ["logits", "loss", "gradients"])
def test_non_finite_step_is_skipped_and_counted(tmp_path, where):
    injector = FaultInjector(where)
    trainer, module, data = tiny_trainer(tmp_path, injector, steps=3, estimator=IBPO(n_refs=1))
    with pytest.warns(RuntimeWarning, match="update skipped"):
        trainer.fit(module, data)
    assert module.skipped_updates == 1
    assert float(trainer.callback_metrics["train/skipped_updates"]) == 1.0
    assert module.policy_version == 3  # the run went on
    assert all(torch.equal(a, b) for a, b in zip(injector.params_before, injector.after))
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())


def test_ibpo_plan_generates_and_verifies_revisions(tmp_path):
    last = LastRollout()
    trainer, module, data = tiny_trainer(tmp_path, last, steps=1, estimator=IBPO(n_refs=1))
    trainer.fit(module, data)
    batch = last.batch
    wrong = [i for i, t in enumerate(batch.trajectories) if t.kind == 0 and t.reward < 1]
    revisions = [t for t in batch.trajectories if t.kind == 2]
    assert len(revisions) == len(wrong)  # one reference each
    assert sorted(t.parent for t in revisions) == wrong
    assert all(not t.trained and t.response_ids for t in revisions)
    assert batch.stats["ibpo/revisions"] == len(wrong)
    assert batch.stats["tokens/revision"] == sum(len(t.response_ids) for t in revisions)


class RevisionRows(Callback):
    """Per step: the rerooted revisions, the tokens they train on, and the loss statistics."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        batch = outputs["rollout"]
        rows = [i for i, t in enumerate(batch.trajectories) if t.kind == Kind.REROOTED_REVISION]
        self.steps.append(dict(rows=len(rows), weighted=float(batch.loss_weights[rows].sum()) if rows else 0.0,
                               loss=float(trainer.callback_metrics["train/pg_loss"]),
                               fresh=len(batch.fresh_groups()[batch.trajectories[0].group])))


def test_ibpo_trains_on_rerooted_revisions_end_to_end(tmp_path):
    recorder = RevisionRows()
    estimator = IBPO(n_refs=1, repair_prompt="line", train_on_revision=True)
    trainer, module, data = tiny_trainer(tmp_path, recorder, steps=3, estimator=estimator)
    trainer.fit(module, data)
    assert module.policy_version == 3 and module.skipped_updates == 0
    assert sum(s["rows"] for s in recorder.steps) > 0, "no repair verified in 3 steps: nothing was tested"
    assert all(s["weighted"] > 0 for s in recorder.steps if s["rows"])  # their edited tokens are trained on
    assert all(math.isfinite(s["loss"]) and s["fresh"] == 4 for s in recorder.steps)
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    # the rows' engine log-probs are moved onto the task prompt: no prompt shift in the mismatch
    assert float(trainer.callback_metrics["rollout/logprob_diff_max"]) < 1e-3


def test_checkpoint_omits_the_reference_and_restores_it(tmp_path):
    trainer, module, data = tiny_trainer(tmp_path, steps=2, loss=PolicyLoss(kl_coef=0.05))
    trainer.fit(module, data)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert not any(k.startswith("reference.") for k in saved["state_dict"])
    assert saved["policy_version"] == 2
    restored = PolicyModule.load_from_checkpoint(path, weights_only=False)  # hparams hold a PolicyLoss
    assert restored.policy_version == 2
    for (k, a), b in zip(module.policy.state_dict().items(), restored.policy.state_dict().values()):
        assert torch.equal(a, b), k
    fresh = PolicyModule(model="tiny-random-llama")
    fresh.configure_model()
    assert all(torch.equal(a, b) for a, b in zip(fresh.policy.state_dict().values(), restored.reference.state_dict().values()))


@pytest.mark.slow
def test_quickstart_config_runs_one_ibpo_step_on_smollm2(tmp_path):
    """The README's quickstart config, shrunk to one step, on the real SmolLM2 through the CLI."""
    proc = subprocess.run(
        [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/quickstart.yaml",
         f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
         "--trainer.logger=false", "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false",
         "--trainer.val_check_interval=1", "--data.steps=1", "--data.prompts_per_step=2",
         "--data.task.init_args.num_heldout=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "held-out accuracy before training" in proc.stdout
    assert "held-out accuracy after 1 steps" in proc.stdout


class Interrupt(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 2:
            raise KeyboardInterrupt


def test_interruption_saves_a_checkpoint(tmp_path):
    from ibpo_lightning.checkpointing import InterruptCheckpoint

    trainer, module, data = tiny_trainer(tmp_path, Interrupt(), InterruptCheckpoint(dirpath=str(tmp_path)), steps=4,
                                         checkpointing=True)
    try:
        trainer.fit(module, data)
    except SystemExit:  # Lightning exits after a graceful shutdown on Ctrl-C
        pass
    saved = torch.load(tmp_path / "interrupted.ckpt", weights_only=False)
    assert saved["policy_version"] == 2  # the two finished steps are kept


def test_optimizer_warms_up_linearly_then_holds_and_skips_frozen_parameters():
    from ibpo_lightning.training import with_warmup

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    [opt], [sched] = with_warmup(model, lambda params: torch.optim.SGD(params, lr=0.3), warmup_steps=3)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2  # the second layer's weight and bias
    rates = []
    for _ in range(5):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched["scheduler"].step()
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3]) and sched["interval"] == "step"
    [default], _ = with_warmup(model, None, 0)
    assert isinstance(default, torch.optim.AdamW) and default.param_groups[0]["lr"] == 1e-5
