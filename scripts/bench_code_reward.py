"""Code reward throughput: programs/second on MBPP reference solutions, 1 worker against 2.

Each program runs in its own sandboxed child (see ``docs/code_reward.md``); the rates are
measured side by side in one process, alternating the worker counts ``--repeats`` times. Every
reference solution should score 1.0: the ones that did not are listed (and the exit status is 1).
Task 123 is left out by default: its O(n^2) reference needs about 20 s, past the 5 s limit.
Besides the wall-clock rate, the CPU time of the children per program (user + system, from
``getrusage``) is printed: unlike the rate, it hardly depends on what else the machine runs.

Usage:  python scripts/bench_code_reward.py [--limit 974] [--workers 1 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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
    cpu_ms: list[float] = []
    any_failed = False
    for _ in range(args.repeats):
        for workers in args.workers:
            reward = CodeReward(workers=workers)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            scores = reward(completions, answers)
            seconds = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            cpu_ms.append(1000 * cpu / len(rows))
            failed = [r["task_id"] for r, s in zip(rows, scores) if s != 1.0]
            any_failed = any_failed or bool(failed)
            rates[workers].append(len(rows) / seconds)
            print(f"workers={workers}: {len(rows)} programs in {seconds:.1f} s "
                  f"= {rates[workers][-1]:.1f} programs/s, children's CPU {cpu_ms[-1]:.1f} ms/program; "
                  f"{len(rows) - len(failed)} of {len(rows)} scored 1.0"
                  + (f" (not: task_ids {failed})" if failed else ""), flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"running as {'root (sandbox uids, network namespace)' if os.geteuid() == 0 else 'user'}")
    print("| workers | programs/s (median of runs) | runs |\n|---|---|---|")
    for workers, values in rates.items():
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {workers} | {statistics.median(values):.1f} | {runs} |")
    print(f"children's CPU per program: median {statistics.median(cpu_ms):.1f} ms")
    if any_failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
