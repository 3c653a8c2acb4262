"""One precision switch: the automatic choice, the engine following the trainer, the bf16 path
through the CLI, and the fp32 attention that keeps CPU bf16 training fast."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from ibpo_lightning import precision
from ibpo_lightning.cli import run_cli
from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import attention, load_policy
from ibpo_lightning.rollout import HFEngine

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("flags, expected", [({"amx_bf16", "avx512f"}, "bf16-mixed"),
                                             ({"avx512_bf16"}, "bf16-mixed"),
                                             ({"avx2", "avx512f"}, "32-true")])
def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    resolved, why = precision.resolve_precision("auto")
    assert resolved == expected and why.startswith("auto: ")
    assert ("no native bf16" in why) == (expected == "32-true")


def test_explicit_precision_passes_through_and_maps_to_a_compute_dtype():
    assert precision.resolve_precision("32-true") == ("32-true", "as configured")
    assert precision.resolve_precision("bf16-mixed")[0] == "bf16-mixed"
    assert precision.compute_dtype("bf16-mixed") == precision.compute_dtype("bf16-true") == torch.bfloat16
    assert precision.compute_dtype("16-mixed") == torch.float16
    assert precision.compute_dtype("32-true") == precision.compute_dtype(32) == torch.float32


def test_hf_engine_computes_in_the_trainer_dtype():
    model, tok = load_policy("tiny-random-llama")
    engine = HFEngine()
    engine.bind(model, tok, torch.bfloat16)
    assert engine.autocast == torch.bfloat16
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    engine.generate([[1, 2, 3]], 2, max_new_tokens=3, temperature=1.0, seed=0)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    engine.bind(model, tok, torch.float32)
    assert engine.autocast is None


def test_cpu_attention_runs_half_precision_in_fp32_and_returns_its_dtype(monkeypatch):
    seen = []
    real = attention.sdpa_attention_forward

    def spy(module, q, k, v, mask, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return real(module, q, k, v, mask, **kw)

    monkeypatch.setattr(attention, "sdpa_attention_forward", spy)
    model, _ = load_policy("tiny-random-llama")
    assert model.config._attn_implementation == attention.NAME
    ids = torch.randint(3, 100, (2, 7))
    outputs = []
    hook = model.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, i, o: outputs.append(i[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids)
    fp32 = (torch.float32, torch.float32, torch.float32, False)
    assert seen and all(s == fp32 for s in seen), seen
    assert outputs == [torch.bfloat16]  # what plain SDPA under autocast would hand on
    seen.clear()
    model(input_ids=ids)  # fp32 goes through untouched
    assert seen and all(s == fp32 for s in seen)
    hook.remove()


def test_fp32_attention_matches_plain_sdpa_in_values_and_gradients():
    model, _ = load_policy("tiny-random-llama")
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 12))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0  # a padded row: the mask reaches the attention
    score = torch.zeros(ids.shape)
    score[:, 6:] = 1

    def run(implementation, half=True):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            lp, _ = token_logprobs(model, ids, attn, score)
        (lp * score).sum().backward()
        return lp.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    exact_lp, exact_grad = run("sdpa", half=False)
    assert torch.equal(run(attention.NAME, half=False)[0], exact_lp)  # fp32: the same function
    plain_lp, plain_grad = run("sdpa")
    fp32_lp, fp32_grad = run(attention.NAME)
    # bf16 autocast either way: fp32 attention is no further from the fp32 model than bf16 attention
    lp_err = [float((lp - exact_lp).abs().max()) for lp in (plain_lp, fp32_lp)]
    grad_err = [float((g - exact_grad).norm() / exact_grad.norm()) for g in (plain_grad, fp32_grad)]
    assert lp_err[1] <= lp_err[0] * 1.1 and lp_err[1] < 0.2, lp_err
    assert grad_err[1] <= grad_err[0] * 1.1 and grad_err[1] < 0.05, grad_err


def test_bf16_through_the_cli_trains_and_monitors_the_mismatch(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"amx_bf16"})  # the same path on any CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO):
        cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "--trainer.precision=auto",
                       f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                       "--trainer.logger=false", "--estimator=ibpo_lightning.estimators.GRPO",
                       "--data.task=tests.helpers.ParityTask"])
    assert "precision: bf16-mixed (auto: this CPU has native bf16 (amx_bf16))" in caplog.text
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.trainer.lightning_module.policy_version == 2
    assert next(cli.model.policy.parameters()).dtype == torch.float32  # fp32 master weights
    assert cli.model.rl_step.update.lag_corrected  # model.update.tis: None turns the importance correction on in bf16
    callback = next(c for c in cli.trainer.callbacks if hasattr(c, "sampler"))
    assert callback.engine.autocast == torch.bfloat16
    metrics = cli.trainer.callback_metrics
    assert float(metrics["train/empty_steps"]) == 0 and torch.isfinite(metrics["train/pg_loss"])
    # engine (incremental bf16 decoding) and trainer (one bf16 forward) see nearly the same numbers
    assert 0.0 <= float(metrics["rollout/logprob_diff_mean"]) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_bf16_trains_on_two_processes(tmp_path, strategy):
    """bf16-mixed with the engine in bf16 under DDP and FSDP2 (2 processes over gloo), end to end."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml",
           "-c", f"configs/strategies/{strategy}.yaml", "--trainer.accelerator=cpu", "--trainer.precision=bf16-mixed",
           "--data.task=tests.helpers.ParityTask", "--estimator=ibpo_lightning.estimators.GRPO",
           f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "the rollout engine samples in bfloat16" in out and "held-out accuracy after 2 steps" in out
