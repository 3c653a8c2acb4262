"""Per-group gradient noise: against a brute-force computation from stacked gradients."""

from __future__ import annotations

import pytest
import torch

from ibpo_lightning.diagnostics import group_gradient_noise as _noise
from ibpo_lightning.losses import PolicyLoss
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.training import Scorer
from tests.helpers import batch_of, traj


def group_gradient_noise(module, batch, rows):
    return _noise(Scorer(module.policy, None, temperature=1.0, micro_batch_size=16), module.loss, batch, rows)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    m = PolicyModule(model="tiny-random-llama", loss=PolicyLoss(ratio="none", aggregation="token_mean"))
    m.configure_model()
    return m


def _batch(advantages):
    """Groups of 2 rows with distinct token ids; ``advantages`` one scalar per row."""
    rows = [traj(i // 2, 0.0, response=(5 + i, 7 + 2 * i, 11 + i), prompt=(1, 3 + i)) for i in range(len(advantages))]
    batch = batch_of(rows)
    batch.loss_weights = batch.response_mask.clone()
    batch.advantages = batch.response_mask * torch.tensor(advantages).unsqueeze(-1)
    return batch


def _brute_force(module, batch):
    """Each group's gradient of -sum(A * log p) / (its token count), from full-vocabulary logits."""
    params = [p for p in module.policy.parameters() if p.requires_grad]
    grads = []
    for group in batch.groups_of(list(range(len(batch)))):
        ids, mask = batch.input_ids[group], batch.attention_mask[group]
        logits = module.policy(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        w, adv = batch.loss_weights[group, 1:], batch.advantages[group, 1:]
        loss = -(adv * logp * w).sum() / w.sum()
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1) for x, p in zip(g, params)]))
    g = torch.stack(grads).double()
    mean = g.mean(0)
    noise = float(((g - mean) ** 2).sum(-1).sum() / (len(g) - 1))
    return float(mean @ mean), noise


def test_matches_stacked_per_group_gradients(module):
    batch = _batch([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])  # 3 groups
    got = group_gradient_noise(module, batch, list(range(len(batch))))
    signal, noise = _brute_force(module, batch)
    assert got["grad/signal"] == pytest.approx(signal, rel=1e-4)
    assert got["grad/noise"] == pytest.approx(noise, rel=1e-4)
    assert got["grad/noise_to_signal"] == pytest.approx(noise / signal, rel=1e-4)
    assert got["grad/snr"] == pytest.approx(3 * signal / noise, rel=1e-4)
    assert all(p.grad is None for p in module.policy.parameters())


def test_a_zero_advantage_group_counts_as_a_zero_gradient(module):
    with_zero = _batch([1.0, -1.0, 0.5, -0.5, 0.0, 0.0])
    got = group_gradient_noise(module, with_zero, list(range(6)))
    signal, noise = _brute_force(module, with_zero)
    assert got["grad/signal"] == pytest.approx(signal, rel=1e-4) and got["grad/noise"] == pytest.approx(noise, rel=1e-4)
    # dropping the zero group raises the mean's norm by 3/2, so the signal by 9/4
    without = group_gradient_noise(module, _batch([1.0, -1.0, 0.5, -0.5]), list(range(4)))
    assert got["grad/signal"] == pytest.approx(without["grad/signal"] * 4 / 9, rel=1e-4)


def test_scaling_every_advantage_leaves_the_ratio_unchanged(module):
    one = group_gradient_noise(module, _batch([1.0, -1.0, 0.5, -0.5, 2.0, 0.0]), list(range(6)))
    ten = group_gradient_noise(module, _batch([10.0, -10.0, 5.0, -5.0, 20.0, 0.0]), list(range(6)))
    assert ten["grad/noise_to_signal"] == pytest.approx(one["grad/noise_to_signal"], rel=1e-4)
    assert ten["grad/signal"] == pytest.approx(100 * one["grad/signal"], rel=1e-4)
