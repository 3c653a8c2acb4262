"""Table of scripts/bench_vs_trl.sh: mean step time per run, and the TRL / ibpo-lightning ratios.

    python scripts/bench_trl_report.py runs/bench_trl
    python scripts/bench_trl_report.py docs/data/benchmarks/trl     # the stored runs of docs/results.md §1
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from ibpo_lightning.diagnostics import bench_record


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/bench_trl")
    if (root / "machine.json").exists():
        print(bench_record.describe(bench_record.load(root / "machine.json")) + "\n")
    runs: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*_r*/summary.json")):
        runs.setdefault(path.parent.name.rsplit("_r", 1)[0], []).append(json.loads(path.read_text()))
    print("| run | rounds | step time per round (s, mean over steps after the warm-up) | mean | reward |")
    print("|---|---|---|---|---|")
    means = {}
    for name, results in runs.items():
        steps = [r["step_s"] for r in results]
        means[name] = steps
        rewards = [r["reward_mean"] for r in results if r.get("reward_mean") is not None]
        reward = f"{statistics.mean(rewards):.3f}" if rewards else "n/a"
        print(f"| {name} | {len(steps)} | {', '.join(f'{s:.2f}' for s in steps)} | **{statistics.mean(steps):.2f}** "
              f"| {reward} |")
    for ours in ("ours_vllm", "ours_hf"):
        if ours in means and "trl_hf" in means:
            ratios = [t / o for t, o in zip(means["trl_hf"], means[ours])]  # same round, side by side
            print(f"\nTRL (HF generate) / {ours}: per round {', '.join(f'{x:.2f}x' for x in ratios)}; "
                  f"mean {statistics.mean(ratios):.2f}x, range {min(ratios):.2f}-{max(ratios):.2f}x")


if __name__ == "__main__":
    main()
