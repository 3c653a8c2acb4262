"""The quickstart in fp32 and bf16, alternating, over seeds: step time by phase, held-out accuracy,
the engine/trainer log-prob mismatch, and bench_step's per-phase table (GFLOP/s against the
machine's probed fp32 and bf16 matmul peaks, padding) per precision.

    python scripts/bench_precision.py --seeds 0 1 --out runs/bench_precision

Runs ``ibpo fit -c configs/quickstart.yaml`` (plus any ``--config`` overlays) once per (seed,
precision), precisions alternating (ABBA over seeds) so that both see the same machine load. Each
run writes ``<out>/<precision>_s<seed>/`` and its ``summary.json``; a rerun skips runs that have
one, so a stopped study continues where it stopped (and a run over finished ones only prints the
tables). Prints a markdown table of every finished run and, per precision, the per-phase table
against the matmul peaks (probed once, after the runs, kept in ``<out>/peaks.json``), the mean
step time and its ratio to the first precision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from ibpo_lightning.diagnostics.run_logs import PHASES, matmul_peak, phase_table, read_series
from ibpo_lightning.diagnostics.run_logs import summarise_steps as phase_summary


def run(configs: list[str], precision: str, seed: int, out: Path) -> None:
    logger = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
              f'{{"save_dir": "{out}", "name": "csv", "version": "", "flush_logs_every_n_steps": 1}}}}]')
    cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit"]
    for c in configs:
        cmd += ["-c", c]
    cmd += ["--trainer.precision", precision, "--seed_everything", str(seed), "--trainer.default_root_dir", str(out),
            "--trainer.logger", logger, "--trainer.callbacks",
            '[{"class_path": "ibpo_lightning.diagnostics.StepClock"}]', "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false"]
    subprocess.run(cmd, check=True)


def summarise(csv_dir: Path) -> dict:
    """bench_step's per-phase summary (first step left out as warm-up), the step time as the sum of
    its phases (validation passes left out), held-out accuracy before and after, the mismatch."""
    out = phase_summary(csv_dir, warmup=1)
    out["step_s"] = sum(out[f"{p}_s"] for p in PHASES)
    s = read_series(csv_dir)
    accuracy = sorted(s["val/accuracy"])
    steps = {st for st, _ in s["time/step"]}
    diffs = [v for st, v in s.get("rollout/logprob_diff_mean", []) if st in steps]
    return {**out, "accuracy_before": accuracy[0][1], "accuracy_after": accuracy[-1][1],
            "after_step": accuracy[-1][0], "logprob_diff_mean": statistics.mean(diffs) if diffs else 0.0,
            "logprob_diff_max": max((v for _, v in s.get("rollout/logprob_diff_max", [])), default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="overlays after configs/quickstart.yaml")
    ap.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_precision"))
    args = ap.parse_args()
    configs = ["configs/quickstart.yaml", *args.config]
    results: dict[tuple[str, int], dict] = {}
    for i, seed in enumerate(args.seeds):
        for precision in args.precisions[:: 1 if i % 2 == 0 else -1]:  # ABBA: a drifting load cancels
            folder = args.out / f"{precision}_s{seed}"
            summary = folder / "summary.json"
            if not summary.exists():
                run(configs, precision, seed, folder)
                summary.write_text(json.dumps(summarise(folder / "csv"), indent=1))
            results[(precision, seed)] = json.loads(summary.read_text())
    print("| precision | seed | " + " | ".join(PHASES) + " | step (s) | held-out accuracy before -> after "
          "| log-prob diff mean / max |\n|---|---|" + "---|" * (len(PHASES) + 3))
    for (precision, seed), r in results.items():
        phases = " | ".join(f"{r[f'{p}_s']:.2f}" for p in PHASES)
        print(f"| {precision} | {seed} | {phases} | **{r['step_s']:.2f}** | {r['accuracy_before']:.3f} -> "
              f"{r['accuracy_after']:.3f} (step {r['after_step']:.0f}) | {r['logprob_diff_mean']:.4f} / "
              f"{r['logprob_diff_max']:.3f} |")
    base = statistics.mean(r["step_s"] for (p, _), r in results.items() if p == args.precisions[0])
    probed = args.out / "peaks.json"  # probed once, after the runs, and kept with them
    if not probed.exists():
        probed.write_text(json.dumps({"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}))
    peaks = json.loads(probed.read_text())
    for precision in args.precisions:
        rs = [r for (p, _), r in results.items() if p == precision]
        mean_run = {k: statistics.mean(r[k] for r in rs) for k in rs[0]}
        print(f"\n{precision}, mean of {len(rs)} run(s):\n" + phase_table(mean_run, peaks))
        step, train = statistics.mean(r["step_s"] for r in rs), statistics.mean(r["train_s"] for r in rs)
        acc = [r["accuracy_after"] for r in rs]
        print(f"\n{precision}: step {step:.2f} s ({base / step:.2f}x of {args.precisions[0]}), train {train:.2f} s, "
              f"accuracy after {statistics.mean(acc):.3f} (runs: {', '.join(f'{a:.3f}' for a in acc)})")


if __name__ == "__main__":
    main()
