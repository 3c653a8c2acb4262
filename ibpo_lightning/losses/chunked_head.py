"""The output head as token log-probs, chunk by chunk, without keeping [positions x vocabulary].

Scoring needs, at each scored position, log pi(token) = z_token / T - logsumexp(z / T) with
z = W h + b, and its gradient. Autograd through a plain ``log_softmax`` keeps the whole
[positions, vocabulary] logits tensor (and builds its gradient) for the backward pass: at 4k
response tokens of a 150k-vocabulary model that is gigabytes per micro-batch. This head runs the
positions in chunks, keeps only the hidden states, and recomputes each chunk's logits in the
backward pass, where d log pi / dz = (onehot(token) - softmax(z / T)) / T. Peak memory is then
one chunk's logits; the price is the head's matrix multiply done twice (forward, and again in
backward). The technique is the field's usual one (chunked / fused cross-entropy); this
implementation is written for this project's scoring path. The entropy H = logsumexp(z') - sum p z'
(z' = z / T) can carry a gradient too (an entropy bonus in the loss): dH/dz' = -p (log p + H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _ChunkedHeadLogprob(torch.autograd.Function):
    """log pi of ``targets`` (and the entropy, with a gradient when ``entropy_grad``) from hidden
    states, by chunks."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, chunk: int, with_entropy: bool,
                entropy_grad: bool = False):
        logp = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
        entropy = hidden.new_zeros(hidden.shape[0] if with_entropy else 0, dtype=torch.float32)
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            logits = F.linear(hidden[start:end], weight, bias).float() / temperature
            logz = torch.logsumexp(logits, dim=-1)
            logp[start:end] = logits.gather(-1, targets[start:end, None]).squeeze(-1) - logz
            if with_entropy:
                entropy[start:end] = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.temperature, ctx.chunk, ctx.entropy_grad = temperature, chunk, with_entropy and entropy_grad
        if not ctx.entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets = ctx.saved_tensors
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if want_b and bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = start + ctx.chunk
            h = hidden[start:end]
            logits = F.linear(h, weight, bias).float() / ctx.temperature
            g = grad_logp[start:end].float()
            p = torch.softmax(logits, dim=-1)
            if ctx.entropy_grad and grad_entropy is not None:
                logp_all = torch.log_softmax(logits, dim=-1)
                entropy = -(p * logp_all).sum(-1, keepdim=True)
                grad_z = (logp_all + entropy).mul_(p).mul_(-grad_entropy[start:end, None].float())
                grad_z.sub_(p * g[:, None])
            else:
                grad_z = p.mul_(-g[:, None])  # (onehot - p) * g, then / T
            grad_z.scatter_add_(-1, targets[start:end, None], g[:, None])
            grad_z.div_(ctx.temperature)
            if grad_h is not None:
                grad_h[start:end] = (grad_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w.addmm_(grad_z.t(), h.float())
            if grad_b is not None:
                grad_b.add_(grad_z.sum(0))
        return (grad_h, grad_w.to(weight.dtype) if grad_w is not None else None,
                grad_b.to(bias.dtype) if grad_b is not None else None, None, None, None, None, None)


def head_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, temperature: float,
                  chunk: int | None, with_entropy: bool, entropy_grad: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(targets) [M] (float32) and, optionally, the entropy [M] at ``hidden`` [M, H]
    (differentiable with ``entropy_grad``, for an entropy bonus; detached otherwise).

    ``chunk``: positions per chunk; None, or at least M positions, runs the plain head (one
    logits tensor, autograd's own backward). ``head`` must be a linear output projection.
    """
    if chunk is None or hidden.shape[0] <= chunk:
        logits = head(hidden).float() / temperature
        logz = torch.logsumexp(logits, dim=-1)
        logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
        entropy = None
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        return logp, entropy
    weight, bias = head.weight, head.bias
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # the dtype the plain head would compute in
        dtype = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        logp, entropy = _ChunkedHeadLogprob.apply(hidden, weight, bias, targets, temperature, chunk, with_entropy,
                                                  entropy_grad)
    return logp, entropy if with_entropy else None
