"""Rollout engine on a Hugging Face causal LM, sharing the trainer's policy module.

Instead of ``model.generate`` it runs a small sampling loop of its own, because RL sampling
has a shape ``generate`` does not exploit: every prompt is sampled ``n`` times. The loop
pre-fills each distinct prompt once and repeats its KV cache ``n`` times, drops finished rows
from the cache as it goes, and records the log-prob of each sampled token under the sampling
distribution (temperature and top-p applied) without keeping vocabulary-sized scores.
"""

from __future__ import annotations

import torch

from ibpo_lightning.models.lora import rollout_weights
from ibpo_lightning.models.sharding import is_sharded
from ibpo_lightning.rollout.engine import RolloutEngine, Sample


class HFEngine(RolloutEngine):
    """Samples with the trainer's own module (no weight copy, never stale); with a sharded
    (FSDP2) policy, with a full copy per rank that each weight sync refreshes. It computes
    in the trainer's compute dtype: under ``bf16-mixed``, the same bf16 autocast the trainer scores
    with.

    Args:
        batch_size: distinct prompts pre-filled per chunk (each then sampled ``n`` times).
    """

    shares_weights = True

    def __init__(self, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"engine.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.model = None
        self.autocast: torch.dtype | None = None

    def bind(self, model: torch.nn.Module, tokenizer, compute_dtype: torch.dtype | None = None) -> None:
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.autocast = compute_dtype if compute_dtype in (torch.bfloat16, torch.float16) and \
            compute_dtype != first.dtype else None
        if not is_sharded(model):
            self.model = model
            return
        # sharded (FSDP2): sampling with it would make every decoding step a collective across
        # ranks, so this rank samples with a full copy that receives the weights at each sync
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_config(model.config, dtype=first.dtype).to(first.device)
        self.shares_weights = False
        self.sync_weights(rollout_weights(model))

    @torch.no_grad()
    def sync_weights(self, named_tensors) -> None:
        if self.shares_weights:
            return
        params = dict(self.model.named_parameters())
        for name, tensor in named_tensors:
            params[name].copy_(tensor)

    @torch.no_grad()
    def generate(self, prompts, n, *, max_new_tokens, temperature, top_p=1.0, seed=None):
        was_training = self.model.training
        self.model.eval()
        generator = None
        device = next(self.model.parameters()).device
        if seed is not None:
            generator = torch.Generator(device).manual_seed(seed)
        half = torch.autocast(device.type, self.autocast or torch.bfloat16, enabled=self.autocast is not None)
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        try:
            out: list[list[Sample]] = []
            with half:
                for start in range(0, len(prompts), self.batch_size):
                    chunk = prompts[start : start + self.batch_size]
                    rows = self._sample(chunk, n, limits[start : start + self.batch_size], temperature, top_p, generator)
                    out.extend(rows[i * n : (i + 1) * n] for i in range(len(chunk)))
            return out
        finally:
            self.model.train(was_training)

    def _sample(self, prompts, n, limits, temperature, top_p, generator=None) -> list[Sample]:
        """``n`` samples of each prompt, the ones of prompt ``i`` at most ``limits[i]`` tokens long."""
        tok, device = self.tokenizer, next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        ids, attn = ids.to(device), attn.to(device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=positions,
                         use_cache=True, logits_to_keep=1)
        cache, logits = out.past_key_values, out.logits[:, -1]
        if n > 1:  # one pre-fill per distinct prompt, then n copies of its cache
            cache.batch_repeat_interleave(n)
            logits, attn = logits.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)
        next_pos = positions[:, -1].repeat_interleave(n) + 1
        total = len(prompts) * n
        tokens = [[] for _ in range(total)]
        logps = [[] for _ in range(total)]
        active = torch.arange(total, device=device)  # original row of each live cache row
        finished = [False] * total
        limit = [limits[row // n] for row in range(total)]
        for _ in range(max(limits)):
            chosen, chosen_logp = _pick(logits, temperature, top_p, generator)
            done = []
            for row, token, lp in zip(active.tolist(), chosen.tolist(), chosen_logp.tolist()):
                tokens[row].append(token)
                logps[row].append(lp)
                finished[row] = token == tok.eos_token_id
                done.append(finished[row] or len(tokens[row]) >= limit[row])
            keep = ~torch.tensor(done, device=device)
            if not keep.any():
                break
            if not keep.all():  # drop finished rows from the cache
                cache.batch_select_indices(keep.nonzero().squeeze(-1))
                active, chosen, attn, next_pos = active[keep], chosen[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
            out = self.model(input_ids=chosen.unsqueeze(-1), attention_mask=attn,
                             position_ids=next_pos.unsqueeze(-1), past_key_values=cache, use_cache=True)
            logits, next_pos = out.logits[:, -1], next_pos + 1
        return [
            Sample(token_ids=t, logprobs=lp, text=tok.decode(t, skip_special_tokens=True), finished=f)
            for t, lp, f in zip(tokens, logps, finished)
        ]


def _pick(logits: torch.Tensor, temperature: float, top_p: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample (or, at temperature 0, take the argmax of) each row; non-finite logits are tamed."""
    logits = torch.nan_to_num(logits.float(), nan=0.0, posinf=1e4, neginf=-1e4)  # [B, V]
    if temperature <= 0:
        chosen = logits.argmax(-1)
        return chosen, logits.log_softmax(-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        mass = sorted_logits.softmax(-1).cumsum(-1)
        drop = mass - sorted_logits.softmax(-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    logp = logits.log_softmax(-1)
    # inverse-CDF sampling: one uniform number per row (torch.multinomial draws one per
    # vocabulary entry and was a quarter of the decode time on CPU)
    cdf = logp.double().exp().cumsum(-1)
    u = torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device, generator=generator) * cdf[:, -1:]
    chosen = torch.searchsorted(cdf, u).squeeze(-1).clamp(max=logits.shape[-1] - 1)
    return chosen, logp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
