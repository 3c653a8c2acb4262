"""Run-health checks: each fires once on the metrics of a run that cannot learn, after its patience,
stays silent on a healthy run, stops the run with ``stop``, survives a checkpoint; and in real runs
(temperature 0, answers cut by max_new_tokens) on one process and under FSDP2 on two."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ibpo_lightning.cli import run_cli
from ibpo_lightning.diagnostics import RunHealth, RunHealthError, RunHealthWarning

ROOT = Path(__file__).parents[1]
HEALTHY = {"train/truncated_fraction": 0.05, "train/truncated_reward": 0.0, "train/zero_variance_groups": 0.4, "train/entropy": 0.8,
           "rollout/logprob_diff_mean": 0.01, "train/reward_mean": 0.5, "train/reward_std": 0.3}


def _module(temperature: float = 1.0):
    return SimpleNamespace(parts=SimpleNamespace(sampler=SimpleNamespace(temperature=temperature, max_new_tokens=64)))


def _steps(health: RunHealth, rows: list[dict]) -> list[str]:
    """Feed ``rows`` as the logged metrics of consecutive steps; the names of the checks that warned."""
    said = []
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, callback_metrics={})
    for step, row in enumerate(rows):
        trainer.global_step, trainer.callback_metrics = step, {k: torch.tensor(v) for k, v in row.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            health.on_train_batch_end(trainer, _module(), {}, None, step)
        said += [str(w.message).split("(")[1].split(")")[0] for w in caught if w.category is RunHealthWarning]
    return said


BAD = {  # check: the healthy metrics with the one that is wrong
    "truncation": {"train/truncated_fraction": 0.95},
    "zero_variance": {"train/zero_variance_groups": 1.0},
    "entropy": {"train/entropy": 0.01},
    "mismatch": {"rollout/logprob_diff_mean": 0.5},
    "tool_calls": {"episode/malformed_share": 0.8},
}


@pytest.mark.parametrize("check", sorted(BAD))
def test_each_check_fires_once_after_its_patience(check):
    health = RunHealth(patience=3)
    rows = [HEALTHY] * 3 + [{**HEALTHY, **BAD[check]}] * 6
    said = _steps(health, rows)
    assert said == [check]
    late = RunHealth(patience=3)  # two bad steps, one good one, two bad: no streak of three
    assert _steps(late, [HEALTHY] * 3 + [{**HEALTHY, **BAD[check]}] * 2 + [HEALTHY] + [{**HEALTHY, **BAD[check]}] * 2) == []


def test_cut_answers_that_still_score_are_not_reported():
    """The quickstart's answers often run past max_new_tokens after the number: they still score."""
    scoring = {**HEALTHY, "train/truncated_fraction": 0.9, "train/truncated_reward": 0.6}
    assert _steps(RunHealth(patience=1), [scoring] * 5) == []


def test_entropy_collapse_relative_to_its_start():
    health = RunHealth(patience=2, entropy_ratio=0.1)
    rows = [{**HEALTHY, "train/entropy": 2.0}] * 3 + [{**HEALTHY, "train/entropy": 0.15}] * 2
    assert _steps(health, rows) == ["entropy"]  # 0.15 > the floor, but under a tenth of 2.0


def test_constant_reward_after_its_steps():
    health = RunHealth(constant_steps=4)
    constant = {**HEALTHY, "train/reward_mean": 0.0, "train/reward_std": 0.0}
    assert _steps(health, [constant] * 3 + [HEALTHY] + [constant] * 3) == []
    assert _steps(RunHealth(constant_steps=4), [constant] * 4) == ["constant_reward"]


def test_a_healthy_run_is_silent():
    assert _steps(RunHealth(patience=1), [HEALTHY] * 30) == []
    assert _steps(RunHealth(enabled=False), [{**HEALTHY, **bad} for bad in BAD.values()] * 5) == []


def test_stop_turns_a_warning_into_an_error():
    health = RunHealth(patience=1, stop=True)
    with pytest.raises(RunHealthError, match="truncation.*rollout.max_new_tokens=64"):
        _steps(health, [{**HEALTHY, **BAD["truncation"]}])


def test_state_survives_a_checkpoint():
    health = RunHealth(patience=3)
    _steps(health, [{**HEALTHY, **BAD["truncation"]}] * 2)
    resumed = RunHealth(patience=3)
    resumed.load_state_dict(health.state_dict())
    assert _steps(resumed, [{**HEALTHY, **BAD["truncation"]}]) == ["truncation"]  # the streak carried over
    again = RunHealth(patience=3)
    again.load_state_dict(resumed.state_dict())
    assert _steps(again, [{**HEALTHY, **BAD["truncation"]}] * 3) == []  # said once, not again


def _tiny(tmp_path, *extra):
    return ["fit", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false", *extra]


def test_temperature_zero_warns_in_a_real_run_and_stops_with_stop(tmp_path):
    with pytest.warns(RunHealthWarning, match=r"rollout.temperature is 0.*--rollout.temperature 1.0"):
        run_cli(_tiny(tmp_path / "warn", "--rollout.temperature=0"))
    with pytest.raises(RunHealthError, match="rollout.temperature is 0"):
        run_cli(_tiny(tmp_path / "stop", "--rollout.temperature=0", "--health.stop=true"))


def test_cut_answers_stop_a_real_run_under_fsdp2_on_two_processes(tmp_path):
    """Both ranks read the same synced metrics: both stop at the same step, naming the knob."""
    command = [sys.executable, "-m", "ibpo_lightning.cli", *_tiny(tmp_path, "--rollout.max_new_tokens=1",
               "--health.patience=1", "--health.stop=true", "--data.steps=3",
               "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
               "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
               "--trainer.devices=2", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "run health (truncation, health.stop is on): 100% of the samples stopped at rollout.max_new_tokens=1 " \
        "for 1 steps, scoring 0 on average" in proc.stderr, proc.stderr[-3000:]
