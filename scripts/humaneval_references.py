"""HumanEval's canonical solutions through the code sandbox: each must pass, each broken must fail.

For every problem, the program is ``prompt + canonical_solution`` and the one test is the
problem's ``check`` function followed by ``check(<entry_point>)`` (HumanEval's own harness does
the same); the broken variant replaces the body by ``return None``. Also counts how many tests
are judged in the parent (planned) and how many run in the child. HumanEval is not among the
shared data: ``data/HumanEval.jsonl.gz`` of github.com/openai/human-eval (MIT).

Usage:  python scripts/humaneval_references.py HumanEval.jsonl.gz [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

from ibpo_lightning.rewards import CodeReward, TestSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="HumanEval.jsonl.gz (or .jsonl)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    opener = gzip.open if args.data.endswith(".gz") else open
    with opener(args.data, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    specs = [TestSpec((f"{r['test']}\ncheck({r['entry_point']})",)) for r in rows]
    right = [f"```python\n{r['prompt']}{r['canonical_solution']}\n```" for r in rows]
    broken = [f"```python\n{r['prompt']}    return None\n```" for r in rows]
    reward = CodeReward(workers=args.workers)
    start = time.perf_counter()
    passed = reward(right, specs)
    failed = reward(broken, specs)
    seconds = time.perf_counter() - start
    planned = _planned(rows, specs)
    print(f"| problems | canonical solutions passing | `return None` failing | tests judged in the parent | seconds |")
    print("|---|---|---|---|---|")
    print(f"| {len(rows)} | {int(sum(passed))} | {sum(s == 0 for s in failed)} | {planned} | {seconds:.0f} |")
    for r, p, b in zip(rows, passed, failed):
        if p != 1.0 or b != 0.0:
            print(f"  {r['task_id']}: canonical {p}, return None {b}")


def _planned(rows: list[dict], specs: list[TestSpec]) -> str:
    try:
        from ibpo_lightning.rewards.sandbox.plan import defined_names, plan_test
    except ImportError:  # before the sandbox became a package (issue 31)
        from ibpo_lightning.rewards.test_plan import defined_names, plan_test
    count = 0
    for r, spec in zip(rows, specs):
        names = defined_names(r["prompt"] + r["canonical_solution"])
        count += plan_test(spec.tests[0], names) is not None
    return f"{count} of {len(rows)}"


if __name__ == "__main__":
    main()
