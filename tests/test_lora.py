"""LoRA: only adapters train, and the engine's merged weights equal peft's own merge."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibpo_lightning.models import tiny_random_model
from ibpo_lightning.models.lora import add_lora, merged_weights

ROOT = Path(__file__).parents[1]


def test_merged_weights_equal_peft_merge_and_keep_base_names():
    model, _ = tiny_random_model()
    names = {n for n, _ in model.named_parameters()}
    adapted = add_lora(copy.deepcopy(model), rank=4, alpha=8, targets="all-linear")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    merged = dict(merged_weights(adapted))
    assert set(merged) == names
    reference = copy.deepcopy(adapted).merge_and_unload()
    for name, tensor in reference.named_parameters():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6)
    changed = [n for n in names if not torch.equal(merged[n], dict(model.named_parameters())[n])]
    assert changed and all("proj" in n for n in changed)  # the adapted linears, nothing else
    assert all(not p.requires_grad for n, p in adapted.named_parameters() if "lora_" not in n)


def test_lora_fit_through_the_cli_trains_only_adapters(tmp_path):
    code = f"""
import torch
from ibpo_lightning.cli import run_cli
cli = run_cli(["fit", "-c", "configs/tiny.yaml", "--model.lora.rank", "4", "--model.optimizer.lr", "1e-2",
               "--data.task", "tests.helpers.ParityTask", "--estimator", "ibpo_lightning.estimators.GRPO",
               "--trainer.default_root_dir", r"{tmp_path}", "--trainer.enable_progress_bar", "false",
               "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0"])
m = cli.model
trainable = [n for n, p in m.policy.named_parameters() if p.requires_grad]
assert trainable and all("lora_" in n for n in trainable), trainable
moved = any(float(p.detach().abs().sum()) > 0 for n, p in m.policy.named_parameters() if "lora_B" in n)
assert moved, "no adapter moved"
print("OK", m.policy_version, len(trainable))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 2" in proc.stdout
