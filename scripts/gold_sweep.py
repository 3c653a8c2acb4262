"""Gold-solution sweep of the math reward: false negatives and false positives per benchmark.

Every worked gold solution of a benchmark, used as the completion, must score 1 against its own
reference answer (a 0 is a false negative: a correct notation the checker misreads), and the same
solution with its final answer raised by one must score 0 (a 1 is a false positive):

* MATH-500: ``solution`` against ``answer``; the wrong variant puts ``plus_one(answer)`` in place
  of the solution's last ``\\boxed{...}``: the number plus one, ``lhs=(rhs)+1`` for an
  equation, ``(answer)+1`` otherwise.
* GSM8K (test): ``answer`` (a worked solution ending ``#### 72``) against itself; the wrong
  variant ends ``#### 73``.
* Minerva Math (with ``--minerva FILE``, not among the shared data: rllm's
  ``rllm/data/test/math/minerva.json``, MIT, from github.com/agentica-project/rllm at commit
  874daa4): ``solution`` against its list of accepted ``answer`` strings (a solution is accepted
  when it matches any); the wrong variant boxes ``plus_one`` of the first. Many of its solutions
  box the answer to another part of a multi-part question than the one ``answer`` holds, so
  100% is out of reach there; the rows that fail are listed by ``idx``.

    python scripts/gold_sweep.py --data-dir ../shared/data [--minerva minerva.json] [--limit 200] [--out sweep.json]
    python scripts/gold_sweep.py --report BEFORE.json AFTER.json   # the table of stored sweeps

Prints a table (benchmark, solutions, false-negative rate, false-positive rate) and, with
``--show``, the first failures of each kind.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from decimal import Decimal
from pathlib import Path

from ibpo_lightning.rewards.answer import box_end
from ibpo_lightning.rewards.math_verify import MathVerifyReward


def last_boxed_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    start += len("\\boxed{")
    end = box_end(text, start)
    return (start, end) if end is not None else None


def plus_one(answer: str) -> str:
    """A wrong answer next to ``answer``: the number plus one, the right-hand side plus one for an
    equation, the whole expression plus one otherwise."""
    plain = re.sub(r",\\!\s*|,(?=\d{3})", "", answer).strip()
    if re.fullmatch(r"-?\d+(?:\.\d+)?", plain):
        return str(Decimal(plain) + 1)
    if answer.count("=") == 1:
        lhs, rhs = answer.split("=")
        return f"{lhs}=({rhs})+1"
    return f"({answer})+1"


def math500(path: Path, limit: int | None) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    out = []
    for r in rows:
        span = last_boxed_span(r["solution"])
        if span is None:
            continue
        wrong = r["solution"][: span[0]] + plus_one(r["answer"]) + r["solution"][span[1]:]
        out.append((r["solution"], r["answer"], wrong))
    return out


def gsm8k(path: Path, limit: int | None) -> list[tuple[str, str, str]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    out = []
    for r in rows:
        head, final = r["answer"].rsplit("####", 1)
        value = int(final.strip().replace(",", ""))
        out.append((r["answer"], r["answer"], f"{head}#### {value + 1}"))
    return out


def minerva(path: Path, limit: int | None) -> list[tuple[str, list[str], str, int]]:
    rows = json.loads(path.read_text())[:limit]
    out = []
    for r in rows:
        answers = [a.strip() for a in r["answer"]]
        span = last_boxed_span(r["solution"])
        wrong = r["solution"][: span[0]] + plus_one(answers[0]) + r["solution"][span[1]:] if span else ""
        out.append((r["solution"], answers, wrong, r["idx"]))
    return out


def sweep(name: str, items: list[tuple], reward: MathVerifyReward) -> dict:
    """Items ``(solution, answer or list of answers, wrong variant[, id])``; a solution counts
    as right when it matches any of its answers, the wrong variant is scored on the first."""
    start = time.perf_counter()
    flat = [(i, c, a) for i, (c, answers, *_) in enumerate(items)
            for a in (answers if isinstance(answers, list) else [answers])]
    scores = reward([c for _, c, _ in flat], [a for _, _, a in flat])
    right = [0.0] * len(items)
    for (i, _, _), s in zip(flat, scores):
        right[i] = max(right[i], s)
    firsts = [a[0] if isinstance(a, list) else a for _, a, *_ in items]
    wrong = reward([w for _, _, w, *_ in items], firsts)
    negatives = [i for i, s in enumerate(right) if s < 1]
    positives = [i for i, s in enumerate(wrong) if s >= 1]
    label = (lambda i: items[i][3]) if len(items[0]) > 3 else (lambda i: firsts[i])
    return {"benchmark": name, "solutions": len(items), "false_negative_rate": len(negatives) / len(items),
            "false_positive_rate": len(positives) / len(items), "seconds": time.perf_counter() - start,
            "false_negatives": [label(i) for i in negatives], "false_positives": [label(i) for i in positives]}


def report(paths: list[Path]) -> None:
    """The table of stored sweeps (``--out`` files), one row per file and benchmark."""
    print("| sweep | benchmark | gold solutions | accepted | false negatives | false positives |\n"
          "|---|---|---|---|---|---|")
    for path in paths:
        for r in json.loads(path.read_text()):
            n, negatives, positives = r["solutions"], len(r["false_negatives"]), len(r["false_positives"])
            print(f"| {path.stem} | {r['benchmark']} | {n} | {n - negatives} | "
                  f"{100 * negatives / n:.1f}% ({negatives}) | {100 * positives / n:.1f}% ({positives}) |")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path(__file__).parents[2] / "shared" / "data")
    p.add_argument("--limit", type=int, default=None, help="first N solutions of each benchmark")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the results (with every failure) as JSON")
    p.add_argument("--show", type=int, default=0, help="print the first N reference answers of each failure kind")
    p.add_argument("--minerva", type=Path, default=None, help="rllm's minerva.json (see above)")
    p.add_argument("--report", type=Path, nargs="+", default=None, help="print stored sweeps and exit")
    args = p.parse_args(argv)
    if args.report:
        return report(args.report)
    reward = MathVerifyReward(num_workers=args.workers)
    try:
        results = [sweep("math500", math500(args.data_dir / "math/math500_test.jsonl", args.limit), reward),
                   sweep("gsm8k", gsm8k(args.data_dir / "math/gsm8k_test.jsonl", args.limit), reward)]
        if args.minerva:
            results.append(sweep("minerva", minerva(args.minerva, args.limit), reward))
    finally:
        reward.close()
    print("| benchmark | gold solutions | false negatives | false positives | seconds |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['benchmark']} | {r['solutions']} | {100 * r['false_negative_rate']:.1f}% "
              f"({len(r['false_negatives'])}) | {100 * r['false_positive_rate']:.1f}% ({len(r['false_positives'])}) | "
              f"{r['seconds']:.0f} |")
        for kind in ("false_negatives", "false_positives"):
            for answer in r[kind][: args.show]:
                print(f"  {kind[:-1]}: {answer}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
