"""Golden values of the policy-gradient loss, computed by hand."""

import math

import pytest
import torch

from ibpo_lightning.losses import PolicyLoss, kl_penalty

# two sequences of three positions; the last token of row 1 is padding
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -1.0, 0.0]])
OLD = torch.tensor([[-1.2, -2.0, -1.0], [-1.0, -1.0, 0.0]])
W = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])


def test_token_ratio_clip_and_seq_mean_token_mean():
    loss_fn = PolicyLoss(ratio="token", eps_low=0.2, eps_high=0.2, aggregation="seq_mean_token_mean")
    loss, stats = loss_fn(LOGP, OLD, ADV, W, loss_fn.normaliser(W))
    # row 0 ratios e^0.2=1.2214 (clipped to 1.2 for A>0), 1, e^0.5=1.6487 (clipped to 1.2)
    row0 = -(1.2 + 1.0 + 1.2) / 3
    # row 1 ratios e^-0.5=0.6065 (A<0: max(-r A, -clip(r) A) = max(1.2131, 1.6) = 1.6), 1 -> 2
    row1 = (1.6 + 2.0) / 2
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-5)
    assert stats.clip_fraction == pytest.approx(3 / 5)
    assert stats.ratio_max == pytest.approx(math.exp(0.5), rel=1e-5)


def test_token_mean_aggregation_divides_by_all_tokens():
    loss_fn = PolicyLoss(ratio="token", aggregation="token_mean")
    loss, _ = loss_fn(LOGP, OLD, ADV, W, loss_fn.normaliser(W))
    assert loss.item() == pytest.approx((-(1.2 + 1.0 + 1.2) + 1.6 + 2.0) / 5, abs=1e-5)


def test_token_sum_norm_divides_by_constant_per_sequence():
    loss_fn = PolicyLoss(ratio="token", aggregation="token_sum_norm", norm_constant=10.0)
    loss, _ = loss_fn(LOGP, OLD, ADV, W, loss_fn.normaliser(W))
    assert loss.item() == pytest.approx((-(1.2 + 1.0 + 1.2) + 1.6 + 2.0) / (2 * 10.0), abs=1e-5)


def test_sequence_ratio_is_exp_of_mean_token_log_ratio():
    logp = LOGP.clone().requires_grad_(True)
    loss_fn = PolicyLoss(ratio="sequence", eps_low=10.0, eps_high=10.0)  # no clipping
    loss, stats = loss_fn(logp, OLD, ADV, W, loss_fn.normaliser(W))
    s0 = math.exp((0.2 + 0.0 + 0.5) / 3)
    s1 = math.exp((-0.5 + 0.0) / 2)
    assert stats.ratio_max == pytest.approx(s0, rel=1e-5)
    assert stats.ratio_min == pytest.approx(s1, rel=1e-5)
    assert loss.item() == pytest.approx((-s0 + 2 * s1) / 2, rel=1e-5)


def test_no_ratio_is_reinforce_on_logprobs():
    logp = LOGP.clone().requires_grad_(True)
    loss_fn = PolicyLoss(ratio="none")
    loss, _ = loss_fn(logp, OLD, ADV, W, loss_fn.normaliser(W))
    assert loss.item() == pytest.approx((-(-1.0 - 2.0 - 0.5) / 3 + 2 * (-1.5 - 1.0) / 2) / 2, abs=1e-6)
    loss.backward()
    expected = torch.tensor([[-1 / 6, -1 / 6, -1 / 6], [0.5, 0.5, 0.0]])
    assert torch.allclose(logp.grad, expected)


def test_dual_clip_bounds_negative_advantage_loss():
    logp, old = torch.tensor([[2.0]]), torch.tensor([[0.0]])  # ratio e^2 = 7.39
    adv, w = torch.tensor([[-1.0]]), torch.ones(1, 1)
    plain = PolicyLoss(eps_low=0.2, eps_high=0.2)
    dual = PolicyLoss(eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    assert plain(logp, old, adv, w, 1.0)[0].item() == pytest.approx(math.exp(2.0), rel=1e-5)
    assert dual(logp, old, adv, w, 1.0)[0].item() == pytest.approx(3.0)


def test_kl_estimators_and_kl_term():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.125)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) + 0.5 - 1.0)
    loss_fn = PolicyLoss(ratio="none", kl_coef=0.1, kl_estimator="k1")
    lp, rf = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    loss, stats = loss_fn(lp, lp, torch.zeros(1, 2), torch.ones(1, 2), 1.0, rf)
    assert loss.item() == pytest.approx(0.1 * (0.5 + 0.0) / 2)
    assert stats.kl == pytest.approx(0.25)


def test_micro_batches_accumulate_to_the_full_batch_loss():
    loss_fn = PolicyLoss(aggregation="token_mean")
    norm = loss_fn.normaliser(W)
    whole, _ = loss_fn(LOGP, OLD, ADV, W, norm)
    parts = sum(loss_fn(LOGP[i : i + 1], OLD[i : i + 1], ADV[i : i + 1], W[i : i + 1], norm)[0] for i in range(2))
    assert whole.item() == pytest.approx(parts.item())


@pytest.mark.parametrize("bad", [{"ratio": "seq"}, {"aggregation": "mean"}, {"kl_estimator": "k4"}, {"dual_clip": 0.5}])
def test_bad_switches_are_rejected(bad):
    with pytest.raises(ValueError):
        PolicyLoss(**bad)
