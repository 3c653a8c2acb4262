"""GSPO, DAPO and REINFORCE++ (-baseline): golden values by hand and real CLI runs.

The loss-level check that GSPO's ratio is exp(mean token log-ratio) is
``tests/test_losses.py::test_sequence_ratio_is_exp_of_mean_token_log_ratio``; here it is checked
again at estimator level, through the switches of ``configs/estimators/gspo.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from ibpo_lightning.cli import run_cli
from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import DAPO, GRPO, ReinforcePP
from ibpo_lightning.estimators.functional import discounted_returns, masked_whiten, overlong_penalty
from ibpo_lightning.losses import PolicyLoss, token_logprobs
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.training import MemoryConfig
from ibpo_lightning.rollout import HFEngine, RolloutCallback
from tests.helpers import LastRollout, ParityTask, adamw, batch_of, traj

ROOT = Path(__file__).parents[1]


def overlay(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "estimators" / f"{name}.yaml").read_text())


# -- GSPO: GRPO + sequence ratio ---------------------------------------------------------------
def test_gspo_yaml_is_grpo_with_sequence_ratio_golden():
    cfg = overlay("gspo")
    assert cfg["estimator"]["class_path"] == "ibpo_lightning.estimators.GRPO"
    loss_fn = PolicyLoss(**cfg["model"]["loss"])
    batch = batch_of([traj(0, 1.0), traj(0, 0.0)])  # 2 prompt tokens + 3 response tokens each
    adv, w = GRPO(**cfg["estimator"]["init_args"]).assign(batch)
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # R - mean over the unbiased std of [1, 0]
    assert adv[:, 2].tolist() == pytest.approx([a, -a])
    old = torch.zeros(2, 5)
    # prompt positions carry log-ratios too: they must not enter the sequence mean
    logp = torch.tensor([[5.0, 5.0, 1e-4, 2e-4, 3e-4], [5.0, 5.0, -1e-3, -2e-3, 0.0]])
    loss, stats = loss_fn(logp, old, adv, w, loss_fn.normaliser(w))
    s0, s1 = math.exp(2e-4), math.exp(-1e-3)  # exp of the mean response log-ratio
    assert stats.ratio_max == pytest.approx(s0, rel=1e-6) and stats.ratio_min == pytest.approx(s1, rel=1e-6)
    # row 0: s0 = 1.0002 lies inside [1 - 3e-4, 1 + 4e-4]; row 1 (A < 0) is clipped at 1 - 3e-4
    # (float32 sums of two ~0.707 terms: compare to 3e-7; unclipped row 1 would differ by 2.5e-4)
    assert loss.item() == pytest.approx((-a * s0 + a * (1 - 3e-4)) / 2, abs=3e-7)
    assert stats.clip_fraction == pytest.approx(3 / 6)


# -- DAPO --------------------------------------------------------------------------------------
def test_overlong_penalty_golden():
    lengths = torch.tensor([10, 16, 17, 18, 20, 25])
    assert overlong_penalty(lengths, 20, 4).tolist() == pytest.approx([0, 0, -0.25, -0.5, -1, -1])
    assert overlong_penalty(lengths, 20, 4, factor=0.5).tolist() == pytest.approx([0, 0, -0.125, -0.25, -0.5, -0.5])


def test_dapo_assign_golden_with_overlong_shaping_and_filtering():
    rows = [traj(0, 1.0, (5, 6, 7)), traj(0, 1.0, (5,) * 6), traj(0, 0.0, (5, 6, 7)),
            traj(0, 0.0, (5,) * 8, finished=False), traj(1, 1.0), traj(1, 1.0)]
    batch = batch_of(rows)
    est = DAPO(max_length=8, overlong_buffer=4)  # penalty zone: lengths 5..8
    adv, w = est.assign(batch)
    shaped = torch.tensor([1.0, 1.0 - 0.5, 0.0, -1.0])  # length 6: (4 - 6) / 4; truncated at 8: -1
    expected = (shaped - shaped.mean()) / (shaped.std() + 1e-6)
    assert [float(adv[i, 2]) for i in range(4)] == pytest.approx(expected.tolist(), abs=1e-6)
    assert torch.count_nonzero(adv[4:]) == 0  # uniform group (equal lengths): no advantage
    assert torch.equal(w, batch.response_mask)  # filtering off: the truncated row is trained on
    adv_f, w_f = DAPO(max_length=8, overlong_buffer=4, overlong_filtering=True).assign(batch)
    assert torch.count_nonzero(w_f[3]) == 0 and torch.count_nonzero(adv_f[3]) == 0
    assert torch.allclose(adv_f[:3], adv[:3])  # it stays in the group statistics
    assert batch.stats["dapo/filtered_truncated"] == 1.0
    # buffer as a fraction of the limit: 0.25 * 8 = 2 tokens, so length 6 is not penalised
    assert DAPO(max_length=8, overlong_buffer_fraction=0.25).buffer_tokens() == 2


@pytest.mark.parametrize("bad", [{"overlong_buffer": 0}, {"overlong_buffer_fraction": 0.0}])
def test_dapo_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        DAPO(**bad)


def tiny_setup(tmp_path, estimator, steps=1):
    """A hand-built trainer's run; the module, and the last step's batch."""
    module = PolicyModule(model="tiny-random-llama", optimizer=adamw(1e-3), memory=MemoryConfig(micro_batch_size=4))
    data = RLDataModule(ParityTask(num_train=32, num_heldout=4), prompts_per_step=2, steps=steps)
    last = LastRollout()
    trainer = Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=tmp_path,
                      callbacks=[RolloutCallback(HFEngine(), group_size=4, max_new_tokens=6), estimator, last])
    trainer.fit(module, data)
    return module, last.batch


# -- REINFORCE++ -------------------------------------------------------------------------------
def test_masked_whiten_golden():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    std = math.sqrt(5.0 / 3.0)  # mean 2.5, squared deviations sum to 5, over n - 1 = 3
    expected = [[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]]
    assert torch.allclose(masked_whiten(values, mask), torch.tensor(expected), atol=1e-6)
    scaled = masked_whiten(values, mask, shift_mean=False)
    assert torch.allclose(scaled, torch.tensor([[1 / std, 2 / std, 3 / std], [4 / std, 0.0, 0.0]]), atol=1e-6)


def test_discounted_returns_golden():
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 0.0, 2.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    expected = [[0.25, 0.5, 1.0, 0.0], [0.0, 1.0, 2.0, 0.0]]  # masked rewards never count
    assert discounted_returns(r, mask, gamma=0.5).tolist() == expected


def test_reinforce_pp_whitens_over_the_whole_batch_golden():
    batch = batch_of([traj(0, 1.0), traj(0, 0.0), traj(1, 1.0), traj(1, 1.0)])
    adv, w = ReinforcePP().assign(batch)
    # token returns: R on every token (gamma 1); 12 tokens, 9 of them 1: mean 0.75,
    # unbiased variance (9 * 0.25^2 + 3 * 0.75^2) / 11
    std = math.sqrt((9 * 0.0625 + 3 * 0.5625) / 11)
    assert adv[:, 2].tolist() == pytest.approx([0.25 / std, -0.75 / std, 0.25 / std, 0.25 / std], rel=1e-5)
    assert torch.count_nonzero(adv[2:]) == 6  # not group-relative: a uniform group keeps credit
    assert torch.equal(w, batch.response_mask)
    uniform = batch_of([traj(0, 1.0), traj(0, 1.0), traj(1, 1.0)])
    assert torch.count_nonzero(ReinforcePP().assign(uniform)[0]) == 0  # a uniform batch has none


def test_reinforce_pp_baseline_golden_and_uniform_groups():
    batch = batch_of([traj(0, 1.0), traj(0, 0.0), traj(1, 1.0), traj(1, 1.0)])
    adv, _ = ReinforcePP(group_baseline=True).assign(batch)
    std = math.sqrt(6 * 0.25 / 11)  # centred: +-0.5 on 6 tokens, 0 on 6; mean 0
    assert adv[:, 2].tolist() == pytest.approx([0.5 / std, -0.5 / std, 0.0, 0.0], rel=1e-5)
    # unequal lengths: the token-weighted batch mean is 1/12, so re-centring shifts a uniform group
    skewed = batch_of([traj(0, 1.0, (5, 6, 7, 8)), traj(0, 0.0, (5, 6)), traj(1, 1.0), traj(1, 1.0)])
    shifted, _ = ReinforcePP(group_baseline=True).assign(skewed)
    var = (4 * (0.5 - 1 / 12) ** 2 + 2 * (-0.5 - 1 / 12) ** 2 + 6 * (1 / 12) ** 2) / 11
    assert shifted[2, 2].item() == pytest.approx(-(1 / 12) / math.sqrt(var), rel=1e-5)
    exact, _ = ReinforcePP(group_baseline=True, shift_mean=False).assign(skewed)
    assert torch.count_nonzero(exact[2:]) == 0 and exact[0, 2] > 0 > exact[1, 2]


def test_reinforce_pp_kl_in_reward_golden():
    batch = batch_of([traj(0, 1.0), traj(0, 0.0)])  # engine log-probs are -1 on every response token
    est = ReinforcePP(kl_coef=0.1)
    with pytest.raises(ValueError, match="reference log-probs"):
        est.assign(batch)
    batch.ref_logprobs = torch.full((2, 5), -1.5)  # k1 KL = -1 - (-1.5) = 0.5 per token
    adv, _ = est.assign(batch)
    # r = -0.05 per token, +R on the last: returns (1 - 0.05 * k) and (-0.05 * k), k = 3, 2, 1
    returns = [0.85, 0.9, 0.95, -0.15, -0.1, -0.05]
    mean = sum(returns) / 6
    std = math.sqrt(sum((x - mean) ** 2 for x in returns) / 5)
    assert adv[:, 2:].flatten().tolist() == pytest.approx([(x - mean) / std for x in returns], rel=1e-4)
    assert batch.stats["reinforce_pp/kl"] == pytest.approx(0.5)


def test_reference_is_built_only_when_something_needs_it_and_scored_by_the_scorer(tmp_path):
    module, batch = tiny_setup(tmp_path / "kl", ReinforcePP(kl_coef=0.01))
    assert module.needs_reference and module.reference is not None
    rows = list(range(len(batch)))
    scorer = module.rl_step.scorer
    scored = scorer.full(batch, rows, "reference")
    plain, _ = token_logprobs(module.reference, batch.input_ids, batch.attention_mask, batch.response_mask,
                              share_prompts=False)
    assert torch.allclose(scored, plain, atol=1e-5) and torch.count_nonzero(scored * batch.response_mask) > 0
    assert torch.allclose(scored * batch.response_mask, batch.ref_logprobs, atol=1e-5)  # what the step filled
    assert not torch.allclose(scored, scorer.full(batch, rows, "policy"), atol=1e-4), "the policy moved"
    free, _ = tiny_setup(tmp_path / "free", ReinforcePP(kl_coef=0.0))
    assert not free.needs_reference and free.reference is None
    with pytest.raises(ValueError, match="no reference model"):
        free.rl_step.scorer.full(batch, rows, "reference")


def test_reinforce_pp_allows_groups_of_one_but_not_its_baseline_variant():
    assert ReinforcePP().group_relative is False and ReinforcePP(group_baseline=True).group_relative is True


# -- each overlay through the real CLI, 2 steps on configs/tiny.yaml ----------------------------
@pytest.mark.parametrize(("name", "stat"), [("gspo", None), ("dapo", "dynamic/groups_drawn"),
                                            ("reinforce_pp", "reinforce_pp/kl"),
                                            ("reinforce_pp_baseline", "reinforce_pp/kl")])
def test_two_step_fit_through_the_cli(tmp_path, name, stat):
    cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / f"configs/estimators/{name}.yaml"),
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                   "--trainer.logger=false", "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"])
    assert cli.model.policy_version == 2
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/reward_mean"])
    if stat is not None:
        assert stat in metrics
    if name == "gspo":
        assert cli.model.loss.ratio == "sequence" and cli.model.update_config.mini_batches == 4


def test_dapo_fit_through_the_cli_keeps_groups_with_variance(tmp_path):
    cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / "configs/estimators/dapo.yaml"),
                   "--data.task=tests.helpers.ParityTask", f"--trainer.default_root_dir={tmp_path}",
                   "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                   "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0"])
    metrics = cli.trainer.callback_metrics
    assert cli.model.policy_version == 2
    assert float(metrics["dynamic/groups_kept"]) == 2.0
    assert float(metrics["dynamic/groups_drawn"]) >= 2.0
    assert float(metrics["train/adv_zero_fraction"]) < 1.0
