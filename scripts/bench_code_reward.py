"""Code reward throughput: programs/second on MBPP reference solutions, 1 worker against 2.

Each program runs in its own sandboxed child (see ``docs/code_reward.md``); the rates are
measured side by side in one process, alternating the worker counts ``--repeats`` times, and
every reference solution must score 1.0 (the script fails otherwise). Task 123 is left out by
default: its O(n^2) reference needs about 20 s, past the reward's 5 s limit.

Usage:  python scripts/bench_code_reward.py [--limit 974] [--workers 1 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from ibpo_lightning.rewards import CodeReward, TestSpec

MBPP = Path(__file__).resolve().parents[2] / "shared" / "data" / "code" / "mbpp.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(MBPP), help="MBPP JSONL file")
    parser.add_argument("--limit", type=int, default=974, help="first N problems by task_id")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--exclude", type=int, nargs="*", default=[123],
                        help="task_ids left out (123: its reference takes about 20 s, past the 5 s limit)")
    args = parser.parse_args()

    rows = sorted((json.loads(line) for line in open(args.data)), key=lambda r: r["task_id"])
    rows = [r for r in rows[: args.limit] if r["task_id"] not in args.exclude]
    completions = [f"```python\n{r['code']}\n```" for r in rows]
    answers = [TestSpec(tuple(r["test_list"]), setup=r["test_setup_code"]) for r in rows]
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            reward = CodeReward(workers=workers)
            start = time.perf_counter()
            scores = reward(completions, answers)
            seconds = time.perf_counter() - start
            failed = [r["task_id"] for r, s in zip(rows, scores) if s != 1.0]
            if failed:
                raise SystemExit(f"reference solutions that did not score 1: task_ids {failed}")
            rates[workers].append(len(rows) / seconds)
            print(f"workers={workers}: {len(rows)} programs in {seconds:.1f} s "
                  f"= {rates[workers][-1]:.1f} programs/s (all scored 1.0)", flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"running as {'root (sandbox uids, network namespace)' if os.geteuid() == 0 else 'user'}")
    print("| workers | programs/s (median of runs) | runs |\n|---|---|---|")
    for workers, values in rates.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {workers} | {statistics.median(values):.1f} | {runs} |")


if __name__ == "__main__":
    main()
