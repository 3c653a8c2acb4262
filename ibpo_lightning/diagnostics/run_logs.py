"""What a run's CSV log says: its metric series (by step, or by the generated tokens a policy
cost), and one step's time by phase (the step benchmark's summary and per-phase table against the
machine's matrix-multiply peak).

Shared by the report and benchmark scripts (``scripts/plot_run.py``, ``bench_step.py``,
``bench_precision.py``, ``study.py``) and the tests that read stored outputs.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

PHASES = ["generate", "reward", "estimator", "logprobs", "train", "sync"]
"""The phases ``StepClock`` times, in the order of a step."""


def metrics_file(run: Path) -> Path:
    """A run's ``metrics.csv``: ``run`` itself when it is a ``.csv`` file, else the one in that folder."""
    return run if run.suffix == ".csv" else run / "metrics.csv"


def read_series(run: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(policy updates, value)]} of a CSV log (its folder or the file): a training row is
    placed at the version that sampled it, a validation row at the number of updates the
    evaluated policy had received."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(metrics_file(Path(run))) as f:
        for row in csv.DictReader(f):
            if row.get("policy_version"):
                step = float(row["policy_version"]) - 1
            elif row.get("val/policy_version"):
                step = float(row["val/policy_version"])
            else:
                step = float(row["step"]) + (1 if row.get("val/accuracy") and float(row["step"]) > 0 else 0)
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    series.setdefault(key, []).append((step, float(value)))
    return series


def tokens_per_step(series: dict) -> list[float]:
    """Generated tokens of every kind, per training step (aligned with ``train/reward_mean``); an
    episode's tool results (``tokens/observation``) are read, not generated, and do not count."""
    return [sum(v for k, vals in series.items() if k.startswith("tokens/") and k != "tokens/observation"
                for s, v in vals if s == step)
            for step, _ in series["train/reward_mean"]]


def tokens_before(series: dict, step: float) -> float:
    """Generated tokens (every kind) of the training steps before ``step``: what a policy evaluated
    after ``step`` updates cost."""
    return sum(n for (s, _), n in zip(series["train/reward_mean"], tokens_per_step(series)) if s < step)


def by_tokens(series: dict, key: str, start: float | None = None) -> list[tuple[float, float]]:
    """``key``'s readings placed at the generated tokens their policy cost, from ``start`` (the
    reading before training, when the run has none at step 0) at 0 tokens."""
    points = [(tokens_before(series, step), v) for step, v in series.get(key, [])]
    if start is not None and not any(t == 0 for t, _ in points):
        points.insert(0, (0.0, start))
    return sorted(points)


def value_at(points: list[tuple[float, float]], x: float) -> float:
    """Linear interpolation of sorted ``(x, value)`` points at ``x``; nan outside them."""
    for (x0, v0), (x1, v1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return v0 if x1 == x0 else v0 + (v1 - v0) * (x - x0) / (x1 - x0)
    return points[0][1] if points and points[0][0] == x else float("nan")


def summarise_steps(csv_dir: Path, warmup: int) -> dict[str, float]:
    s = read_series(csv_dir)
    steps = sorted({st for st, _ in s["time/step"]})[warmup:]
    if not steps:
        raise SystemExit(f"{csv_dir}: no step after the {warmup} warm-up step(s)")

    def mean(key: str) -> float:
        values = [v for st, v in s.get(key, []) if st in steps]
        return statistics.mean(values) if values else 0.0

    step_times = [v for st, v in s["time/step"] if st in steps]
    out = {f"{p}_s": mean(f"time/{p}") for p in PHASES}
    out.update(step_s=statistics.mean(step_times), step_s_median=statistics.median(step_times),
               step_s_stdev=statistics.stdev(step_times) if len(step_times) > 1 else 0.0, steps=len(steps),
               generated_tokens_per_s=mean("throughput/generated_tokens_per_s"),
               trained_tokens_per_s=mean("throughput/trained_tokens_per_s"),
               generated_tokens_per_step=sum(mean(k) for k in s if k.startswith("tokens/")),
               peak_rss_gib=max(v for _, v in s["memory/peak_rss_gib"]),
               reward_mean=mean("train/reward_mean"),
               parameters=mean("model/parameters"), prompt_tokens_per_step=mean("generate/prompt_tokens"),
               logprob_tokens_per_step=mean("logprobs/tokens"), train_tokens_per_step=mean("train/tokens_real"),
               train_padded_tokens_per_step=mean("train/tokens_padded"))
    if "memory/peak_cuda_gib" in s:
        out["peak_cuda_gib"] = max(v for _, v in s["memory/peak_cuda_gib"])
    return out



def matmul_peak(dtype, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of a ``size`` x ``size`` matrix multiply in ``dtype``."""
    import time

    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9



def phase_table(r: dict[str, float], peaks: dict[str, float]) -> str:
    """Per phase: seconds, tokens, model GFLOP/s and its share of each dtype's probed peak."""
    p = r["parameters"]
    generated = r["generated_tokens_per_step"] + r["prompt_tokens_per_step"]
    rows = [("generate", r["generate_s"], generated, 2 * p * generated),
            ("log-probs", r["logprobs_s"], r["logprob_tokens_per_step"], 2 * p * r["logprob_tokens_per_step"]),
            ("train", r["train_s"], r["train_tokens_per_step"], 6 * p * r["train_tokens_per_step"]),
            ("sync", r["sync_s"], 0.0, 0.0)]
    names = list(peaks)
    lines = ["| phase | s | tokens | GFLOP/s | " + " | ".join(f"% of {n} peak ({peaks[n]:.0f})" for n in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for name, seconds, tokens, flops in rows:
        rate = flops / seconds / 1e9 if seconds > 0 and flops else 0.0
        shares = " | ".join(f"{100 * rate / peaks[n]:.0f}%" if rate else "-" for n in names)
        lines.append(f"| {name} | {seconds:.2f} | {tokens:.0f} | {rate:.1f} | {shares} |")
    padded = r["train_padded_tokens_per_step"]
    padding = 1 - r["train_tokens_per_step"] / padded if padded else 0.0
    lines.append(f"\ntrain micro-batches: {100 * padding:.1f}% padding ({r['train_tokens_per_step']:.0f} tokens "
                 f"of {padded:.0f} padded, summed over the step's passes)")
    return "\n".join(lines)

