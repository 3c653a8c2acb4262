"""The one vocabulary type carried between the stages of an RL step.

A :class:`RolloutBatch` is built row by row from :class:`Trajectory` records (while the rollout
and the estimator's ``plan`` hook add samples), then collated once into padded tensors for the
estimator's ``assign`` hook and the loss. Shapes: ``N`` trajectories, ``L`` padded sequence
length (prompt + response, right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ibpo_lightning.tasks.base import Problem


class Kind(IntEnum):
    """How a trajectory came to be."""

    FRESH = 0  #: sampled from the task prompt
    RESET_SUFFIX = 1  #: continues a parent from a shared prefix (SRPO / RRPO)
    REVISION = 2  #: a repair of a parent, generated from a compare-and-correct prompt (IBPO)
    PROBE = 3  #: Monte-Carlo continuation used for value estimates only
    REROOTED_REVISION = 4  #: a verified repair moved onto the task prompt and trained on (IBPO ``train_on_revision``)


class GenerationKind:
    """What a generate call was for; generated tokens are counted per kind (``tokens/<kind>``)."""

    FRESH = "fresh"  #: the step's groups
    REVISION = "revision"  #: IBPO's repairs
    RESAMPLE = "resample"  #: DAPO's extra groups
    RESET_SUFFIX = "reset_suffix"  #: SRPO / RRPO suffixes
    PROBE = "probe"  #: Monte-Carlo continuations
    LOCALISATION = "localisation"  #: SRPO's "name the first wrong thought" call
    VALIDATION = "validation"  #: evaluation


@dataclass
class Trajectory:
    """One sampled response and where it came from."""

    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """Engine log-probs of ``response_ids`` under the sampling distribution."""
    prompt_text: str
    response_text: str
    group: int
    """Index of the task prompt this trajectory answers; groups share it."""
    finished: bool = True
    """False when generation stopped at the length limit."""
    reward: float = 0.0
    kind: Kind = Kind.FRESH
    parent: int = -1
    """Row of the trajectory this one continues or revises, -1 if none."""
    prefix_len: int = 0
    """Leading response tokens shared with the parent (never trained on)."""
    trained: bool = True
    """False for rows used only for values or comparison (probes, revisions)."""
    step_boundaries: tuple[int, ...] = ()
    """Response-token offsets where reasoning steps end."""
    env_spans: tuple[tuple[int, int], ...] = ()
    """[start, end) response-token ranges an environment wrote (multi-turn episodes): no loss."""
    turn_ends: tuple[int, ...] = ()
    """Response-token offset after each model turn of a multi-turn episode (empty: single-turn)."""
    answer_text: str | None = None
    """The text the reward reads: a multi-turn episode's last model turn (None: ``response_text``)."""

    @classmethod
    def from_sample(cls, prompt_ids: list[int], prompt_text: str, sample, **fields) -> "Trajectory":
        """A row holding a rollout engine ``Sample`` (or a multi-turn ``EpisodeSample``) answering
        ``prompt_ids``; ``fields`` set the rest."""
        if hasattr(sample, "env_spans"):
            fields = {"env_spans": sample.env_spans, "turn_ends": sample.turn_ends,
                      "answer_text": sample.answer_text, **fields}
        return cls(prompt_ids=prompt_ids, response_ids=sample.token_ids, logprobs=sample.logprobs,
                   prompt_text=prompt_text, response_text=sample.text, finished=sample.finished, **fields)

    @property
    def scored_text(self) -> str:
        """What the task's reward reads (see ``answer_text``)."""
        return self.response_text if self.answer_text is None else self.answer_text

    @property
    def turn_starts(self) -> tuple[int, ...]:
        """Response-token offset where each model turn starts: 0, then after each environment span."""
        return (0, *(b for _, b in self.env_spans))

    @property
    def model_tokens(self) -> int:
        """Response tokens the model wrote (an episode's environment tokens left out)."""
        return len(self.response_ids) - sum(b - a for a, b in self.env_spans)


