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


def _saved_bytes(fn, params=()) -> int:
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs (each storage
    once; the parameters', which exist anyway, left out)."""
    seen: dict[int, int] = {}
    existing = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        if t.untyped_storage().data_ptr() not in existing:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("share_prompts", [True, False])
def test_chunked_head_equals_the_plain_head_in_values_entropy_and_gradients(share_prompts):
    model, _ = load_policy("tiny-random-llama")
    ids, attn, score = group_batch()
    weights = torch.rand(score.shape, generator=torch.Generator().manual_seed(2)) * score
    results = {}
    for chunk in (None, 3):  # 3 positions per chunk: 24 scored positions run in 8 chunks
        model.zero_grad()
        logp, entropy = token_logprobs(model, ids, attn, score, temperature=0.7, with_entropy=True,
                                       share_prompts=share_prompts, chunk_tokens=chunk)
        (logp * weights).sum().backward()
        results[chunk] = logp.detach(), entropy, [p.grad.clone() for p in model.parameters()]
    (plain, plain_entropy, plain_grads), (chunked, chunked_entropy, chunked_grads) = results[None], results[3]
    assert torch.allclose(chunked, plain, atol=1e-5) and torch.allclose(chunked_entropy, plain_entropy, atol=1e-5)
    for a, b in zip(chunked_grads, plain_grads):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-8


def test_chunked_head_keeps_no_vocabulary_sized_tensor_for_backward():
    """What autograd keeps for the head: the plain head keeps [positions, vocabulary] logits, the
    chunked head only the hidden states, so its saved bytes do not grow with the vocabulary."""
    from ibpo_lightning.losses.chunked_head import head_logprobs

    positions, hidden_size, vocab = 512, 64, 49152
    head = torch.nn.Linear(hidden_size, vocab, bias=False)
    hidden = torch.randn(positions, hidden_size, requires_grad=True)
    targets = torch.randint(0, vocab, (positions,))
    plain, (logp_plain, _) = _saved_bytes(lambda: head_logprobs(head, hidden, targets, 1.0, None, False),
                                          head.parameters())
    chunked, (logp_chunked, _) = _saved_bytes(lambda: head_logprobs(head, hidden, targets, 1.0, 64, False),
                                              head.parameters())
    logits_bytes = positions * vocab * 4
    assert plain >= logits_bytes  # at least the float logits
    assert chunked <= positions * (hidden_size * 4 + 8)  # the hidden states and the targets, nothing more
    assert torch.allclose(logp_plain, logp_chunked, atol=1e-5)


def test_a_long_response_keeps_no_vocabulary_sized_tensor_through_the_model():
    """Memory regression check at a long response (2 rows x 1 800 tokens, the tiny model has
    SmolLM2's 49k vocabulary): the whole scoring pass with the chunked head keeps for backward
    a small fraction of the logits' size; the plain head keeps all the logits (measured: 708 MiB
    plain, 33 MiB chunked, the logits alone 675 MiB)."""
    model, _ = load_policy("tiny-random-llama")
    model.train()
    rows, prompt, length = 2, 16, 1800
    ids = torch.randint(3, 40000, (rows, prompt + length), generator=torch.Generator().manual_seed(0))
    score = torch.zeros(ids.shape)
    score[:, prompt:] = 1
    params = list(model.parameters())
    run = lambda chunk: token_logprobs(model, ids, torch.ones_like(ids), score, chunk_tokens=chunk)  # noqa: E731
    plain, _ = _saved_bytes(lambda: run(None), params)
    chunked, (logp, _) = _saved_bytes(lambda: run(512), params)
    logits = rows * length * model.config.vocab_size * 4
    assert plain >= logits
    assert chunked < logits / 8, (chunked, logits)
    logp.sum().backward()  # and the chunked backward runs
    assert model.lm_head.weight.grad is not None or model.model.embed_tokens.weight.grad is not None
