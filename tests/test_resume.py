"""Exact resume: a run killed with SIGKILL and resumed from its last checkpoint continues with the
same prompts, the same samples and the same loss as the uninterrupted run: for GRPO and for every
estimator that keeps state of its own (IBPO's and RRPO's generators), with dynamic sampling (DAPO,
and IBPO under DDP), under FSDP2, and with the vLLM engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STEPS = 6

OVERLAY = """
trainer:
  enable_checkpointing: true
  num_sanity_val_steps: 0
  limit_val_batches: 0
  enable_progress_bar: false
  logger: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {root}/checkpoints, save_last: true, save_top_k: 0, every_n_train_steps: 1}}
    - class_path: tests.helpers.BatchRecorder
      init_args: {{path: {root}/steps.jsonl}}{more_callbacks}
model:
  optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 1.0e-3, weight_decay: 0.0}}}}
data:
  task:
    class_path: tests.helpers.ParityTask
    init_args: {{num_train: 16, num_heldout: 4}}
  prompts_per_step: 3
  steps: {steps}
"""


def _command(root: Path, *extra: str, more_callbacks: str = "") -> list[str]:
    overlay = root / "overlay.yaml"
    overlay.write_text(OVERLAY.format(root=root, steps=STEPS, more_callbacks=more_callbacks))
    return [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml", "-c", str(overlay),
            f"--trainer.default_root_dir={root}", *extra]


def _records(root: Path) -> list[dict]:
    path = root / "steps.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if "version" in r]  # steps only


def _run(root: Path, *extra: str) -> None:
    proc = subprocess.run(_command(root, *extra), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]  # not even at exit (vLLM's shutdown)


def _kill_after(root: Path, finished_steps: int, *extra: str) -> None:
    proc = subprocess.Popen(_command(root, *extra), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while len(_records(root)) < finished_steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # every rank of a multi-process run
    proc.wait()
    assert len(_records(root)) < STEPS, "the run finished before it could be killed"


def _reference(root: Path, *extra: str) -> dict[int, dict]:
    _run(root, *extra)
    reference = {r["version"]: r for r in _records(root)}
    assert sorted(reference) == list(range(STEPS))
    assert min(r["grad_norm"] for r in reference.values()) > 0, "no gradient: nothing to compare"
    return reference


def _assert_resume_repeats(killed: Path, reference: dict[int, dict], *est: str) -> None:
    before = _records(killed)
    _run(killed, *est, "--ckpt_path", "last")
    after = _records(killed)[len(before):]
    assert after, "the resumed run trained no step"
    assert after[0]["version"] <= len(before), "the resumed run skipped a step"
    assert after[-1]["version"] == STEPS - 1, "the resumed run did not reach the end of the epoch"
    for got in after:
        want = reference[got["version"]]
        assert got["problems"] == want["problems"]
        assert got["responses"] == want["responses"], f"step {got['version']} sampled different responses"
        assert got["reward"] == want["reward"]
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-7)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
        assert got["weights"] == pytest.approx(want["weights"], rel=1e-9)


FSDP2 = ["-c", "configs/strategies/fsdp2.yaml", "--trainer.accelerator", "cpu"]
DDP = ["-c", "configs/strategies/ddp.yaml", "--trainer.accelerator", "cpu"]
GRPO = ["--estimator", "ibpo_lightning.estimators.GRPO"]
# the tiny config's own IBPO, one repair per group: the reference and the repaired pair are drawn
# from the estimator's generator, which the checkpoint must carry
IBPO = ["--estimator.init_args.max_repairs_per_group", "1"]
VLLM = ["--model.model", "smollm2-135m-instruct", "--rollout.engine", "ibpo_lightning.rollout.VLLMEngine",
        "--rollout.engine.max_model_len", "512", "--trainer.precision", "bf16-mixed"]
SETTINGS = {
    "grpo": GRPO,
    "ibpo-correct_first": IBPO + ["--estimator.init_args.ref_policy", "correct_first"],
    # ref_policy random (drawn from the estimator's generator): the FSDP2 and vLLM cells below
    "rrpo": ["-c", "configs/estimators/rrpo.yaml"],
    # multi-turn episodes, with resets that replay the calculator to a turn and play on
    "rrpo-calculator_episodes": ["-c", "configs/estimators/rrpo.yaml", "-c", "configs/environments/calculator.yaml",
                                 "--rollout.engine", "tests.helpers.ScriptedToolEngine"],
    "dapo-dynamic_sampling": ["-c", "configs/estimators/dapo.yaml"],
    "ibpo-dynamic_sampling-ddp": IBPO + ["--rollout.dynamic_sampling.max_rounds", "4"] + DDP,
    # IBPO under FSDP2 (GRPO's FSDP2 resume is the sharded-save test below); and the adaptive
    # entropy coefficient moves every update: a resume must carry it, not restart it
    "ibpo-adaptive_entropy-fsdp2": IBPO + ["--estimator.init_args.ref_policy", "random",
                                           "--model.loss.target_entropy", "50.0",
                                           "--model.loss.entropy_coef_step", "0.01"] + FSDP2,
    "ibpo-vllm": IBPO + ["--estimator.init_args.ref_policy", "random", "--rollout.dynamic_sampling.max_rounds", "4"] + VLLM,
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_kill_and_resume_repeats_the_uninterrupted_run(tmp_path, setting):
    if setting.endswith("vllm"):
        from ibpo_lightning.rollout import vllm_available

        if not vllm_available():
            pytest.skip("vLLM is not installed")
    est = SETTINGS[setting]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    reference = _reference(whole, *est)
    _kill_after(killed, 3, *est)
    _assert_resume_repeats(killed, reference, *est)


@pytest.mark.slow
def test_a_kill_inside_a_sharded_save_resumes_from_the_checkpoint_before(tmp_path):
    """FSDP2 ranks killed once the shards of step 3's checkpoint are on disk, before the save
    returns: Lightning's ModelParallelStrategy, rewriting ``last.ckpt`` in place, leaves step 3's
    shards under step 2's metadata there; the atomic strategy of configs/strategies/fsdp2.yaml
    leaves step 2's checkpoint whole, and the resume repeats steps 2 to 5 exactly."""
    est = GRPO + FSDP2
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    reference = _reference(whole, *est)
    kill = "\n    - class_path: tests.helpers.KillInsideSave\n      init_args: {step: 3}"
    proc = subprocess.run(_command(killed, *est, more_callbacks=kill), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, start_new_session=True)  # its own process group: the kill's target
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert len(_records(killed)) == 3
    checkpoints = killed / "checkpoints"
    assert (checkpoints / "last.ckpt.partial").is_dir(), "the kill did not land inside the save"
    _assert_resume_repeats(killed, reference, *est)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
