"""Supervised fine-tuning data: (prompt, worked solution) pairs, tokenized, packed by a token budget.

The prompt is encoded exactly as the RL path encodes it (``rollout.sampler.encode_chat``: the
task's system prompt, the user message, the chat template's generation prompt), so a model
fine-tuned here sees the prompts RL will show it. The response is what the chat template puts
after that prompt for an assistant message holding the solution, up to and including the end of
turn token (``<|im_end|>`` in ChatML), so the model also learns to stop. With a
``rollout.environment``, a solution written with tool calls is replayed through the environment
(``encode_episode``): the model learns its turns, never the tools' answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler

from ibpo_lightning.data.lengths import CheckedEvaluation, Fits
from ibpo_lightning.environments.base import Environment
from ibpo_lightning.rollout.episodes import TurnFormat
from ibpo_lightning.rollout.sampler import encode_chat
from ibpo_lightning.tasks.base import Problem, Task


@dataclass(frozen=True)
class Example:
    """One tokenized (prompt, solution) pair; only ``response_ids`` carry loss, outside ``env_spans``."""

    prompt_ids: list[int]
    response_ids: list[int]
    env_spans: tuple[tuple[int, int], ...] = ()
    """[start, end) response-token ranges an environment wrote (a multi-turn solution): no loss."""

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    @property
    def target_tokens(self) -> int:
        """Response tokens that carry loss."""
        return len(self.response_ids) - sum(b - a for a, b in self.env_spans)


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def encode_example(tokenizer, problem: Problem, system_prompt: str | None) -> Example:
    """The prompt as the sampler encodes it, and the solution as the assistant's turn after it.

    Where the template's rendering of the whole conversation does not begin with the prompt's
    tokens (templates that rewrite earlier turns), the response is the solution's own tokens
    followed by the end-of-sequence token.
    """
    if not problem.solution:
        raise ValueError(f"problem without a worked solution: {problem.prompt[:80]!r}")
    prompt = encode_chat(tokenizer, problem.prompt, system_prompt)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": problem.solution}]
    whole = _ids(tokenizer.apply_chat_template(messages, tokenize=True))
    eos = tokenizer.eos_token_id
    if whole[: len(prompt)] == prompt and len(whole) > len(prompt):
        response = whole[len(prompt):]
        if eos in response:  # stop at the end of turn (ChatML writes a newline after it)
            response = response[: response.index(eos) + 1]
    else:
        response = _ids(tokenizer(problem.solution, add_special_tokens=False)) + [eos]
    return Example(prompt, response)


def encode_episode(tokenizer, problem: Problem, system_prompt: str | None, environment: Environment,
                   turns: TurnFormat) -> Example:
    """A worked solution written with tool calls, replayed as the episode RL would sample.

    The solution's turns end after each ``</tool_call>`` (the model stops to read the result); each
    turn is its own tokens and the end-of-sequence token, as the engines sample it, and the
    environment's answer to it is rendered between turns by the chat template (``TurnFormat``),
    without loss. The last turn must end the episode (no call), within the environment's turns.
    """
    if not problem.solution:
        raise ValueError(f"problem without a worked solution: {problem.prompt[:80]!r}")
    parts = problem.solution.split("</tool_call>")
    texts = [part + "</tool_call>" for part in parts[:-1]] + [parts[-1]]
    env = environment.spawn()
    env.reset(problem)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    for k, text in enumerate(texts):
        ids += _ids(tokenizer(text, add_special_tokens=False)) + [tokenizer.eos_token_id]
        feedback = env.step(text) if k + 1 < environment.max_turns else None
        done, last = feedback is None or feedback.done, k + 1 == len(texts)
        if done != last:
            said = f"the worked solution of {problem.origin or repr(problem.prompt[:80])}"
            raise ValueError(f"{said} has {len(texts)} turns, but its episode ends at turn {k + 1} (environment "
                             f"max_turns={environment.max_turns}): every turn but the last must call a tool" if done
                             else f"{said}: its last turn still calls a tool; the last turn must answer without one")
        if done:
            break
        observation = turns.ids(feedback.observation, turn_ended_on_eos=True)
        spans.append((len(ids), len(ids) + len(observation)))
        ids += observation
    env.close()
    return Example(encode_chat(tokenizer, problem.prompt, system_prompt), ids, tuple(spans))


def collate(examples: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` (1 on response tokens only)."""
    width = max(len(e) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    loss_mask = torch.zeros((len(examples), width))
    for r, e in enumerate(examples):
        n, p = len(e), len(e.prompt_ids)
        ids[r, :n] = torch.tensor(e.prompt_ids + e.response_ids)
        attn[r, :n] = 1
        loss_mask[r, p:n] = 1.0
        for a, b in e.env_spans:  # what the environment wrote is context, not a target
            loss_mask[r, p + a : p + b] = 0.0
    return ids, attn, loss_mask


def pack(examples: list[Example], max_rows: int, max_tokens: int | None) -> list[list[Example]]:
    """Micro-batches of at most ``max_rows`` rows and ``max_tokens`` padded tokens (rows x the
    longest row; None: rows only), longest first so rows of similar length share padding. A row
    longer than ``max_tokens`` gets a micro-batch of its own."""
    out: list[list[Example]] = []
    for e in sorted(examples, key=len, reverse=True):
        current = out[-1] if out else None
        # sorted longest first: the chunk's width is its first row's length
        if current and len(current) < max_rows and (max_tokens is None or (len(current) + 1) * len(current[0]) <= max_tokens):
            current.append(e)
        else:
            out.append([e])
    return out


class SFTDataModule(CheckedEvaluation, LightningDataModule):
    """The task's worked solutions for training, its held-out problems for evaluation.

    Training batches are lists of :class:`Problem` (the module tokenizes them with the policy's
    tokenizer). Under DDP/FSDP2 each rank takes every n-th problem of the epoch's order (its own
    ``DistributedSampler``: Lightning's would always shuffle), so without shuffling n ranks with
    ``batch_size`` b train on exactly the problems one process with b x n does.

    Args:
        task: a task whose training problems carry worked solutions (``Problem.solution``).
        batch_size: problems per optimizer update and data-parallel rank.
        limit: fine-tune on the first this many problems with solutions (None: all).
        shuffle: reshuffle the problems every epoch (the order follows ``seed_everything``).
        val_batch_size: held-out problems per evaluation generate call.
        drop_long_prompts: leave out (with one warning) held-out and test problems whose prompt plus
            the response budget does not fit the model's context, instead of failing at start-up.
    """

    def __init__(self, task: Task, batch_size: int = 8, limit: int | None = None, shuffle: bool = True,
                 val_batch_size: int = 64, drop_long_prompts: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.task, self.batch_size, self.shuffle, self.val_batch_size = task, batch_size, shuffle, val_batch_size
        self.drop_long_prompts = drop_long_prompts
        self.problems = task.sft_problems()[:limit]

    def train_dataloader(self) -> DataLoader:
        kwargs = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) if self.trainer else None
        if kwargs and kwargs["num_replicas"] > 1:  # the same seed as Lightning's (seed_everything's)
            sampler = DistributedSampler(self.problems, num_replicas=kwargs["num_replicas"], rank=kwargs["rank"],
                                         shuffle=self.shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
            return DataLoader(self.problems, batch_size=self.batch_size, sampler=sampler, num_workers=0,
                              collate_fn=list)
        return DataLoader(self.problems, batch_size=self.batch_size, shuffle=self.shuffle, num_workers=0, collate_fn=list)

    def fit_prompts(self, stage: str, fits: Fits) -> None:
        """Check the held-out (test) prompts an evaluation samples from (``data/lengths.py``)."""
        self.fit_evaluation_prompts(stage, fits)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation_problems("held-out"), batch_size=self.val_batch_size, num_workers=0,
                          collate_fn=list)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.evaluation_problems("test"), batch_size=self.val_batch_size, num_workers=0,
                          collate_fn=list)
