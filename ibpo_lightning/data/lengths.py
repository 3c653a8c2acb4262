"""Prompts that cannot fit the context, found when the task loads instead of at the step that draws them.

A prompt fits when its chat-formatted tokens plus the response budget fit both the policy's context
(``max_position_embeddings``) and the engine's (``RolloutEngine.max_context``, vLLM's
``max_model_len``). The data module checks every problem a stage will use before the first step
(``RLDataModule.fit_prompts``, called by the policy module once its tokenizer exists) and either
fails naming the split, the row and the file, or, with ``data.drop_long_prompts``, leaves such rows
out with one warning.

Counting is fast: the texts are tokenized in one batch and the chat template's own tokens added;
rows within a few tokens of the limit (where the template's joins could shift a count) are encoded
exactly with ``encode_chat``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ibpo_lightning.rollout.sampler import encode_chat
from ibpo_lightning.tasks.base import Problem, Task

_MARGIN = 8
"""Rows whose estimate is this close to the limit are counted exactly."""


@dataclass(frozen=True)
class PromptRoom:
    """The most prompt tokens a split's samples leave room for, and why."""

    tokens: int
    why: str
    """E.g. "the model's context of 2048 positions less rollout.max_new_tokens=512"."""


def prompt_room(context: int | None, engine_context: int | None, budget: int, budget_name: str) -> PromptRoom | None:
    """Room for a prompt under the tighter of the two context limits (None when neither is known)."""
    limits = [(c, what) for c, what in ((context, "the model's context"), (engine_context, "the engine's "
              "max_model_len")) if c is not None]
    if not limits:
        return None
    limit, what = min(limits)
    if budget >= limit:
        raise ValueError(f"{budget_name}={budget} does not fit {what} of {limit} positions (prompt included): "
                         f"lower it below {limit}")
    return PromptRoom(limit - budget, f"{what} of {limit} positions less {budget_name}={budget}")


def prompt_lengths(tokenizer, problems: Sequence[Problem], system_prompt: str | None, room: int) -> list[int]:
    """Chat-formatted prompt tokens of each problem (exact for every row within reach of ``room``)."""
    if not problems:
        return []
    overhead = len(encode_chat(tokenizer, "", system_prompt))
    texts = [p.prompt for p in problems]
    bare = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [overhead + len(ids) for ids in bare]
    for i, n in enumerate(lengths):
        if n > room - _MARGIN:
            lengths[i] = len(encode_chat(tokenizer, texts[i], system_prompt))
    return lengths


def fit_split(problems: Sequence[Problem], lengths: list[int], room: PromptRoom, split: str, task: str,
              drop: bool) -> list[Problem]:
    """``problems`` whose prompts fit; a ValueError naming the rows that do not unless ``drop``."""
    long = [i for i, n in enumerate(lengths) if n > room.tokens]
    if not long:
        return list(problems)
    shown = "; ".join(_where(problems[i], i, task) + f": {lengths[i]} tokens" for i in long[:3])
    more = f" and {len(long) - 3} more" if len(long) > 3 else ""
    which = f"{len(long)} of {len(problems)} {split} problems"
    why = f"longer than {room.tokens} tokens ({room.why}): {shown}{more}"
    if not drop:
        raise ValueError(f"{which} have prompts {why}. Shorten them, lower the response budget, or set "
                         "data.drop_long_prompts: true to leave them out")
    left_out = set(long)
    kept = [p for i, p in enumerate(problems) if i not in left_out]
    if not kept:
        raise ValueError(f"{which} have prompts {why}: data.drop_long_prompts would leave no {split} problem")
    warnings.warn(f"data.drop_long_prompts: left out {which}, whose prompts are {why}", stacklevel=2)
    return kept


def _where(problem: Problem, index: int, task: str) -> str:
    return problem.origin or f"{task} problem {index}"


def check_problems(tokenizer, problems: Sequence[Problem], system_prompt: str | None, room: PromptRoom | None,
                   split: str, task: str, drop: bool) -> list[Problem]:
    """One split checked against ``room`` (unchanged when no limit is known)."""
    if room is None:
        return list(problems)
    return fit_split(problems, prompt_lengths(tokenizer, problems, system_prompt, room.tokens), room, split, task,
                     drop)



Fits = Callable[[Sequence[Problem], str, bool], list[Problem]]
"""What the policy module hands a data module's ``fit_prompts``: ``fits(problems, split, drop)``
returns the problems kept, or raises a ValueError naming those that do not fit."""


class CheckedEvaluation:
    """Data-module mixin: the held-out and test problems as ``fit_prompts`` kept them (the task's
    own until it ran). The data module sets ``task`` and ``drop_long_prompts``."""

    task: Task
    drop_long_prompts: bool = False
    _checked: dict[str, list[Problem]] | None = None

    def fit_evaluation_prompts(self, stage: str, fits: Fits) -> None:
        checked = self._checked = self._checked or {}
        if stage in ("fit", "validate"):
            checked["held-out"] = fits(self.task.heldout_problems(), "held-out", self.drop_long_prompts)
        if stage == "test":
            checked["test"] = fits(self.task.test_problems(), "test", self.drop_long_prompts)

    def evaluation_problems(self, split: str) -> list[Problem]:
        """The ``"held-out"`` or ``"test"`` problems to evaluate on."""
        checked = (self._checked or {}).get(split)
        if checked is not None:
            return checked
        return list(self.task.heldout_problems() if split == "held-out" else self.task.test_problems())
