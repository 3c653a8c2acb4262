"""Code reward throughput: programs/second on MBPP reference solutions, 1 worker against 2.

Each program runs in its own sandboxed child (see ``docs/code_reward.md``); the rates are
measured side by side in one process, alternating the worker counts ``--repeats`` times. Every
reference solution should score 1.0: the ones that did not are listed (and the exit status is 1).
Task 123 is left out by default: its O(n^2) reference needs about 20 s, past the 5 s limit.
Besides the wall-clock rate, the CPU time of the children per program (user + system, from
``getrusage``) is printed: unlike the rate, it hardly depends on what else the machine runs.

With ``--baseline DIR`` (another checkout, e.g. ``git worktree add /tmp/base <commit>`` or
``mkdir -p /tmp/base && git archive <commit> | tar -x -C /tmp/base``) it compares the two code versions instead, paired:
the problems are cut into ``--chunks`` pieces and each piece runs under both versions one after
the other (in fresh processes, the order alternating), so load from other jobs on the machine
falls on both alike.

Usage:  python scripts/bench_code_reward.py [--limit 974] [--workers 1 2] [--repeats 1]
        python scripts/bench_code_reward.py --baseline /tmp/base [--chunks 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
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
    parser.add_argument("--baseline", help="checkout to compare against, paired by chunks")
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--slice", help=argparse.SUPPRESS)  # "start:end workers", for --baseline
    args = parser.parse_args()

    rows = sorted((json.loads(line) for line in open(args.data)), key=lambda r: r["task_id"])
    rows = [r for r in rows[: args.limit] if r["task_id"] not in args.exclude]
    if args.slice:
        return _one_slice(rows, args.slice)
    if args.baseline:
        return _paired(args, len(rows))
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



def _one_slice(rows: list[dict], spec: str) -> None:
    """Score rows[start:end] with ``workers``; print seconds, failures and children's CPU."""
    span, workers = spec.split()
    start, end = map(int, span.split(":"))
    rows = rows[start:end]
    reward = CodeReward(workers=int(workers))
    completions = [f"```python\n{r['code']}\n```" for r in rows]
    answers = [TestSpec(tuple(r["test_list"]), setup=r["test_setup_code"]) for r in rows]
    reward(["pass"] * int(workers), [["assert True"]] * int(workers))  # start-up: namespace holder
    before, clock = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    scores = reward(completions, answers)
    seconds, after = time.perf_counter() - clock, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    failed = [r["task_id"] for r, s in zip(rows, scores) if s != 1.0]
    print(json.dumps({"seconds": seconds, "cpu": cpu, "failed": failed}))


def _paired(args, total: int) -> None:
    """Each chunk under the baseline and under this checkout, one right after the other."""
    here = str(Path(__file__).resolve().parents[1])
    versions = {"baseline": str(Path(args.baseline).resolve()), "this": here}
    edges = [round(i * total / args.chunks) for i in range(args.chunks + 1)]
    print(f"{total} programs in {args.chunks} chunks; baseline {versions['baseline']}")
    print("| workers | version | programs/s | children's CPU ms/program | scored 1.0 |\n|---|---|---|---|---|")
    for workers in args.workers:
        sums = {name: {"seconds": 0.0, "cpu": 0.0, "failed": []} for name in versions}
        for i in range(args.chunks):
            order = list(versions) if i % 2 == 0 else list(versions)[::-1]
            for name in order:
                command = [sys.executable, __file__, "--data", args.data, "--limit", str(args.limit),
                           "--exclude", *map(str, args.exclude),
                           "--slice", f"{edges[i]}:{edges[i + 1]} {workers}"]
                env = {**os.environ, "PYTHONPATH": versions[name]}
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                for key in ("seconds", "cpu"):
                    sums[name][key] += result[key]
                sums[name]["failed"] += result["failed"]
        for name, total_of in sums.items():
            print(f"| {workers} | {name} | {total / total_of['seconds']:.1f} | "
                  f"{1000 * total_of['cpu'] / total:.1f} | {total - len(total_of['failed'])} of {total}"
                  + (f" (not: {total_of['failed']})" if total_of["failed"] else "") + " |", flush=True)


if __name__ == "__main__":
    main()
