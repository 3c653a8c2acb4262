"""SRPO (arXiv 2605.25507): resets from the thought the policy itself names as the first wrong one.

The parent (first wrong sample of a group) is shown to the policy as numbered thoughts with
binary feedback only ("the final answer is incorrect", the paper's "L2" level); the answer's
``\\boxed{N}`` picks the reset thought; the rest is ``ResetEstimator`` (``reset.py``). The
generation is counted as ``tokens/localisation``.

Reconstructed (docs/estimators.md): the prompt wording, the parse rules of ``parse_step`` and
the ``fallback`` when the answer names no step (the paper's behaviour there is not documented).
"""

from __future__ import annotations

import re
from typing import Literal

from ibpo_lightning.estimators.reset import ResetEstimator
from ibpo_lightning.types import GenerationKind, Trajectory

LOCALISATION_PROMPT = (
    "{problem}\n\nHere is an attempted solution, split into numbered steps:\n\n{steps}\n\n"
    "The final answer of this attempt is incorrect. Find the step where the reasoning first went "
    "wrong: the step whose decision or action derailed it, not the step where the failure only "
    "becomes visible. Do not solve the problem again. Commit to exactly one step number and end "
    "with \\boxed{N}."
)


def parse_step(text: str) -> int | None:
    """Step named by a localisation answer: the last ``\\boxed{N}`` (or ``\\boxed{Step N}``), else
    the last "step N" / "thought N", else a reply that is only a number; None if none."""
    for pattern in (r"\\boxed\{\s*(?:step|thought)?\s*#?\s*(\d+)", r"(?:step|thought)\s*#?\s*(\d+)",
                    r"^\s*(\d+)\s*\.?\s*$"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return int(found[-1])
    return None


class SRPO(ResetEstimator):
    """Self-localised resets: the policy names the first wrong thought of the parent.

    Args:
        localisation_prompt: template with ``{problem}`` and ``{steps}`` (numbered thoughts); the
            answer is parsed by ``parse_step`` (``\\boxed{N}`` preferred).
        localisation_temperature: sampling temperature of the localisation call (paper: 0.3).
        localisation_max_new_tokens: length limit of the localisation answer (paper: 4096).
        fallback: reset thought when the answer names no step: ``random`` (as RRPO), ``first``
            (N = 1, a fresh resample) or ``last``.
        reset_offset: move the named thought this many thoughts earlier (the code's
            ``SRPO_LOC_OFFSET``, 0 by default).
        **kwargs: the arguments of ``ResetEstimator`` (n_resets, delimiter, train_parent, ...).
    """

    name = "srpo"

    def __init__(self, localisation_prompt: str = LOCALISATION_PROMPT, localisation_temperature: float = 0.3,
                 localisation_max_new_tokens: int = 4096, fallback: Literal["random", "first", "last"] = "random",
                 reset_offset: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        for field in ("{problem}", "{steps}"):
            if field not in localisation_prompt:
                raise ValueError(f"estimator.localisation_prompt must contain {field}")
        if fallback not in ("random", "first", "last"):
            raise ValueError(f"estimator.fallback must be random, first or last, got {fallback!r}")
        if reset_offset < 0:
            raise ValueError(f"estimator.reset_offset must be >= 0, got {reset_offset}")
        self.localisation_prompt, self.localisation_temperature = localisation_prompt, localisation_temperature
        self.localisation_max_new_tokens = localisation_max_new_tokens
        self.fallback, self.reset_offset = fallback, reset_offset

    def steps_text(self, tokenizer, traj: Trajectory) -> str:
        cuts = (0, *traj.step_boundaries, len(traj.response_ids))
        return "\n".join(f"Step {k + 1}: {tokenizer.decode(traj.response_ids[a:b], skip_special_tokens=True).strip()}"
                         for k, (a, b) in enumerate(zip(cuts, cuts[1:])))

    def reset_points(self, batch, parents, sampler, task) -> list[int]:
        trajs = batch.trajectories
        sizes = [len(trajs[i].step_boundaries) + 1 for i in parents]
        asked = [i for i, n in zip(parents, sizes) if n > 1]  # one thought: nothing to localise
        prompts = [sampler.encode(self.localisation_prompt.replace("{problem}", batch.problems[trajs[i].group])
                                  .replace("{steps}", self.steps_text(sampler.tokenizer, trajs[i]))) for i in asked]
        answers = sampler.generate(prompts, 1, temperature=self.localisation_temperature,
                                   max_new_tokens=self.localisation_max_new_tokens,
                                   kind=GenerationKind.LOCALISATION) if prompts else []
        named = {i: parse_step(a[0].text) for i, a in zip(asked, answers)}
        points, rng = [], self.generator(batch)
        for i, n in zip(parents, sizes):
            k = named.get(i)
            if k is None:
                k = {"first": 1, "last": n}.get(self.fallback) or rng.randint(1, n)
            points.append(max(1, min(k, n) - self.reset_offset))
        batch.stats[f"{self.name}/localisation_parsed"] = (
            sum(v is not None for v in named.values()) / len(named) if named else 0.0)
        return points
