"""Token log-probabilities of a causal LM, the only forward pass the trainer needs."""

from __future__ import annotations

import torch


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [n, L]
    attention_mask: torch.Tensor,  # [n, L]
    score_mask: torch.Tensor,  # [n, L] 1 where a token's log-prob is wanted (responses)
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(x_t | x_<t) where ``score_mask`` is set (0 elsewhere), and optionally the entropy.

    The output projection runs only on the scored positions (prompt and padding positions cost
    no vocabulary-sized logits), when the model exposes ``get_decoder``. Logits are divided by
    the sampling temperature so the trainer scores the distribution the engine sampled from.
    Returns [n, L] tensors aligned with ``input_ids``.
    """
    wanted = score_mask[:, 1:].bool()  # token t is predicted at position t - 1
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and decoder is not model:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][wanted])  # [M, V]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1][wanted]
    logits = logits.float() / temperature
    targets = input_ids[:, 1:][wanted]  # [M]
    logz = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    logp = input_ids.new_zeros(input_ids.shape, dtype=picked.dtype)
    logp[:, 1:][wanted] = picked
    entropy = None
    if with_entropy:
        with torch.no_grad():
            ent = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
            entropy = torch.zeros_like(logp)
            entropy[:, 1:][wanted] = ent
    return logp, entropy
