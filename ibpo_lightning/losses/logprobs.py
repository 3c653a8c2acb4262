"""Token log-probabilities of a causal LM, the only forward pass the trainer needs.

RL batches hold groups of responses to one prompt, so the prompt (everything before a row's
first scored token) is usually shared by several rows. ``token_logprobs`` runs each distinct
prompt through the model once, repeats its key/value cache for the rows that share it, and runs
only the responses on top: with 8 samples of a 40-token prompt and 13-token answers that is
2.9x fewer tokens through the model, with identical log-probs and gradients (the cache keeps
its autograd graph). The output projection runs only at scored positions.
"""

from __future__ import annotations

import torch

from ibpo_lightning.losses.chunked_head import head_logprobs


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [n, L] right-padded
    attention_mask: torch.Tensor,  # [n, L]
    score_mask: torch.Tensor,  # [n, L] 1 where a token's log-prob is wanted (responses)
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_prompts: bool = True,
    chunk_tokens: int | None = None,
    entropy_grad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(x_t | x_<t) where ``score_mask`` is set (0 elsewhere), and optionally the entropy.

    Logits are divided by the sampling temperature so the trainer scores the distribution the
    engine sampled from. Returns [n, L] tensors aligned with ``input_ids``. ``share_prompts``
    runs a prompt shared by several rows once (off under FSDP, where every call must make the
    same collectives whatever the rows are). ``chunk_tokens`` runs the output head over at most
    that many scored positions at a time and never keeps their whole [positions, vocabulary]
    logits (``losses.chunked_head``; None: all at once). ``entropy_grad``: the entropy carries a
    gradient (an entropy bonus in the loss); otherwise it is a detached diagnostic.
    """
    if not _has_decoder(model):  # no separable output projection: full logits
        wanted = _predictable(score_mask)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return _scatter_logprobs(logits[:, :-1][wanted[:, 1:]].float() / temperature, input_ids, wanted, with_entropy,
                                 entropy_grad)
    starts = _first_scored(score_mask)
    contexts = [tuple(input_ids[i, : starts[i]].tolist()) for i in range(len(starts))]
    shares = len(set(contexts)) < len(contexts)
    if shares and share_prompts and not getattr(model, "is_gradient_checkpointing", False):
        hidden, wanted = _shared_prompt_hidden(model, input_ids, attention_mask, score_mask, starts, contexts)
    else:
        hidden, wanted = _plain_hidden(model, input_ids, attention_mask, score_mask)
    picked, entropy = head_logprobs(model.get_output_embeddings(), hidden, input_ids[wanted], temperature,
                                    chunk_tokens, with_entropy, entropy_grad)
    return _scatter(picked, entropy, input_ids, wanted)


def _has_decoder(model) -> bool:
    return hasattr(model, "get_decoder") and model.get_decoder() is not model


def _predictable(score_mask: torch.Tensor) -> torch.Tensor:
    """[n, L] bool: scored tokens, except position 0, which nothing predicts."""
    wanted = score_mask.gt(0).clone()
    wanted[:, 0] = False
    return wanted


def _first_scored(score_mask: torch.Tensor) -> list[int]:
    """Index of each row's first scored token (the row length if none)."""
    has = score_mask.gt(0)
    first = torch.where(has.any(-1), has.float().argmax(-1), torch.full_like(has[:, 0], has.shape[1], dtype=torch.long))
    return first.tolist()


def _plain_hidden(model, input_ids, attention_mask, score_mask):
    """Hidden states predicting each scored token, and the [n, L] mask of those tokens."""
    wanted = _predictable(score_mask)
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return hidden[:, :-1][wanted[:, 1:]], wanted


def _shared_prompt_hidden(model, input_ids, attention_mask, score_mask, starts, contexts):
    """As ``_plain_hidden``, running each distinct context once and the rows' tails on its cache."""
    decoder, device = model.get_decoder(), input_ids.device
    unique = list(dict.fromkeys(contexts))
    owner = torch.tensor([unique.index(c) for c in contexts], device=device)
    width = max(len(c) for c in unique)
    ctx_ids = torch.zeros((len(unique), width), dtype=torch.long, device=device)
    ctx_attn = torch.zeros_like(ctx_ids)
    for k, c in enumerate(unique):  # left padding, so every context ends at the same column
        ctx_ids[k, width - len(c) :] = torch.tensor(c, device=device)
        ctx_attn[k, width - len(c) :] = 1
    ctx_pos = (ctx_attn.cumsum(-1) - 1).clamp(min=0)
    ctx = decoder(input_ids=ctx_ids, attention_mask=ctx_attn, position_ids=ctx_pos, use_cache=True)
    cache = ctx.past_key_values
    cache.batch_select_indices(owner)  # differentiable gather: one cache row per sequence
    lengths = attention_mask.sum(-1).tolist()
    tail_len = max(length - s for length, s in zip(lengths, starts))
    n = len(starts)
    tail_ids = torch.zeros((n, tail_len), dtype=torch.long, device=device)
    tail_attn = torch.zeros_like(tail_ids)
    wanted = torch.zeros_like(score_mask, dtype=torch.bool)
    tail_wanted = torch.zeros_like(tail_ids, dtype=torch.bool)
    for i, (s, length) in enumerate(zip(starts, lengths)):
        tail_ids[i, : length - s] = input_ids[i, s:length]
        tail_attn[i, : length - s] = 1
        tail_wanted[i, : length - s] = score_mask[i, s:length].gt(0)
        wanted[i, s:length] = score_mask[i, s:length].gt(0)
    tail_pos = ctx_pos[owner, -1:] + 1 + torch.arange(tail_len, device=device)
    tail = decoder(input_ids=tail_ids, attention_mask=torch.cat([ctx_attn[owner], tail_attn], dim=1),
                   position_ids=tail_pos, past_key_values=cache, use_cache=True).last_hidden_state
    # the state predicting tail token j is the context's last state (j = 0) or tail state j - 1
    predicting = torch.cat([ctx.last_hidden_state[owner, -1:], tail[:, :-1]], dim=1)  # [n, T, H]
    return predicting[tail_wanted], wanted


def _scatter(picked, entropy, input_ids, wanted):
    """Per-position log-probs (and entropies), in row-major order of ``wanted``, into [n, L] tensors."""
    logp = torch.zeros(input_ids.shape, dtype=picked.dtype, device=input_ids.device)
    logp[wanted] = picked
    full_entropy = None
    if entropy is not None:
        full_entropy = torch.zeros_like(logp)
        full_entropy[wanted] = entropy
    return logp, full_entropy


def _scatter_logprobs(logits, input_ids, wanted, with_entropy, entropy_grad=False):
    """Log-prob (and entropy) of each wanted token from full logits, placed into [n, L] tensors."""
    targets = input_ids[wanted]  # row-major order, as the hidden states were gathered
    logz = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return _scatter(picked, entropy, input_ids, wanted)
