"""Named benchmark presets over the shared data files: GSM8K, MATH-500, AIME24, Countdown.

``benchmark("gsm8k", limit=100)`` is an evaluation-only task holding a fixed (seeded) subset of
100 GSM8K test problems. Files are looked up under ``data_dir``: the argument, else the
``IBPO_DATA`` environment variable, else ``../shared/data`` (relative to the working directory,
as in the shipped configs). The same tasks from the Hub: see ``docs/evaluation.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ibpo_lightning.tasks.base import Task
from ibpo_lightning.tasks.countdown import CountdownTask
from ibpo_lightning.tasks.jsonl import JsonlTask

DATA_ENV = "IBPO_DATA"
"""Environment variable naming the data directory of the benchmark presets."""

BOXED = "Solve the problem step by step. Put the final answer in \\boxed{}."

PRESETS: dict[str, tuple[type[Task], dict[str, Any]]] = {
    "gsm8k": (JsonlTask, dict(heldout_path="math/gsm8k_test.jsonl", prompt_field="question",
                              answer_format="gsm8k", system_prompt=BOXED)),
    "math500": (JsonlTask, dict(heldout_path="math/math500_test.jsonl", prompt_field="problem",
                                answer_format="plain", system_prompt=BOXED)),
    "aime24": (JsonlTask, dict(heldout_path="math/aime24_test.jsonl", prompt_field="problem",
                               answer_format="integer", system_prompt=BOXED)),
    "countdown": (CountdownTask, dict(heldout_path="train/countdown_test.jsonl")),
}
"""Benchmark name -> (task class, its arguments; ``heldout_path`` relative to the data directory)."""


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The benchmark data directory: ``path``, else ``$IBPO_DATA``, else ``../shared/data``."""
    return Path(path or os.environ.get(DATA_ENV) or "../shared/data").expanduser()


def benchmark(name: str, directory: str | os.PathLike | None = None, limit: int | None = None,
              seed: int = 0, **overrides: Any) -> Task:
    """The evaluation-only task of preset ``name``, on ``limit`` problems (None: all).

    ``overrides`` replace preset arguments (``system_prompt=...``, ``reward=NumberReward()``).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown benchmark {name!r}; presets: {', '.join(sorted(PRESETS))}")
    cls, kwargs = PRESETS[name]
    path = data_dir(directory) / kwargs["heldout_path"]
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r}: {path} not found; pass the data directory "
                                f"(--data-dir) or set ${DATA_ENV}")
    kwargs = {**kwargs, "heldout_path": str(path), "heldout_size": limit, "seed": seed, **overrides}
    return cls(**kwargs)
