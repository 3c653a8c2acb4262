"""What a user meets around a run: fresh starts, explicit resumes, interruption, bad settings,
``ibpo test``, steps with nothing to learn, and a first multi-process run on an empty cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibpo_lightning.checkpointing import find_last, swap_in
from ibpo_lightning.cli import run_cli
from ibpo_lightning.estimators import GRPO
from ibpo_lightning.rollout import HFEngine, RolloutCallback

ROOT = Path(__file__).parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
RUN = """
trainer:
  num_sanity_val_steps: 0
  limit_val_batches: 0
  enable_checkpointing: true
  logger:
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args: {{save_dir: {root}, name: csv}}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, save_top_k: 0, every_n_train_steps: 1}}
    - class_path: ibpo_lightning.checkpointing.InterruptCheckpoint
    - class_path: tests.helpers.VersionLog
      init_args: {{path: {root}/versions.txt}}
"""


def _fit(root: Path, *extra: str):
    overlay = root / "run.yaml"
    overlay.write_text(RUN.format(root=root))
    return run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(overlay),
                    f"--trainer.default_root_dir={root}", *QUIET, *extra])


def _versions(root: Path) -> list[int]:
    return [int(v) for v in (root / "versions.txt").read_text().split()]


def test_a_second_run_starts_fresh_and_keeps_apart_and_last_resumes(tmp_path, capsys):
    _fit(tmp_path)
    _fit(tmp_path, "--estimator=ibpo_lightning.estimators.GRPO")  # the README's comparison, in the same directory
    assert _versions(tmp_path) == [0, 1, 0, 1], "the second run must train from the base model"
    lasts = sorted(tmp_path.glob("csv/version_*/checkpoints/last.ckpt"))
    assert [p.parent.parent.name for p in lasts] == ["version_0", "version_1"]  # two runs, two folders
    assert find_last(tmp_path) == lasts[1]
    cli = _fit(tmp_path, "--ckpt_path=last", "--trainer.max_epochs=2")  # one more epoch of 2 steps
    assert f"resuming from {lasts[1]}" in capsys.readouterr().err
    assert _versions(tmp_path)[4:] == [2, 3], "resumed where the newest run stopped"
    assert cli.model.policy_version == 4


def test_sigterm_stops_at_the_end_of_the_step_with_a_checkpoint(tmp_path):
    overlay = tmp_path / "run.yaml"
    overlay.write_text(RUN.format(root=tmp_path) + "    - class_path: tests.helpers.SigtermAt\n      init_args: {step: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml", "-c",
                           str(overlay), f"--trainer.default_root_dir={tmp_path}", "--data.steps=6", *QUIET],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert _versions(tmp_path) == [0, 1], "no step may start after SIGTERM"
    saved = list(tmp_path.glob("csv/version_0/checkpoints/interrupted.ckpt"))
    assert saved, proc.stderr[-3000:]
    assert torch.load(saved[0], weights_only=False)["policy_version"] == 2  # the signalled step finished


@pytest.mark.parametrize(("args", "message"), [
    (["--rollout.temperature=-0.5"], r"rollout.temperature must be >= 0"),
    (["--rollout.top_p=0"], r"rollout.top_p must be in \(0, 1\]"),
    (["--rollout.max_new_tokens=100000"], r"rollout.max_new_tokens=100000 does not fit the model's context of 2048"),
])
def test_bad_settings_fail_at_start_naming_the_field(tmp_path, args, message):
    with pytest.raises((ValueError, SystemExit)) as caught:
        run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}", *QUIET,
                 "--trainer.logger=false", *args])
    import re

    text = str(caught.value) + str(getattr(caught.value, "__context__", ""))
    assert re.search(message, text), text
    assert not list(tmp_path.rglob("*.ckpt"))


def test_ibpo_test_evaluates_the_test_split(tmp_path, capsys):
    cli = run_cli(["test", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                   *QUIET, "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    assert {"test/accuracy", "test/pass@1", "test/mean@1"} <= set(metrics)
    assert "test accuracy after 0 steps" in capsys.readouterr().out
    assert cli.datamodule.task.test_problems() == cli.datamodule.task.heldout_problems()  # ArithmeticTask has no test split


class NothingToLearn(GRPO):
    """Every group solved or hopeless: no token carries loss weight."""

    def assign(self, batch):
        adv, weights = super().assign(batch)
        return adv * 0, weights * 0


def test_a_step_where_no_row_carries_weight_is_an_empty_update(tmp_path):
    from lightning.pytorch import Trainer

    from ibpo_lightning.data import RLDataModule
    from ibpo_lightning.module import PolicyModule
    from ibpo_lightning.training import MemoryConfig
    from tests.helpers import ParityTask, adamw

    module = PolicyModule(model="tiny-random-llama", optimizer=adamw(1e-2), memory=MemoryConfig(micro_batch_size=4))
    data = RLDataModule(ParityTask(num_train=16, num_heldout=2), prompts_per_step=2, steps=2)
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[RolloutCallback(HFEngine(), group_size=4, max_new_tokens=4), NothingToLearn()])
    module.configure_model()
    before = [p.detach().clone() for p in module.policy.parameters()]
    trainer.fit(module, data)
    assert module.policy_version == 2 and module.empty_steps == 2
    assert float(trainer.callback_metrics["train/empty_steps"]) == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, module.policy.parameters())), "an empty step moved weights"


@pytest.mark.slow
def test_two_ranks_on_an_empty_model_cache(tmp_path):
    env = {**os.environ, "IBPO_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml", "-c",
                           "configs/strategies/ddp.yaml", "--trainer.accelerator=cpu", "--trainer.max_steps=1",
                           "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0", "--trainer.logger=false",
                           f"--trainer.default_root_dir={tmp_path / 'run'}", *QUIET],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-12000:]
    built = tmp_path / "cache" / "tiny-random-llama"
    assert (built / "config.json").is_file() and (built / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if ".partial-" in p.name]


def _sharded(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "__0_0.distcp").write_text(content)
    return path


def test_swap_in_replaces_a_checkpoint_and_keeps_nothing_else(tmp_path):
    last = _sharded(tmp_path / "last.ckpt", "step 2")
    swap_in(_sharded(tmp_path / "last.ckpt.partial", "step 3"), last)
    assert (last / "__0_0.distcp").read_text() == "step 3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    (tmp_path / "x.ckpt").write_text("a file")  # a single-file checkpoint replaced by a directory
    swap_in(_sharded(tmp_path / "x.ckpt.partial", "sharded"), tmp_path / "x.ckpt")
    assert (tmp_path / "x.ckpt" / "__0_0.distcp").read_text() == "sharded"


def test_find_last_takes_the_old_checkpoint_only_where_a_swap_was_cut_short(tmp_path):
    run = tmp_path / "csv/version_0/checkpoints"
    _sharded(run / "last.ckpt.partial", "step 3, perhaps torn")
    assert find_last(tmp_path) is None, "a .partial save is never resumed from"
    old = _sharded(run / "last.ckpt.old", "step 2")  # killed between the swap's two renames
    assert find_last(tmp_path) == old
    last = _sharded(run / "last.ckpt", "step 3")  # killed while the old one was being removed
    os.utime(old, (last.stat().st_mtime + 60,) * 2)  # removing files from it touches it after the new one
    assert find_last(tmp_path) == last


def test_ctrl_c_saves_and_exits_130(tmp_path):
    overlay = tmp_path / "run.yaml"
    overlay.write_text(RUN.format(root=tmp_path) + "    - class_path: tests.helpers.SigtermAt\n"
                       "      init_args: {step: 1, signal: 2}\n")
    # a shell running this in the background ignores SIGINT, and a child inherits that: give it Ctrl-C back
    proc = subprocess.run([sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml", "-c",
                           str(overlay), f"--trainer.default_root_dir={tmp_path}", "--data.steps=6", *QUIET],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert list(tmp_path.glob("csv/version_0/checkpoints/interrupted.ckpt")), "Ctrl-C saves the state first"


def test_last_finds_step_named_checkpoints(tmp_path):
    named = tmp_path / "csv/version_0/checkpoints/epoch=0-step=1.ckpt"  # ModelCheckpoint's own naming
    named.parent.mkdir(parents=True)
    named.write_text("a checkpoint")
    assert find_last(tmp_path) == named
    inside = _sharded(tmp_path / "other.ckpt.partial", "torn")
    (inside / "nested.ckpt").write_text("part of a partial save")
    assert find_last(tmp_path) == named, "nothing inside a .partial save counts"


def test_resume_says_its_step_a_finished_run_and_another_estimator(tmp_path, capsys):
    _fit(tmp_path)  # IBPO, 2 steps: last.ckpt at step 2
    capsys.readouterr()
    _fit(tmp_path, "--ckpt_path=last")
    err = capsys.readouterr().err
    assert "at step 2" in err and "note: the checkpoint is at step 2, where this run ends" in err
    assert "raise --data.steps" in err and "made with estimator" not in err
    _fit(tmp_path, "--ckpt_path=last", "--trainer.max_epochs=2", "--estimator=ibpo_lightning.estimators.GRPO")
    err = capsys.readouterr().err
    assert "note: the checkpoint was made with estimator IBPO, this run uses GRPO" in err
    assert "where this run ends" not in err
