"""Plot training reward and held-out accuracy of one or more runs from their metrics.csv.

    python scripts/plot_run.py runs/quickstart/csv/version_0 runs/grpo/csv/version_0 \
        --labels IBPO GRPO --out docs/img/quickstart.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_series(run_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(policy updates, value)]}: a training row is placed at the version that sampled
    it, a validation row at the number of updates the evaluated policy had received."""
    series: dict[str, list[tuple[float, float]]] = {}
    with open(run_dir / "metrics.csv") as f:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="directories holding metrics.csv")
    parser.add_argument("--labels", nargs="*", help="one label per run")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    runs = [r.parent if r.name == "metrics.csv" else r for r in args.runs]  # the file or its folder
    for run in runs:
        if not (run / "metrics.csv").is_file():
            parser.error(f"{run} holds no metrics.csv (give a run's csv/version_N folder or its metrics.csv)")
    if args.labels and len(args.labels) != len(runs):
        parser.error(f"{len(runs)} runs but {len(args.labels)} --labels: give one label per run")
    labels = args.labels or [str(r) for r in runs]
    fig, (ax_r, ax_v) = plt.subplots(1, 2, figsize=(10, 3.8))
    for run, label in zip(runs, labels):
        s = read_series(run)
        val_steps = s.get("val/accuracy", [])
        if "train/reward_mean" in s:
            ax_r.plot(*zip(*s["train/reward_mean"]), label=label, alpha=0.8)
        if val_steps:
            ax_v.plot(*zip(*val_steps), marker="o", label=label)
    ax_r.set(title="training reward (mean of sampled groups)", xlabel="policy updates (RL steps)", ylabel="reward")
    ax_v.set(title="held-out greedy accuracy", xlabel="policy updates (RL steps)", ylabel="accuracy", ylim=(0, 1))
    for ax in (ax_r, ax_v):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
