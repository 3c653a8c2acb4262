"""Steps of a response and rows continuing a prefix: the plan-side helpers of the estimators that
reset (SRPO, RRPO) or probe (VinePPO, SPO) at step boundaries (the generation itself is
``Sampler.continue_prefixes``).

A boundary is a response-token offset where a step ends (the response end is never one), the
convention of ``Trajectory.step_boundaries``. Segmenting works on the decoded text of each token,
so a delimiter that the tokenizer splits over several tokens (``</thought>``) or merges into a
larger token (``".\\n\\n"``) is still found.
"""

from __future__ import annotations

import warnings

from ibpo_lightning.rollout.engine import Sample
from ibpo_lightning.types import Trajectory


def check_delimiter(field: str, delimiter: str | None) -> None:
    """Warn about a step delimiter that is almost surely a quoting slip: quotes or backslash escapes
    kept literally (a yaml or CLI value such as ``'"\\n"'`` reaches the estimator as four characters).
    Such a delimiter never matches, and the estimator finds no steps in any answer, silently."""
    if not delimiter:
        return
    quoted = len(delimiter) >= 2 and delimiter[0] == delimiter[-1] and delimiter[0] in "'\""
    escaped = any(e in delimiter for e in ("\\n", "\\t"))
    if quoted or escaped:
        real = delimiter.strip("'\"") if quoted else delimiter
        real = real.replace("\\n", "\n").replace("\\t", "\t")
        warnings.warn(f"estimator.{field} is {delimiter!r}: its quotes or backslash escapes are part of the text, "
                      f"so it only matches that literal text. For {real!r}, write the characters themselves: "
                      "in yaml a double-quoted \"\\n\", on the command line a real newline ($'\\n' in bash).",
                      UserWarning, stacklevel=3)


def delimiter_ends(token_texts: list[str], delimiter: str) -> tuple[int, ...]:
    """Offsets just after the token holding the last character of each ``delimiter`` occurrence."""
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    owner: list[int] = []  # token index of every character of the joined text
    for i, text in enumerate(token_texts):
        owner.extend([i] * len(text))
    joined, ends, start = "".join(token_texts), [], 0
    while (hit := joined.find(delimiter, start)) >= 0:
        start = hit + len(delimiter)
        end = owner[start - 1] + 1
        if end < len(token_texts) and (not ends or ends[-1] != end):
            ends.append(end)
    return tuple(ends)


def fixed_ends(length: int, size: int) -> tuple[int, ...]:
    """Boundaries every ``size`` tokens of a ``length``-token response."""
    if size < 1:
        raise ValueError(f"segment size must be >= 1, got {size}")
    return tuple(range(size, length, size))


def thin(boundaries: tuple[int, ...], keep: int | None) -> tuple[int, ...]:
    """At most ``keep`` of ``boundaries``, evenly spaced (merging steps in between)."""
    n = len(boundaries)
    if keep is None or n <= keep:
        return tuple(boundaries)
    if keep <= 0:
        return ()
    return tuple(boundaries[round((k + 1) * (n + 1) / (keep + 1)) - 1] for k in range(keep))


def token_texts(tokenizer, token_ids: list[int]) -> list[str]:
    """Decoded text of each token on its own."""
    return [tokenizer.convert_tokens_to_string([p]) for p in tokenizer.convert_ids_to_tokens(token_ids)]


def segment(tokenizer, token_ids: list[int], delimiter: str | None, size: int | None = None) -> tuple[int, ...]:
    """Step boundaries of a response: every ``size`` tokens if given, else at ``delimiter``."""
    if size is not None:
        return fixed_ends(len(token_ids), size)
    return delimiter_ends(token_texts(tokenizer, token_ids), delimiter)


def steps(tokenizer, t: Trajectory, delimiter: str | None, size: int | None = None) -> tuple[int, ...]:
    """Step boundaries of a row: the starts of its model turns after the first for a multi-turn
    episode (turns are its steps), else ``segment``'s."""
    if t.turn_ends:
        return tuple(b for b in t.turn_starts[1:] if b < len(t.response_ids))
    return segment(tokenizer, t.response_ids, delimiter, size)


def continuation(tokenizer, src: Trajectory, cut: int, sample: Sample, **fields) -> Trajectory:
    """A new row: the first ``cut`` response tokens of ``src`` followed by ``sample`` (the shared
    prefix marked by ``prefix_len``); ``fields`` set ``kind``, ``parent``, ``trained``. An episode's
    continuation (an ``EpisodeSample``) keeps the prefix's turns and environment spans before its own."""
    ids = src.response_ids[:cut] + sample.token_ids
    if hasattr(sample, "env_spans"):
        fields = {"env_spans": tuple(s for s in src.env_spans if s[1] <= cut) + tuple(
                      (a + cut, b + cut) for a, b in sample.env_spans),
                  "turn_ends": tuple(e for e in src.turn_ends if e <= cut) + tuple(e + cut for e in sample.turn_ends),
                  "answer_text": sample.answer_text, **fields}
    return Trajectory(prompt_ids=src.prompt_ids, response_ids=ids, logprobs=src.logprobs[:cut] + sample.logprobs,
                      prompt_text=src.prompt_text, response_text=tokenizer.decode(ids, skip_special_tokens=True),
                      group=src.group, finished=sample.finished, prefix_len=cut, **fields)
