"""Policy entropy and held-out accuracy of runs side by side, from their metrics.csv.

Prints one row per run: ``train/entropy`` at steps 1, 5, 10, 15 and 20 (the mean over the
trained tokens of each step), its mean over all steps, the entropy coefficient used, and the
last held-out accuracy. The table of ``docs/evaluation.md`` ("Run health") is this script on the
stored quickstart runs:

    python scripts/entropy_report.py docs/data/health/quickstart_metrics_run0.csv \\
        docs/data/health/quickstart_metrics.csv docs/data/health/quickstart_entropy_coef_*.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def summary(path: Path) -> dict:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r.get("train/entropy")]
    entropy = [float(r["train/entropy"]) for r in train]
    coef = float(train[0].get("train/entropy_coef") or 0.0) if train else 0.0
    accuracy = [float(r["val/accuracy"]) for r in rows if r.get("val/accuracy")]
    return {"entropy": entropy, "coef": coef, "accuracy": accuracy[-1] if accuracy else float("nan")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="metrics.csv files")
    args = parser.parse_args(argv)
    steps = (1, 5, 10, 15, 20)
    print("| run | entropy coef | " + " | ".join(f"entropy, step {s}" for s in steps)
          + " | mean over steps | held-out accuracy at the end |")
    print("|---|---|" + "---|" * len(steps) + "---|---|")
    for path in args.runs:
        s = summary(path)
        at = [f"{s['entropy'][k - 1]:.3f}" if len(s["entropy"]) >= k else "-" for k in steps]
        mean = sum(s["entropy"]) / len(s["entropy"]) if s["entropy"] else float("nan")
        print(f"| {path.stem} | {s['coef']:g} | " + " | ".join(at) + f" | {mean:.3f} | {s['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
