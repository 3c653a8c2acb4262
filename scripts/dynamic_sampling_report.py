"""The quickstart with dynamic sampling as a switch: DAPO before and after the switch, and IBPO and
GRPO with and without it (one seed each), from the stored metrics of each run.

    python scripts/dynamic_sampling_report.py                 # reads docs/data/quickstart_dynamic/
    python scripts/dynamic_sampling_report.py --data DIR

Each run is a folder holding the run's ``metrics.csv`` (the CSV logger's) and ``command.txt``
(how it was made). Prints the held-out greedy accuracy every 5 steps, the mean training reward of
the last 5 steps, the generated tokens by kind, and, for two runs of the same method, the first
step where their training records differ.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ROOT = Path(__file__).parents[1]
RUNS = {  # folder: label
    "dapo_before": "DAPO, before (dynamic sampling inside DAPO)",
    "dapo_after": "DAPO, after (loss settings + rollout.dynamic_sampling)",
    "dapo_after_repeat": "DAPO, after, the same command again",
    "ibpo": "IBPO (quickstart)",
    "ibpo_dynamic": "IBPO + dynamic sampling",
    "grpo": "GRPO",
    "grpo_dynamic": "GRPO + dynamic sampling",
}
PAIRS = [("dapo_before", "dapo_after"), ("dapo_before", "dapo_after_repeat"), ("dapo_after", "dapo_after_repeat")]
COMPARED = ("train/reward_mean", "tokens/fresh", "tokens/resample", "train/pg_loss", "train/grad_norm")


def read(run: Path) -> tuple[list[dict], dict[int, float]]:
    """Training rows in step order, and held-out accuracy by the number of updates evaluated."""
    train, heldout = [], {}
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/reward_mean"):
                train.append(row)
            elif row.get("val/accuracy"):
                version = row.get("val/policy_version") or "0"
                heldout[int(float(version))] = float(row["val/accuracy"])
    return sorted(train, key=lambda r: float(r["policy_version"])), heldout


def tokens(rows: list[dict], kind: str) -> float:
    return sum(float(r.get(f"tokens/{kind}") or 0.0) for r in rows)


def first_difference(a: list[dict], b: list[dict]) -> str:
    for x, y in zip(a, b):
        for key in COMPARED:
            if (x.get(key) or "") != (y.get(key) or ""):
                return f"step {int(float(x['policy_version']))} ({key}: {x.get(key)} vs {y.get(key)})"
    return "none: identical records"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "docs/data/quickstart_dynamic")
    args = parser.parse_args()
    found = {name: read(args.data / name) for name in RUNS if (args.data / name / "metrics.csv").exists()}
    print("| run | held-out 0 | 5 | 10 | 15 | 20 | reward, last 5 steps | fresh tokens | resampled tokens | other extra tokens |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (rows, heldout) in found.items():
        acc = " | ".join(f"{heldout[v]:.3f}" if v in heldout else "–" for v in (0, 5, 10, 15, 20))
        last = [float(r["train/reward_mean"]) for r in rows[-5:]]
        extra = sum(tokens(rows, k) for k in ("revision", "reset_suffix", "probe", "localisation"))
        print(f"| {RUNS[name]} | {acc} | {sum(last) / len(last):.3f} | {tokens(rows, 'fresh'):.0f} | "
              f"{tokens(rows, 'resample'):.0f} | {extra:.0f} |")
    print()
    for a, b in PAIRS:
        if a in found and b in found:
            print(f"- {RUNS[a]} vs {RUNS[b]}: first difference at {first_difference(found[a][0], found[b][0])}")


if __name__ == "__main__":
    main()
