"""Supervised fine-tuning (cold start): the policy learns a task's worked solutions before RL.

One ``training_step`` is one optimizer update on a batch of problems: each is encoded as the RL
path encodes prompts (``sft.data.encode_example``), the rows are packed into micro-batches by a
token budget, and the loss is the negative log-likelihood of the response tokens only (prompt
tokens and padding carry none), summed over the batch's response tokens on every rank and
divided by their count, so gradient accumulation and data parallelism give exactly the
one-process, one-pass loss. Passes go through the same :class:`~ibpo_lightning.training.scorer.Scorer`
as RL (the FSDP2-registered ``token_logprobs``, the chunked output head, rank-matched pass
counts). The model is built, sharded, clipped, evaluated, checkpointed and exported by the
same policy host as the RL module (``host.py``), so its ``HFExport`` directory is a valid
``model.model`` of an RL config.
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import OptimizerCallable

from ibpo_lightning.evaluation import EvalConfig
from ibpo_lightning.host import PolicyHost
from ibpo_lightning.models.lora import LoraConfig
from ibpo_lightning.sft.data import Example, collate, encode_episode, encode_example, pack
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.training import MemoryConfig, Scorer


def response_nll(scorer: Scorer, examples: list[Example], pad_id: int, device) -> tuple[torch.Tensor, int]:
    """The negative log-likelihood of ``examples``' response tokens, summed (prompt and padding
    tokens carry none), in one pass; and the padded width of that pass."""
    ids, attn, mask = (t.to(device) for t in collate(examples, pad_id))
    logp = scorer.tokens(ids, attn, mask)
    return -(logp.float() * mask).sum(), ids.shape[1]


class SFTModule(PolicyHost):
    """The policy trained on (prompt, worked solution) pairs with a response-only loss.

    The rollout callback (``rollout:``) samples evaluations and, for an engine that keeps its own
    weights (vLLM), receives the weights after every update, through the host's interface.

    Args:
        model: a built-in model name, a local Hugging Face directory or a Hub id.
        optimizer: the optimizer, as a ``class_path`` with ``init_args``; None: ``AdamW(lr=1e-5)``.
        warmup_steps: linear learning-rate warm-up, in optimizer updates.
        max_grad_norm: gradient clipping threshold (None: no clipping; the norm is still logged).
        memory: micro-batches (rows are packed longest first; None: 4096 padded tokens per
            micro-batch), chunked output head, checkpointing, FSDP2 dtype.
        lora: train LoRA adapters instead of every weight (exported merged).
        evaluation: how the held-out split is sampled and scored before and after fine-tuning.
        benchmarks: extra benchmarks evaluated beside the held-out split, by name.
    """

    def __init__(
        self,
        model: str = "smollm2-135m-instruct",
        optimizer: OptimizerCallable | None = None,
        warmup_steps: int = 0,
        max_grad_norm: float | None = 1.0,
        memory: MemoryConfig | None = None,
        lora: LoraConfig | None = None,
        evaluation: EvalConfig | None = None,
        benchmarks: dict[str, Task] | None = None,
    ) -> None:
        super().__init__(model, optimizer, warmup_steps, max_grad_norm, memory or MemoryConfig(micro_batch_tokens=4096),
                         lora, evaluation, benchmarks)
        self.save_hyperparameters(ignore=["benchmarks", "optimizer"])
        self.loss_scorer: Scorer | None = None

    def on_fit_start(self) -> None:
        # plain likelihood: temperature 1; prompts are not shared between rows
        self.loss_scorer = self.make_scorer(1.0, share_prompts=False)

    def _encode(self, problem: Problem) -> Example:
        """A training example; with a ``rollout.environment``, the solution replayed as an episode."""
        sampler, system_prompt = self.parts.sampler, self.parts.task.system_prompt
        if sampler.environment is None:
            return encode_example(self.tokenizer, problem, system_prompt)
        env = sampler.environment
        return encode_episode(self.tokenizer, problem, system_prompt, env, sampler.turn_format(env.role))

    # -- training: one optimizer update --------------------------------------------------------
    def training_step(self, problems, batch_idx: int) -> None:
        examples = [self._encode(p) for p in problems]
        scorer = self.loss_scorer
        parallel, device = scorer.parallel, next(self.policy.parameters()).device
        tokens = parallel.reduce(sum(e.target_tokens for e in examples))  # every rank's response tokens
        normaliser = tokens / parallel.world  # gradients are averaged over ranks
        opt, sched = self.optimizers(), self.lr_schedulers()
        opt.zero_grad(set_to_none=True)
        nll, padded, finite = 0.0, 0, True
        for micro in parallel.pad(pack(examples, self.memory.micro_batch_size, self.memory.micro_batch_tokens)):
            if micro is None:  # match another rank's pass count
                self.manual_backward(scorer.empty_pass())
                continue
            summed, width = response_nll(scorer, micro, self.tokenizer.pad_token_id, device)
            loss = summed / normaliser
            finite = finite and bool(torch.isfinite(loss))
            self.manual_backward(loss)
            nll += float(summed.detach())
            padded += len(micro) * width
        norm = self.clip_and_step(opt, parallel, None if finite else "loss")
        sched.step()
        self.policy_version += 1
        loss = parallel.reduce(nll) / max(tokens, 1.0)  # mean NLL per response token, over every rank
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        self.log_dict({"train/loss": loss, "train/grad_norm": float("nan") if norm is None else norm,
                       "train/lr": sched.get_last_lr()[0],
                       "train/response_tokens": tokens, "train/tokens_padded": float(padded),
                       "train/skipped_updates": float(self.skipped_updates),
                       "policy_version": float(self.policy_version)},
                      on_step=True, on_epoch=False, batch_size=len(problems))
