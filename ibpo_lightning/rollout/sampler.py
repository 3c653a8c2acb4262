"""The sampler: the one interface through which the data stream, estimators and evaluation generate.

A plain object, no Lightning in it. It holds the rollout engine, the tokenizer and the sampling
settings, encodes chat prompts, seeds each generate call, accounts generated tokens by kind, and
knows which policy version the engine's weights are. ``RolloutCallback`` builds it, binds the
engine to the policy and keeps the weights (and the versions) current; everything else only
calls the methods below. A test fake implements the same methods.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

from ibpo_lightning.environments.base import Environment
from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.rollout.episodes import TurnFormat, continue_episodes, run_episodes
from ibpo_lightning.types import GenerationKind, RolloutBatch, Trajectory


def encode_chat(tokenizer, user_text: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of a chat prompt ending where the assistant's answer starts: the one prompt
    format of sampling, evaluation and supervised fine-tuning (``sft.data``)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_text})
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


class Sampler:
    """Generates with a rollout engine under one set of sampling settings.

    ``policy_version`` is the trainer's version (it keys the seeds, so a resumed run samples
    what the uninterrupted one would have); ``engine_version`` the version of the weights the
    engine holds, the version every sampled batch carries.
    """

    def __init__(self, engine: RolloutEngine, group_size: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int | None, rank: int = 0, environment: Environment | None = None) -> None:
        self.engine, self.group_size, self.max_new_tokens = engine, group_size, max_new_tokens
        self.temperature, self.top_p, self.seed, self.rank = temperature, top_p, seed, rank
        self.tokenizer = None
        self.context_length: int | None = None
        """Longest prompt + response the policy takes (None: unknown)."""
        self.policy_version = self.engine_version = 0
        self.tokens_by_kind: dict[str, int] = {}
        self.prompt_tokens = 0
        """Prompt tokens handed to the engine this step (each of a call's prompts once)."""
        self.episode_counts: dict[str, int] = {}
        """This step's multi-turn episodes: ``episodes``, ``turns``, ``tool_calls``, ``malformed_calls``
        and ``observation_tokens`` (tokens environments wrote), summed."""
        self.calls = 0
        self.environment: Environment | None = environment
        self._turn_formats: dict[str, TurnFormat] = {}

    @property
    def scoring_temperature(self) -> float:
        """The temperature the trainer scores sampled tokens at (1 for greedy sampling)."""
        return self.temperature if self.temperature > 0 else 1.0

    @property
    def bound(self) -> bool:
        return self.tokenizer is not None

    def bind(self, policy, tokenizer, version: int, rank: int = 0, compute_dtype=None) -> None:
        """Hand the engine the trainer's policy and compute dtype (see ``RolloutEngine.bind``);
        refuse a length budget the model cannot hold."""
        self.tokenizer, self.rank = tokenizer, rank
        self.context_length = getattr(getattr(policy, "config", None), "max_position_embeddings", None)
        if self.context_length is not None and self.max_new_tokens >= self.context_length:
            raise ValueError(f"rollout.max_new_tokens={self.max_new_tokens} does not fit the model's context of "
                             f"{self.context_length} positions (prompt included): lower it below {self.context_length}")
        self.engine.bind(policy, tokenizer, compute_dtype)
        self.policy_version = self.engine_version = version

    # -- generation ---------------------------------------------------------------------------
    def encode(self, user_text: str, system_prompt: str | None = None) -> list[int]:
        """Token ids of a chat prompt ending where the assistant's answer starts (``encode_chat``)."""
        return encode_chat(self.tokenizer, user_text, system_prompt)

    def generate(self, prompts: list[list[int]], n: int, *, temperature: float | None = None,
                 max_new_tokens: int | list[int] | None = None, kind: str = GenerationKind.FRESH) -> list[list[Sample]]:
        """``n`` samples per token prompt, counted under ``kind`` for compute accounting;
        ``max_new_tokens`` is one budget or one per prompt."""
        budget = max_new_tokens or self.max_new_tokens
        if self.context_length is not None:
            budgets = budget if isinstance(budget, list) else [budget] * len(prompts)
            longest, most = max(((len(p) + b, b) for p, b in zip(prompts, budgets)), default=(0, 0))
            if longest > self.context_length:
                raise ValueError(f"a {kind} prompt of {longest - most} tokens plus rollout.max_new_tokens={most} "
                                 f"exceeds the model's context of {self.context_length} positions")
        out = self.engine.generate(prompts, n, max_new_tokens=budget,
                                   temperature=self.temperature if temperature is None else temperature,
                                   top_p=self.top_p, seed=self._call_seed(kind))
        self.prompt_tokens += sum(len(p) for p in prompts)
        produced = sum(len(s.token_ids) for group in out for s in group)
        self.tokens_by_kind[kind] = self.tokens_by_kind.get(kind, 0) + produced
        return out

    def answer(self, problems: Sequence, prompts: list[list[int]], n: int, *, temperature: float | None = None,
               max_new_tokens: int | None = None, kind: str = GenerationKind.FRESH) -> list[list[Sample]]:
        """``n`` answers to each problem from its token prompt: one generate call, or with an
        environment ``n`` multi-turn episodes each (``EpisodeSample``)."""
        if self.environment is None:
            return self.generate(prompts, n, temperature=temperature, max_new_tokens=max_new_tokens, kind=kind)
        return run_episodes(self, self.environment, problems, prompts, n, temperature=temperature,
                            max_new_tokens=max_new_tokens, kind=kind)

    def continue_rows(self, batch: RolloutBatch, rows: list[int], cuts: list[int], n: int, *, kind: str,
                      temperature: float | None = None) -> list[list[Sample]]:
        """``n`` continuations of each row of ``batch`` after its first ``cuts`` response tokens: of
        the prefix (``continue_prefixes``), or with an environment of the episode from that turn on
        (``continue_episodes``; a cut is then the start of a model turn). Each sample holds only
        what follows the cut (``segments.continuation`` joins them)."""
        trajs = [batch.trajectories[i] for i in rows]
        if self.environment is None:
            return self.continue_prefixes([t.prompt_ids for t in trajs],
                                          [t.response_ids[:c] for t, c in zip(trajs, cuts)], n, kind=kind,
                                          temperature=temperature)
        return continue_episodes(self, self.environment, [batch.groups[t.group] for t in trajs], trajs, cuts, n, kind=kind, temperature=temperature)

    def turn_format(self, role: str) -> TurnFormat:
        """How observations of ``role`` are rendered between turns (read off the chat template once)."""
        if role not in self._turn_formats:
            self._turn_formats[role] = TurnFormat(self.tokenizer, role)
        return self._turn_formats[role]

    def continue_prefixes(self, prompts: list[list[int]], prefixes: list[list[int]], n: int, *, kind: str,
                          temperature: float | None = None) -> list[list[Sample]]:
        """``n`` continuations of each ``prompt + prefix``.

        Each continuation gets the budget left after its prefix (``max_new_tokens`` minus the
        prefix length, at least 1), so a reset or probe is never longer than a fresh sample;
        prefixes of equal length share one generate call.
        """
        budgets = [max(1, self.max_new_tokens - len(p)) for p in prefixes]
        out: list[list[Sample] | None] = [None] * len(prompts)
        for budget in sorted(set(budgets)):
            idx = [i for i, b in enumerate(budgets) if b == budget]
            got = self.generate([prompts[i] + prefixes[i] for i in idx], n, temperature=temperature,
                                max_new_tokens=budget, kind=kind)
            for i, samples in zip(idx, got):
                out[i] = samples
        return out

    def _call_seed(self, kind: str) -> int | None:
        """A seed that depends only on (seed, rank, policy version, kind, call number in this step)."""
        if self.seed is None:
            return None
        self.calls += 1
        return self._seed_of(f"{kind}:{self.calls}")

    def _seed_of(self, what: str) -> int | None:
        if self.seed is None:
            return None
        key = f"{self.seed}:{self.rank}:{self.policy_version}:{what}".encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")

    # -- one step's fresh groups -----------------------------------------------------------------
    def sample_groups(self, problems: Sequence, system_prompt: str | None) -> RolloutBatch:
        """One group of ``group_size`` fresh samples per problem (rewards not yet scored).

        Starts a step: token accounting and call numbering restart, and the engine forgets its
        prompt cache, so what a step samples depends on the weights and the step only.
        """
        start = time.perf_counter()
        self.tokens_by_kind, self.prompt_tokens, self.episode_counts, self.calls = {}, 0, {}, 0
        self.engine.reset_cache()
        prompts = [self.encode(p.prompt, system_prompt) for p in problems]
        groups = self.answer(problems, prompts, self.group_size)
        trajs = [Trajectory.from_sample(prompt, p.prompt, s, group=g)
                 for g, (p, prompt, group) in enumerate(zip(problems, prompts, groups)) for s in group]
        batch = RolloutBatch(trajs, policy_version=self.engine_version, seed=self._seed_of("estimator"),
                             groups=list(problems))
        batch.stats["time/generate"] = time.perf_counter() - start
        return batch
