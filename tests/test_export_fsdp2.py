"""HFExport of an FSDP2-sharded policy (``ModelParallelStrategy`` on 2 CPU processes over gloo): every
rank takes part in gathering the weights, process 0 writes a directory that transformers loads, and
its weights are the run's trained weights (and, within reduction-order error, a 1-process run's).
Also the gathering and writing helpers in one process: LoRA adapters merged, dtype cast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from ibpo_lightning.export import full_state_dict, save_hf_state
from ibpo_lightning.models import load_policy, resolve_model_path
from ibpo_lightning.models.lora import add_lora, merged_weights
from ibpo_lightning.models.sharding import full_tensors

ROOT = Path(__file__).parents[1]
TIMEOUT = 600  # a rank left waiting for a collective fails the test instead of hanging it

OVERLAY = """
trainer:
  max_steps: 2
  num_sanity_val_steps: 0
  limit_val_batches: 0
  enable_progress_bar: false
  logger: false
  callbacks:
    - class_path: tests.test_export_fsdp2.WeightDump
      init_args: {{path: {root}/trained.pt}}
    - class_path: ibpo_lightning.export.HFExport
model:
  optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 1.0e-2, weight_decay: 0.0}}}}
  memory: {{micro_batch_size: 4}}
data:
  task:
    class_path: tests.helpers.ParityTask
    init_args: {{num_train: 16, num_heldout: 4}}
  prompts_per_step: {prompts}
  steps: 2
rollout:
  engine: tests.helpers.ScriptedEngine
estimator:
  class_path: ibpo_lightning.estimators.GRPO
"""

FSDP2 = ["--trainer.strategy", "ibpo_lightning.checkpointing.AtomicModelParallelStrategy",
         "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1",
         "--trainer.devices", "2"]


class WeightDump(Callback):
    """Saves the trained policy's full weights (gathered: a collective under FSDP2) from process 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer, pl_module) -> None:
        weights = {name: t.detach().cpu().clone() for name, t in full_tensors(pl_module.policy.named_parameters())}
        if trainer.is_global_zero:
            torch.save(weights, self.path)


def _fit(root: Path, prompts: int, *extra: str) -> float:
    root.mkdir()
    overlay = root / "overlay.yaml"
    overlay.write_text(OVERLAY.format(root=root, prompts=prompts))
    command = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml", "-c", str(overlay),
               f"--trainer.default_root_dir={root}", *extra]
    start = time.monotonic()
    # its own session, so that a timeout kills every rank Lightning started, not the first alone
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"no exit after {TIMEOUT} s (a rank waiting for a collective?):\n{stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]
    return time.monotonic() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 4 scripted prompts per step: on one process, and 2 per rank on 2 FSDP2 ranks."""
    resolve_model_path("tiny-random-llama")  # built here once, not by two ranks at the same time
    root = tmp_path_factory.mktemp("export")
    _fit(root / "one", 4)
    # with a checkpoint at the end: ModelParallelStrategy writes it as a directory of shards
    seconds = _fit(root / "fsdp2", 2, *FSDP2, "--trainer.enable_checkpointing", "true")
    print(f"2-process FSDP2 run with export: {seconds:.0f} s")
    return root / "one", root / "fsdp2"


@pytest.mark.slow
def test_fsdp2_export_loads_and_holds_the_trained_weights(runs):
    one, two = runs
    export = two / "export"
    names = {p.name for p in export.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"

    reloaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(export)
    _, base_tok = load_policy("tiny-random-llama")
    assert tok.pad_token is not None and tok.chat_template == base_tok.chat_template
    trained = torch.load(two / "trained.pt")
    params = dict(reloaded.named_parameters())
    assert params.keys() == trained.keys()
    for name, value in trained.items():
        assert torch.equal(params[name], value), name  # exactly what the run trained
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight  # tied, saved once
    assert "lm_head.weight" not in load_file(export / "model.safetensors")

    # the 1-process run's export: the same training up to the order of the gradient reduction,
    # which Adam at lr 1e-2 turns into differences of up to ~1e-5 on a few near-zero gradients
    single = load_file(one / "export" / "model.safetensors")
    assert single.keys() == load_file(export / "model.safetensors").keys()
    for name, value in single.items():
        torch.testing.assert_close(params[name], value, rtol=0.0, atol=1e-4, msg=name)
    base, _ = load_policy("tiny-random-llama")
    moved = float((base.model.norm.weight - params["model.norm.weight"]).detach().abs().max())
    assert moved > 5e-3, f"the run moved the weights by {moved} only: the comparison above would be vacuous"


@pytest.mark.slow
def test_export_script_reads_the_sharded_checkpoint_of_an_fsdp2_run(runs, tmp_path):
    """scripts/export_hf.py on the run's checkpoint directory writes what HFExport wrote at the end."""
    _, two = runs
    (ckpt,) = (two / "checkpoints").iterdir()
    assert ckpt.is_dir() and (ckpt / "meta.pt").is_file()  # per-rank shards, not one file
    subprocess.run([sys.executable, "scripts/export_hf.py", str(ckpt), str(tmp_path / "out")], cwd=ROOT, check=True,
                   capture_output=True)
    ours, callback = load_file(tmp_path / "out" / "model.safetensors"), load_file(two / "export" / "model.safetensors")
    assert ours.keys() == callback.keys()
    for name, value in callback.items():
        assert torch.equal(ours[name], value), name
    (tmp_path / "not_a_checkpoint").mkdir()
    from ibpo_lightning.export import policy_from_checkpoint

    with pytest.raises(ValueError, match="not a sharded checkpoint"):
        policy_from_checkpoint(tmp_path / "not_a_checkpoint")


def test_gathered_export_merges_lora_and_casts_dtype(tmp_path):
    """The path HFExport takes for a sharded policy, here on one process (no shards to gather)."""
    policy, tok = load_policy("tiny-random-llama")
    policy = add_lora(policy, 4, 8.0, "all-linear")
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_()  # adapters that change the weights
    merged = {name: t.clone() for name, t in merged_weights(policy)}
    state = full_state_dict(policy)
    assert state.keys() == merged.keys() and not any("lora" in k or "base_layer" in k for k in state)

    save_hf_state(policy, state, tok, tmp_path / "fp32")
    save_hf_state(policy, state, tok, tmp_path / "bf16", dtype="bfloat16")  # state survives the first save
    reloaded = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.float32).named_parameters())
    for name, value in merged.items():
        assert torch.equal(reloaded[name], value), name
    base, _ = load_policy("tiny-random-llama")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(reloaded[q], base.state_dict()[q]), "the adapters were not merged"

    assert {v.dtype for v in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(policy.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="no weights"):
        save_hf_state(policy, {}, tok, tmp_path / "empty")
