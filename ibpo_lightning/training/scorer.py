"""The scoring seam: every forward pass that turns token sequences into log-probs.

The update loop, the estimators that need forward passes (REINFORCE++'s reference log-probs,
ACPO's answer probes) and the diagnostics all score through one :class:`Scorer`, so the rules
that make a pass safe under every strategy live in one place:

* the model is called through its ``token_logprobs`` method, which FSDP2 registers as a forward
  (parameters are gathered around it);
* every rank runs the same number of passes (:class:`~ibpo_lightning.training.parallel.DataParallel`);
* a prompt shared by several rows is run once only on one process (under FSDP every pass must
  make the same collectives whatever its rows are).
"""

from __future__ import annotations

from typing import Literal

import torch

from ibpo_lightning.training.parallel import DataParallel
from ibpo_lightning.types import RolloutBatch

Which = Literal["policy", "reference"]


class Scorer:
    """Token log-probs of the policy or the frozen reference.

    Args:
        policy: the trained model (with a ``token_logprobs`` method).
        reference: the frozen reference, or None when nothing needs one.
        temperature: logits are divided by it, so tokens are scored under the sampled distribution.
        micro_batch_size: rows per pass.
        micro_batch_tokens: padded tokens per pass (None: rows only).
        parallel: the data-parallel rules.
        pad_id: token id of padding (for the empty passes that match another rank's).
        share_prompts: run a prompt shared by several rows once (off for sharded models, whose
            passes must make the same collectives whatever the rows are).
        chunk_tokens: scored positions per chunk of the output head (None: all at once); peak
            memory of a pass then holds at most this many positions' logits.
    """

    def __init__(self, policy, reference, temperature: float, micro_batch_size: int,
                 micro_batch_tokens: int | None = None, parallel: DataParallel | None = None, pad_id: int = 0,
                 share_prompts: bool = True, chunk_tokens: int | None = None) -> None:
        self.models = {"policy": policy, "reference": reference}
        self.temperature, self.micro_batch_size, self.micro_batch_tokens = temperature, micro_batch_size, micro_batch_tokens
        self.parallel, self.pad_id, self.share_prompts = parallel or DataParallel(), pad_id, share_prompts
        self.chunk_tokens = chunk_tokens
        self.tokens_scored = 0
        """Tokens (prompt and response, no padding) run through ``full`` since the counter was reset."""

    def model(self, which: Which):
        model = self.models[which]
        if model is None:
            raise ValueError(f"no {which} model was built: declare the need (an estimator's "
                             "`needs_reference`, or model.loss.kl_coef > 0)")
        return model

    def chunks(self, batch: RolloutBatch, rows: list[int]) -> list[list[int] | None]:
        """Micro-batches of whole groups of ``rows``, padded to the count of the busiest rank."""
        return self.parallel.pad(batch.group_chunks(rows, self.micro_batch_size, self.micro_batch_tokens))

    def logprobs(self, batch: RolloutBatch, rows: list[int], which: Which = "policy",
                 with_entropy: bool = False, entropy_grad: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """[len(rows), width] log-probs (and entropy) of ``rows``' response tokens, and the width.

        Gradients flow when grad mode is on (through the entropy too with ``entropy_grad``);
        ``rows`` must be one rank-matched micro-batch.
        """
        width = int(batch.attention_mask[rows].sum(-1).max())
        return (*self._score(which, batch.input_ids[rows, :width], batch.attention_mask[rows, :width],
                             batch.response_mask[rows, :width], with_entropy, entropy_grad), width)

    def empty_pass(self, which: Which = "policy") -> torch.Tensor:
        """A pass over one two-token row that contributes nothing; matches another rank's pass.
        Its zero-weighted output is returned so that a backward can go through it too."""
        device = next(self.model(which).parameters()).device
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=device)
        score = torch.tensor([[0.0, 1.0]], device=device)
        logp, _ = self._score(which, ids, torch.ones_like(ids), score, False)
        return logp.sum() * 0.0

    @torch.no_grad()
    def full(self, batch: RolloutBatch, rows: list[int], which: Which = "policy") -> torch.Tensor:
        """[N, L] no-grad log-probs of ``rows`` (0 on other rows), in rank-matched micro-batches."""
        return self._full(batch, rows, which, entropy=False)

    @torch.no_grad()
    def entropies(self, batch: RolloutBatch, rows: list[int], which: Which = "policy") -> torch.Tensor:
        """[N, L] no-grad entropy of the next-token distribution (at the sampling temperature) at
        ``rows``' response tokens (0 elsewhere), in rank-matched micro-batches."""
        return self._full(batch, rows, which, entropy=True)

    def _full(self, batch: RolloutBatch, rows: list[int], which: Which, entropy: bool) -> torch.Tensor:
        out = torch.zeros_like(batch.engine_logprobs)
        for micro in self.chunks(batch, rows):
            if micro is None:
                self.empty_pass(which)
                continue
            logp, ent, width = self.logprobs(batch, micro, which, with_entropy=entropy)
            out[micro, :width] = (ent if entropy else logp).float()
            self.tokens_scored += sum(batch.row_length(i) for i in micro)
        return out

    @torch.no_grad()
    def sequences(self, pairs: list[tuple[list[int], list[int]]], which: Which = "policy") -> list[float]:
        """log pi(target | context) summed over the target, for each ``(context, target)`` pair,
        in rank-matched chunks of ``micro_batch_size``; the model is in eval mode meanwhile."""
        model = self.model(which)
        device, was_training = next(model.parameters()).device, model.training
        model.eval()
        starts = list(range(0, len(pairs), self.micro_batch_size))
        totals: list[float] = []
        for start in self.parallel.pad(starts):
            if start is None:
                self.empty_pass(which)
                continue
            part = pairs[start : start + self.micro_batch_size]
            width = max(len(c) + len(t) for c, t in part)
            ids = torch.full((len(part), width), self.pad_id, dtype=torch.long)
            attn, score = torch.zeros_like(ids), torch.zeros((len(part), width))
            for r, (context, target) in enumerate(part):
                ids[r, : len(context) + len(target)] = torch.tensor(context + target)
                attn[r, : len(context) + len(target)] = 1
                score[r, len(context) : len(context) + len(target)] = 1.0
            logp, _ = self._score(which, ids.to(device), attn.to(device), score.to(device), False)
            totals.extend(logp.float().sum(-1).tolist())
        model.train(was_training)
        return totals

    def tokens(self, ids: torch.Tensor, attn: torch.Tensor, score: torch.Tensor,
               which: Which = "policy") -> torch.Tensor:
        """[n, L] log-probs of the tokens where ``score`` is set, for right-padded rows (gradients
        flow when grad mode is on; one rank-matched pass)."""
        return self._score(which, ids, attn, score, False)[0]

    def _score(self, which, ids, attn, score, with_entropy, entropy_grad=False):
        return self.model(which).token_logprobs(ids, attn, score, self.temperature, with_entropy,
                                                share_prompts=self.share_prompts, chunk_tokens=self.chunk_tokens,
                                                entropy_grad=entropy_grad)