@dataclass
class RolloutBatch:
    """Trajectory groups of one RL step, with their tensors once collated."""

    trajectories: list[Trajectory]
    policy_version: int
    """Number of optimizer updates of the policy that sampled this batch."""
    groups: list[Problem] = field(default_factory=list)
    """The problem of each group (indexed by ``Trajectory.group``): its text, answer and worked
    solution where the task has one."""
    stats: dict[str, float] = field(default_factory=dict)
    """Per-step diagnostics (timings, revision counts) logged by the module."""
    seed: int | None = None
    """Seed of this step on this rank (from ``rollout.seed``, the rank and the policy version; None
    when sampling is unseeded): an estimator's random choices derive from it
    (``Estimator.generator``), so they repeat exactly on a resumed run, on every rank."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What an estimator's ``plan`` and ``prepare`` leave for its ``assign`` (ACPO's step scores,
    IBPO's importance weights), keyed ``<estimator name>/<what>``: per-batch state lives here,
    never on the estimator, so it cannot leak into another batch or a resumed run."""

    input_ids: torch.Tensor | None = None  # [N, L] prompt + response, right-padded
    attention_mask: torch.Tensor | None = None  # [N, L]
    response_mask: torch.Tensor | None = None  # [N, L] 1 on response tokens the loss may see (model-written)
    engine_logprobs: torch.Tensor | None = None  # [N, L] sampling log-prob of the token at t
    rewards: torch.Tensor | None = None  # [N]
    group_ids: torch.Tensor | None = None  # [N]
    advantages: torch.Tensor | None = None  # [N, L] set by the estimator's assign hook
    loss_weights: torch.Tensor | None = None  # [N, L] set by the estimator's assign hook
    ref_logprobs: torch.Tensor | None = None  # [N, L] frozen reference's log-probs, when something needs them
    env_mask: torch.Tensor | None = None  # [N, L] True on tokens an environment wrote; None: no such token

    def __len__(self) -> int:
        return len(self.trajectories)

    @property
    def problems(self) -> list[str]:
        """Problem text of each group."""
        return [p.prompt for p in self.groups]

    @property
    def answers(self) -> list[str]:
        """Reference answer of each group."""
        return [p.answer for p in self.groups]

    def rows(self, predicate) -> list[int]:
        return [i for i, t in enumerate(self.trajectories) if predicate(t)]

    def add_scored(self, rows: list[Trajectory], task) -> list[float]:
        """Score ``rows`` with ``task`` against their groups' answers, set their rewards and
        append them; returns the rewards."""
        rewards = [float(r) for r in task.score([t.scored_text for t in rows],
                                                [self.groups[t.group].answer for t in rows])] if rows else []
        for t, r in zip(rows, rewards):
            t.reward = r
        self.trajectories.extend(rows)
        return rewards

    def fresh_groups(self) -> dict[int, list[int]]:
        """Rows of the fresh samples of each group, by group."""
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(self.trajectories):
            if t.kind == Kind.FRESH:
                groups.setdefault(t.group, []).append(i)
        return groups

    def collate(self, pad_id: int) -> "RolloutBatch":
        """Build the padded tensors from the trajectory records (in place)."""
        trajs = self.trajectories
        n = len(trajs)
        width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajs)
        ids = torch.full((n, width), pad_id, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        resp = torch.zeros((n, width), dtype=torch.float32)
        old = torch.zeros((n, width), dtype=torch.float32)
        for i, t in enumerate(trajs):
            p, r = len(t.prompt_ids), len(t.response_ids)
            ids[i, : p + r] = torch.tensor(t.prompt_ids + t.response_ids, dtype=torch.long)
            attn[i, : p + r] = 1
            resp[i, p + t.prefix_len : p + r] = 1.0
            if r:
                old[i, p : p + r] = torch.tensor(t.logprobs, dtype=torch.float32)
        self.env_mask = None
        if any(t.env_spans for t in trajs):  # environment tokens: context, never loss
            self.env_mask = torch.zeros((n, width), dtype=torch.bool)
            for i, t in enumerate(trajs):
                p = len(t.prompt_ids)
                for a, b in t.env_spans:
                    self.env_mask[i, p + a : p + b] = True
            resp[self.env_mask] = 0.0
        self.input_ids, self.attention_mask, self.response_mask, self.engine_logprobs = ids, attn, resp, old
        self.rewards = torch.tensor([t.reward for t in trajs], dtype=torch.float32)
        self.group_ids = torch.tensor([t.group for t in trajs], dtype=torch.long)
        return self

    def model_tokens_only(self, weights: torch.Tensor) -> torch.Tensor:
        """``weights`` [N, L] with every token an environment wrote set to 0 (no-op single-turn)."""
        return weights if self.env_mask is None else weights.masked_fill(self.env_mask, 0.0)

    def groups_of(self, rows: list[int]) -> list[list[int]]:
        """``rows`` bucketed by group, in order of first appearance."""
        groups: dict[int, list[int]] = {}
        for i in rows:
            groups.setdefault(self.trajectories[i].group, []).append(i)
        return list(groups.values())

    def split_groups(self, rows: list[int], parts: int) -> list[list[int]]:
        """Split ``rows`` into up to ``parts`` mini-batches along group boundaries."""
        groups = self.groups_of(rows)
        if not groups:  # no row carries weight this step
            return []
        size = -(-len(groups) // max(1, min(parts, len(groups))))
        return [[i for g in groups[k : k + size] for i in g] for k in range(0, len(groups), size)]

    def group_chunks(self, rows: list[int], max_rows: int, max_tokens: int | None = None) -> list[list[int]]:
        """Micro-batches of whole groups, each at most ``max_rows`` rows and, with ``max_tokens``,
        at most that many padded tokens (rows x longest row); a group over a limit is alone."""
        chunks: list[list[int]] = []
        for g in self.groups_of(rows):
            if chunks:
                merged = chunks[-1] + g
                tokens = len(merged) * max(self.row_length(i) for i in merged)
                if len(merged) <= max_rows and (max_tokens is None or tokens <= max_tokens):
                    chunks[-1] = merged
                    continue
            chunks.append(list(g))
        return chunks

    def row_length(self, row: int) -> int:
        """Tokens of row ``row`` without padding (prompt + response)."""
        t = self.trajectories[row]
        return len(t.prompt_ids) + len(t.response_ids)

    def response_slice(self, row: int) -> slice:
        """Positions of row ``row``'s response tokens in the padded tensors."""
        t = self.trajectories[row]
        start = len(t.prompt_ids)
        return slice(start, start + len(t.response_ids))

    def to(self, device: torch.device | str) -> "RolloutBatch":
        """Move tensors in place; Lightning calls this instead of copying the dataclass."""
        for name in ("input_ids", "attention_mask", "response_mask", "engine_logprobs", "rewards",
                     "group_ids", "advantages", "loss_weights", "ref_logprobs", "env_mask"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self
