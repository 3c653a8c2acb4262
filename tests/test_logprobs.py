"""Token log-probs: the shared-prompt path equals a plain full forward pass, values and gradients."""

from __future__ import annotations

import pytest
import torch

from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import load_policy


def reference_logprobs(model, ids, attn, score, temperature):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / temperature
    lp = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0)) * score


def group_batch(seed=0):
    """Two prompts of different lengths, three responses each, right-padded; one unique row."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(10, 500, (7,), generator=g).tolist(), torch.randint(10, 500, (4,), generator=g).tolist()]
    rows = []
    for k, p in enumerate(prompts + [prompts[0][:5]]):
        for r in range(3 if k < 2 else 1):
            rows.append((p, torch.randint(10, 500, (2 + r + k,), generator=g).tolist()))
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn, score = torch.zeros_like(ids), torch.zeros(len(rows), width)
    for i, (p, r) in enumerate(rows):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = 1
        score[i, len(p) : len(p) + len(r)] = 1
    return ids, attn, score


@pytest.mark.parametrize("name", ["tiny-random-llama", pytest.param("smollm2-135m-instruct", marks=pytest.mark.slow)])
def test_shared_prompt_logprobs_and_gradients_equal_plain_forward(name):
    model, _ = load_policy(name)
    ids, attn, score = group_batch()
    weights = torch.rand(score.shape, generator=torch.Generator().manual_seed(1)) * score
    got, entropy = token_logprobs(model, ids, attn, score, temperature=0.7, with_entropy=True)
    (got * weights).sum().backward()
    got_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    expected = reference_logprobs(model, ids, attn, score, 0.7)
    (expected * weights).sum().backward()
    assert torch.allclose(got, expected, atol=2e-5)
    assert torch.all(entropy[score == 0] == 0) and torch.all(entropy[score > 0] > 0)
    for g_got, p in zip(got_grads, model.parameters()):
        assert (g_got - p.grad).norm() <= 1e-3 * p.grad.norm() + 1e-8  # fp32 summation order differs
