"""The entropy bonus: its gradient through the chunked head equals autograd's, the loss term and the
adaptive coefficient by hand, and real runs (fixed and adaptive, chunked head) under FSDP2 and DDP
on two processes matching one process."""

from __future__ import annotations

import pytest
import torch

from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.losses.chunked_head import head_logprobs
from tests.test_strategies import STEPS, STRATEGIES, TOLERANCE, _fit


def test_chunked_head_entropy_gradient_equals_autograd():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 11)
    hidden = torch.randn(7, 6, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    a, b = torch.randn(7), torch.randn(7)
    grads = []
    for chunk in (None, 3):
        head.zero_grad()
        hidden.grad = None
        logp, entropy = head_logprobs(head, hidden, targets, 0.7, chunk, with_entropy=True, entropy_grad=True)
        ((a * logp).sum() + (b * entropy).sum()).backward()
        grads.append((hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone(), entropy.detach()))
    for plain, chunked in zip(*grads):
        assert torch.allclose(plain, chunked, atol=1e-5), (plain - chunked).abs().max()
    _, detached = head_logprobs(head, hidden, targets, 0.7, 3, with_entropy=True)
    assert not detached.requires_grad  # a diagnostic only, unless asked for


def test_entropy_bonus_in_the_loss_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    entropy = torch.tensor([[1.0, 2.0]], requires_grad=True)
    weights, adv = torch.ones(1, 2), torch.zeros(1, 2)
    loss = PolicyLoss(ratio="none", aggregation="token_mean", entropy_coef=0.1)
    value, _ = loss(logp, logp, adv, weights, 2.0, entropy=entropy)
    assert float(value.detach()) == pytest.approx(-0.1 * (1.0 + 2.0) / 2.0)  # A = 0: only the bonus
    value.backward()
    assert entropy.grad[0].tolist() == pytest.approx([-0.05, -0.05])
    none, _ = PolicyLoss(ratio="none", aggregation="token_mean")(logp, logp, adv, weights, 2.0, entropy=entropy)
    assert float(none.detach()) == 0.0


def test_adaptive_coefficient_steps_toward_the_target_within_bounds():
    loss = PolicyLoss(entropy_coef=0.0, target_entropy=0.5, entropy_coef_step=0.01, entropy_coef_max=0.02)
    assert loss.entropy_bonus
    for expected in (0.01, 0.02, 0.02):  # under the target: up, then held at the bound
        loss.adapt(0.3)
        assert loss.entropy_coef_now == pytest.approx(expected)
    loss.adapt(0.9)
    assert loss.entropy_coef_now == pytest.approx(0.01)
    restored = PolicyLoss(target_entropy=0.5)
    restored.load_state_dict(loss.state_dict())
    assert restored.entropy_coef_now == pytest.approx(0.01)
    fixed = PolicyLoss(entropy_coef=0.01)
    fixed.adapt(0.0)
    assert fixed.entropy_coef_now == 0.01 and not PolicyLoss().entropy_bonus
    with pytest.raises(ValueError, match="target_entropy"):
        PolicyLoss(target_entropy=0.0)


BONUS = {"fixed": ["--model.loss.entropy_coef", "0.05"],
         "adaptive": ["--model.loss.target_entropy", "50.0", "--model.loss.entropy_coef_step", "0.02"]}


@pytest.mark.parametrize("kind", sorted(BONUS))
def test_entropy_bonus_under_fsdp2_and_ddp_matches_one_process(tmp_path, kind):
    chunked = ["--model.memory.logprob_chunk_tokens", "2"]
    one = _fit(tmp_path / "one", 4, *BONUS[kind], *chunked)
    plain = _fit(tmp_path / "plain", 4, *chunked)
    *steps_one, _ = one
    assert steps_one[-1]["weights"] != plain[STEPS - 1]["weights"], "the bonus changed nothing"
    if kind == "adaptive":  # entropy under the target: +0.02 per update (2 a step, the mean is logged)
        assert [r["entropy_coef"] for r in steps_one] == pytest.approx([0.01, 0.045, 0.05])  # held at the max
    # on 2 processes the adaptive bonus only: it runs the fixed one's code path (a coefficient > 0
    # with the entropy's gradient) and moves the coefficient on top
    for strategy in ("fsdp2-chunked-head", "ddp") if kind == "adaptive" else ():
        extra = STRATEGIES[strategy] + ([] if "chunked" in strategy else chunked)
        *steps_two, _ = _fit(tmp_path / strategy, 2, *BONUS[kind], *extra)
        loss_abs, grad_rel, weights_rel = TOLERANCE[strategy]
        for a, b in zip(steps_one, steps_two):
            assert b["loss"] == pytest.approx(a["loss"], abs=loss_abs)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=grad_rel)
            assert b["entropy_coef"] == pytest.approx(a["entropy_coef"])
            assert b["weights"] == pytest.approx(a["weights"], rel=weights_rel)
