"""Policy versions, allowed lag with truncated importance sampling, and the trainer/engine log-prob
mismatch: with the HF engine (shares the trainer's module) and the real vLLM engine."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import Trainer

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import GRPO
from ibpo_lightning.losses import truncated_importance_weight
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.training import MemoryConfig, UpdateConfig
from ibpo_lightning.step import StaleEngineError
from ibpo_lightning.rollout import HFEngine, RolloutCallback, VLLMEngine, vllm_available
from tests.helpers import ParityTask, adamw


def run(tmp_path, engine, steps=3, sync_every=1, max_policy_lag=0, no_sync=False, model="tiny-random-llama"):
    module = PolicyModule(model=model, optimizer=adamw(1e-2), memory=MemoryConfig(micro_batch_size=8),
                          update=UpdateConfig(max_policy_lag=max_policy_lag))
    data = RLDataModule(ParityTask(num_train=32, num_heldout=4), prompts_per_step=2, steps=steps)
    rollout = RolloutCallback(engine, group_size=4, max_new_tokens=6, sync_every=sync_every)
    if no_sync:
        rollout.on_train_batch_end = lambda *args, **kwargs: None
    seen = []

    class Record(GRPO):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((outputs["rollout"].policy_version, pl_module.policy_version - 1))

    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path, callbacks=[rollout, Record()])
    trainer.fit(module, data)
    return trainer, seen


def test_truncated_importance_weight_golden():
    behaviour = torch.tensor([[-1.0, -2.0, -0.5]])
    engine = torch.tensor([[-1.0, -1.0, -2.0]])
    expected = torch.tensor([[1.0, math.exp(-1.0), 2.0]])  # exp(1.5) = 4.48 is capped at 2
    assert torch.allclose(truncated_importance_weight(behaviour, engine, cap=2.0), expected)


def test_hf_engine_batches_are_never_stale_and_match_the_trainer(tmp_path):
    trainer, seen = run(tmp_path, HFEngine(), sync_every=3)  # sharing the module: no lag to allow
    assert seen == [(0, 0), (1, 1), (2, 2)]
    metrics = trainer.callback_metrics
    assert float(metrics["rollout/policy_lag"]) == 0.0
    assert float(metrics["rollout/logprob_diff_mean"]) < 1e-4  # same module, same fp32 numerics


def test_sync_every_beyond_the_allowed_lag_is_refused_at_start(tmp_path):
    if not vllm_available():
        pytest.skip("vLLM is not installed")
    with pytest.raises(ValueError, match=r"rollout.sync_every=2 .* model.update.max_policy_lag=0"):
        run(tmp_path, VLLMEngine(max_model_len=128), sync_every=2)


@pytest.mark.parametrize("kwargs", [{"max_policy_lag": -1}, {"tis_cap": 0.0}, {"tis_cap": -1.0}])
def test_negative_lag_or_cap_is_refused(kwargs):
    with pytest.raises(ValueError, match=r"model.update.max_policy_lag must be >= 0 and model.update.tis_cap > 0"):
        UpdateConfig(**kwargs)


needs_vllm = pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed")
SMOLLM = "smollm2-135m-instruct"  # vLLM's CPU attention has no kernel for the tiny model's head_dim 16


@needs_vllm
@pytest.mark.slow
def test_vllm_training_syncs_every_step_and_logs_a_small_mismatch(tmp_path):
    trainer, seen = run(tmp_path, VLLMEngine(max_model_len=128), model=SMOLLM)
    assert seen == [(0, 0), (1, 1), (2, 2)]
    metrics = trainer.callback_metrics
    assert float(metrics["rollout/logprob_diff_max"]) < 1e-2
    assert "time/sync" in metrics


@needs_vllm
@pytest.mark.slow
def test_vllm_without_sync_is_refused_at_the_next_step(tmp_path):
    with pytest.raises(StaleEngineError, match="engine holds policy version 0, but the policy is at 1"):
        run(tmp_path, VLLMEngine(max_model_len=128), no_sync=True, model=SMOLLM)


@needs_vllm
@pytest.mark.slow
def test_vllm_with_allowed_lag_trains_on_stale_batches(tmp_path):
    trainer, seen = run(tmp_path, VLLMEngine(max_model_len=128), steps=4, sync_every=2, max_policy_lag=1, model=SMOLLM)
    assert seen == [(0, 0), (0, 1), (2, 2), (2, 3)]
    assert float(trainer.callback_metrics["rollout/policy_lag"]) == 1.0


def test_lag_correction_weights_advantages_by_the_truncated_ratio():
    """Engine log-probs log(2) below the trainer's: each token's ratio is 2 (= the cap), so the
    corrected update's gradient is exactly twice the uncorrected one (the loss is linear in A)."""
    from ibpo_lightning.losses import PolicyLoss
    from ibpo_lightning.models import load_policy
    from ibpo_lightning.models.policy import with_scoring
    from ibpo_lightning.training import PolicyUpdate, Scorer
    from tests.helpers import batch_of, traj

    model, _ = load_policy("tiny-random-llama")
    scorer = Scorer(with_scoring(model.train()), None, temperature=1.0, micro_batch_size=8)
    batch = batch_of([traj(0, 1.0, (5, 6, 7)), traj(0, 0.0, (8, 9)), traj(1, 1.0, (4, 4, 4)), traj(1, 0.0)])
    batch.loss_weights = batch.response_mask.clone()
    batch.advantages = batch.response_mask * torch.tensor([1.0, -1.0, 0.5, -0.5]).unsqueeze(-1)
    rows = list(range(len(batch)))
    batch.engine_logprobs = (scorer.full(batch, rows) - math.log(2.0)) * batch.response_mask
    norms = {}
    for corrected in (False, True):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # measure, do not move
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        update = PolicyUpdate(PolicyLoss(), scorer, lambda loss: loss.backward(), max_grad_norm=None,
                              tis_cap=2.0, lag_corrected=corrected)
        norms[corrected] = update.run(batch, opt, sched, lag=1)["train/grad_norm"]
    assert norms[True] == pytest.approx(2 * norms[False], rel=1e-4) and norms[False] > 0
