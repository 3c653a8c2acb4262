"""The composition matrix: every estimator overlay in ``configs/estimators/`` x {one process, DDP on
2 processes, FSDP2 on 2 processes}, one RL step each through the real CLI on the tiny model, with
``HFExport`` writing the policy at the end of every run (a collective gather under FSDP2). The task
is ``ParityTask``, whose toy reward gives the tiny random model mixed rewards, so every cell must
show a learning signal: non-zero advantages, a finite non-zero gradient, weights that moved.

One launch per strategy (``tests/composition_driver.py`` loops over the overlays inside it)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]
OVERLAYS = sorted(p.stem for p in (ROOT / "configs/estimators").glob("*.yaml"))
# sequence credit, repairs, resets and probes, token credit from the group (statistics, prefix tree, entropy)
MULTI_TURN = ["grpo", "ibpo", "ibpo_revision", "rrpo", "vineppo", "ktae", "tempo", "forking"]
NEEDS_REFERENCE = {"reinforce_pp", "reinforce_pp_baseline"}  # KL in the reward; no overlay puts KL in the loss
LAUNCH = {
    "one": ([], [], "SingleDeviceStrategy", 1),
    "ddp": (["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29631"],
            ["-c", "configs/strategies/ddp.yaml"], "DDPStrategy", 2),
    "fsdp2": (["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29632"],
              ["-c", "configs/strategies/fsdp2.yaml"], "AtomicModelParallelStrategy", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", list(LAUNCH))
def test_every_estimator_runs_a_step_and_exports_under(strategy, tmp_path):
    launcher, overlay, strategy_class, world = LAUNCH[strategy]
    command = [sys.executable, *launcher, "tests/composition_driver.py", str(tmp_path), "--", *overlay,
               "--trainer.accelerator=cpu", "--data.task=tests.helpers.ParityTask", "--data.task.num_train=64"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in range(world):
        rows = [json.loads(line) for line in (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["estimator"] for r in rows] == OVERLAYS
        for row in rows:
            assert "error" not in row, f"{row['estimator']} under {strategy}, rank {rank}:\n{row['error']}"
            assert row["strategy"] == strategy_class and row["world"] == world
            assert row["version"] >= 1
            assert row["reference"] is (row["estimator"] in NEEDS_REFERENCE)
            assert row["exported"] == ["model.safetensors"]
            cell = f"{row['estimator']} under {strategy}"
            assert row["adv_abs_mean"] > 0, f"{cell}: no token carried an advantage"
            assert math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0, f"{cell}: gradient {row['grad_norm']}"
            assert row["moved"], f"{cell}: the weights did not move"
        dapo = next(r for r in rows if r["estimator"] == "dapo")
        assert dapo["dynamic"]["dynamic/groups_kept"] == 2.0  # its dynamic sampling filled the batch


def _one_step(strategy: str, tmp_path: Path, port_shift: int, estimator: str, *args: str) -> list[dict]:
    """One RL step of one estimator overlay on 2 processes (its own port); every rank's record,
    checked to have run without error under the strategy."""
    launcher, overlay, strategy_class, world = LAUNCH[strategy]
    launcher = [*launcher[:-1], str(int(launcher[-1]) + port_shift)]
    command = [sys.executable, *launcher, "tests/composition_driver.py", str(tmp_path), estimator, "--", *overlay,
               "--trainer.accelerator=cpu", *args]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads((tmp_path / f"rank{rank}.jsonl").read_text()) for rank in range(world)]
    for row in rows:
        assert "error" not in row, row["error"]
        assert row["strategy"] == strategy_class and row["version"] == 1
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_ibpo_revision_rows_train_under(strategy, tmp_path):
    """``ibpo_revision`` with repairs that verify: on the arithmetic task of the matrix above the
    tiny random model never repairs anything, so only the empty scoring passes run there. With the
    toy parity reward about half the repairs verify, a different number on each rank, and their
    rerooted rows go through the scorer's rank-matched passes and the loss."""
    rows = _one_step(strategy, tmp_path, 10, "ibpo_revision", "--data.task=tests.helpers.ParityTask",
                     "--data.task.num_train=64")
    for row in rows:
        assert row["estimator_metrics"]["ibpo/revision_rows"] > 0  # averaged over ranks


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_dynamic_sampling_with_ibpo_under(strategy, tmp_path):
    """Dynamic sampling on 2 processes: the ranks refill different numbers of groups but agree on
    the rounds (a disagreement would hang the launch), and each fills its batch."""
    rows = _one_step(strategy, tmp_path, 40, "ibpo", "--rollout.dynamic_sampling.max_rounds=8",
                     "--data.task=tests.helpers.ParityTask", "--data.task.num_train=64")
    for row in rows:
        assert row["dynamic"]["dynamic/groups_kept"] == 2.0  # averaged over ranks: 2 on each
        assert row["adv_abs_mean"] > 0 and row["moved"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_credit_localisation_and_solution_guided_blame_only_ibpo_under(strategy, tmp_path):
    """``CreditLocalisation`` (its AUC included) on the chain task and IBPO with
    ``repaired_credit: blame``, its repair prompts showing a sibling and the chain's worked solution,
    on 2 processes: every rank logs the same rank-averaged metrics."""
    rows = _one_step(strategy, tmp_path, 20, "ibpo", "--data.task=ibpo_lightning.tasks.ChainTask",
                     "--estimator.init_args.repaired_credit=blame", "--estimator.init_args.reference=both",
                     "--trainer.callbacks+=ibpo_lightning.diagnostics.CreditLocalisation")
    for row in rows:
        assert row["credit"]["credit/rows_located"] > 0  # the tiny random model gets every chain wrong
        assert "ibpo/repaired_positive" in row["estimator_metrics"]
        assert row["estimator_metrics"]["ibpo/revisions"] > 0
    assert rows[0]["credit"] == rows[1]["credit"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_lora_trains_adapters_and_exports_merged_weights_under(strategy, tmp_path):
    """LoRA on 2 processes: one GRPO step moves the adapters, and ``HFExport`` (a gather under
    FSDP2) writes merged weights under the base model's names, where only the adapted
    projections differ from the initial model."""
    from safetensors.torch import load_file

    from ibpo_lightning.models import tiny_random_model

    _one_step(strategy, tmp_path, 30, "grpo", "--model.lora.rank=4", "--model.optimizer.init_args.lr=1e-2",
              "--data.task=tests.helpers.ParityTask")
    exported = load_file(tmp_path / "grpo" / "export" / "model.safetensors")
    initial = tiny_random_model()[0].state_dict()
    assert exported and set(exported) <= set(initial)
    moved = [name for name, tensor in exported.items() if not torch.equal(tensor, initial[name])]
    assert moved and all(name.endswith("proj.weight") for name in moved), moved


@pytest.mark.slow
def test_long_prompts_dropped_alike_on_every_rank_under_fsdp2(tmp_path):
    """``data.drop_long_prompts`` under FSDP2 on 2 processes: every rank checks the prompts in its
    ``configure_model``, leaves out the same row and trains on the same prompt order."""
    from tests.test_prompt_lengths import _rows

    train = _rows(tmp_path / "train.jsonl", long_at=3, n=12)
    rows = _one_step("fsdp2", tmp_path / "run", 70, "grpo", "--data.task=ibpo_lightning.tasks.JsonlTask",
                     f"--data.task.train_path={train}", "--data.task.heldout_size=2",
                     "--data.task.system_prompt=null", "--data.task.reward=ibpo_lightning.rewards.NumberReward",
                     "--data.drop_long_prompts=true")
    assert [row["train_problems"] for row in rows] == [9, 9]  # 12 rows, 2 held out, the long one dropped


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_multi_turn_calculator_episodes_train_under(strategy, tmp_path):
    """Multi-turn episodes with the calculator on 2 processes, for a sequence-level estimator and
    those whose extra rollouts are episodes too (IBPO's repairs, rerooted or not; RRPO's resets and
    VinePPO's probes from a turn):
    the scripted engine calls the tool in half the episodes and answers with its result; every
    rank trains on model tokens only (the environment's are masked in the step), the weights move."""
    launcher, overlay, strategy_class, world = LAUNCH[strategy]
    launcher = [*launcher[:-1], str(int(launcher[-1]) + 80)]
    estimators = MULTI_TURN if strategy == "fsdp2" else MULTI_TURN[:2]  # DDP: the same step, fewer cells
    command = [sys.executable, *launcher, "tests/composition_driver.py", str(tmp_path), *estimators, "--", *overlay,
               "--trainer.accelerator=cpu", "-c", "configs/environments/calculator.yaml",
               "--rollout.engine=tests.helpers.ScriptedToolEngine", "--data.task=tests.helpers.ParityTask",
               "--data.task.num_train=64"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in range(world):
        rows = [json.loads(line) for line in (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()]
        assert sorted(r["estimator"] for r in rows) == sorted(estimators)
        for row in rows:
            assert "error" not in row, row["error"]
            assert row["strategy"] == strategy_class and row["version"] == 1
            episode = row["episode"]  # every step's episodes: fresh ones, and resets or probes
            assert episode["episode/turns"] > 1 and episode["episode/tool_calls"] > 0
            assert episode["episode/malformed_share"] == 0.0 and episode["tokens/observation"] > 0
            assert row["adv_abs_mean"] > 0 and row["moved"], row["estimator"]
