"""Plot training reward and held-out accuracy of one or more runs from their metrics.csv.

    python scripts/plot_run.py runs/quickstart/csv/version_0 runs/grpo/csv/version_0 \
        --labels IBPO GRPO --out docs/img/quickstart.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ibpo_lightning.diagnostics.run_logs import metrics_file, read_series  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="CSV logs: a run's csv/version_N folder or a .csv file")
    parser.add_argument("--labels", nargs="*", help="one label per run")
    parser.add_argument("--out", type=Path, default=Path("curves.png"))
    args = parser.parse_args(argv)
    runs = args.runs
    for run in runs:
        if not metrics_file(run).is_file():
            parser.error(f"{run} holds no metrics.csv (give a run's csv/version_N folder or a .csv file)")
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
