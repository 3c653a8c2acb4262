"""How a model answers held-out chain problems: format compliance, accuracy by chain length, and
which line goes wrong first. Measures the cold start of ``configs/sft_chain.yaml``.

The held-out chains are those of the SFT config's task (never among its training chains), plus
``--extra-steps`` lengths drawn from a task of their own (lengths absent from training, so none
can overlap). An answer *complies* with the chain format when it is exactly one ``a op b = c``
line per step followed by ``Answer: <integer>``, whether or not the numbers are right. For a
wrong answer the first wrong line is ``ChainTask.first_error``'s offset turned into a line number
(1 = the first step; steps + 1 = the ``Answer:`` line), and its *kind* (``error_kind``): a wrong
result of an addition, subtraction or multiplication, an operand or operator copied wrong, a
carried value that is not the previous result, a line not in ``a op b = c`` form, a missing
line, or a wrong ``Answer:`` line.

    python scripts/chain_format.py --model smollm2-135m-instruct --extra-steps 4 --out before.json
    python scripts/chain_format.py --model runs/sft_chain/export --extra-steps 4 --out after.json
    python scripts/chain_format.py --report before.json after.json    # the before/after table
    python scripts/chain_format.py --report after.json                # one model's tables

The stored records of docs/results.md sections 5 and 6.1 are under docs/data/cold_start/.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
import yaml

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine
from ibpo_lightning.rollout.sampler import Sampler
from ibpo_lightning.tasks import ChainTask
from ibpo_lightning.tasks.chain import apply, first_error, parse_problem

_STEP = re.compile(r"-?\d+ [-+*] -?\d+ = -?\d+")
_ANSWER = re.compile(r"Answer: -?\d+")


def complies(response: str, steps: int) -> bool:
    """Exactly ``steps`` lines ``a op b = c`` then ``Answer: <integer>`` (right or wrong)."""
    lines = response.strip().split("\n")
    return (len(lines) == steps + 1 and all(_STEP.fullmatch(line.strip()) for line in lines[:-1])
            and bool(_ANSWER.fullmatch(lines[-1].strip())))


def first_wrong_line(problem: str, response: str) -> int | None:
    """1-based line of the first wrong line, None when every line is right."""
    offset = first_error(problem, response)
    return None if offset is None else response[:offset].count("\n") + 1


def error_kind(problem: str, response: str) -> str:
    """What the first wrong line of ``response`` got wrong (``right`` when nothing)."""
    value, ops = parse_problem(problem)
    lines = response.strip().split("\n")
    for k, (op, operand) in enumerate(ops):
        if k >= len(lines):
            return "missing line"
        found = re.fullmatch(r"(-?\d+) ([-+*]) (-?\d+) = (-?\d+)", lines[k].strip())
        if not found:
            return "format"
        a, written_op, b, c = int(found[1]), found[2], int(found[3]), int(found[4])
        if written_op != op or b != operand:
            return "copied operation"
        if a != value:
            return "carried value"
        if c != apply(a, op, b):
            return f"result {op}"
        value = c
    answer = lines[len(ops)].strip() if len(lines) > len(ops) else ""
    return "right" if answer == f"Answer: {value}" else "answer line"


def problems(config: str, extra_steps: list[int], extra_count: int) -> tuple[ChainTask, list]:
    args = yaml.safe_load(Path(config).read_text())["data"]["task"]["init_args"]
    task = ChainTask(**args)
    held = list(task.heldout_problems())
    for steps in extra_steps:
        held += list(ChainTask(num_steps=steps, max_value=args.get("max_value", 20), num_train=0,
                               num_heldout=extra_count, seed=1000 + steps).heldout_problems())
    return task, held


KINDS = {  # error_kind -> how the tables name it
    "result -": "the result of a subtraction", "result +": "the result of an addition",
    "result *": "the result of a multiplication", "copied operation": "an operand or operator copied from the problem",
    "carried value": "a carried value that is not the previous result", "format": "a line not in `a op b = c` form",
    "missing line": "a missing line", "answer line": "the `Answer:` line"}


def measure(args) -> dict:
    """Sample every held-out chain and count format, accuracy, first wrong line and error kind."""
    torch.manual_seed(args.seed)
    task, held = problems(args.config, args.extra_steps, args.extra_count)
    policy, tokenizer = load_policy(args.model)
    sampler = Sampler(HFEngine(batch_size=64), 1, args.max_new_tokens, args.temperature, 1.0, args.seed)
    sampler.bind(policy, tokenizer, 0, compute_dtype=torch.bfloat16 if args.precision == "bf16-mixed" else None)
    start = time.perf_counter()
    prompts = [sampler.encode(q.prompt, task.system_prompt) for q in held]
    groups = sampler.generate(prompts, args.samples)
    seconds = time.perf_counter() - start
    by_len: dict[int, Counter] = defaultdict(Counter)
    first: dict[int, Counter] = defaultdict(Counter)
    kinds: Counter = Counter()
    for q, group in zip(held, groups):
        steps = len(parse_problem(q.prompt)[1])
        for s in group:
            c = by_len[steps]
            c["n"] += 1
            c["format"] += complies(s.text, steps)
            c["right"] += task.score([s.text], [q.answer])[0] >= 1.0
            kinds[error_kind(q.prompt, s.text)] += 1
            line = first_wrong_line(q.prompt, s.text)
            if line is not None:
                first[steps][line] += 1
    trained = [task.num_steps] if isinstance(task.num_steps, int) else list(task.num_steps)
    rows = [{"steps": steps, "trained": steps in trained, "answers": by_len[steps]["n"],
             "format": by_len[steps]["format"] / by_len[steps]["n"],
             "accuracy": by_len[steps]["right"] / by_len[steps]["n"],
             "first_wrong_line": [first[steps][k] for k in range(1, steps + 2)]} for steps in sorted(by_len)]
    return {"model": args.model, "precision": args.precision, "temperature": args.temperature,
            "samples": args.samples, "problems": len(held), "seconds": round(seconds, 1), "by_steps": rows,
            "kinds": dict(kinds.most_common())}


def _steps(row: dict) -> str:
    return f"{row['steps']}{'' if row['trained'] else ' (not trained)'}"


def _spread(row: dict) -> str:
    return " / ".join(map(str, row["first_wrong_line"]))


def table(record: dict) -> str:
    """One model's tables: by chain length, then what the first wrong line got wrong."""
    r = record["results"]
    lines = [bench_record.describe(record), "",
             f"{r['model']}, {r['precision']}, temperature {r['temperature']:g}, {r['samples']} sample(s) per problem, "
             f"{r['problems']} problems, {r['seconds']:.0f} s of sampling", "",
             "| steps | answers | format | accuracy | first wrong line (line 1, 2, ..., then `Answer:`) |",
             "|---|---|---|---|---|"]
    lines += [f"| {_steps(row)} | {row['answers']} | {row['format']:.1%} | {row['accuracy']:.1%} "
              f"| {_spread(row)} |" for row in r["by_steps"]]
    failures = sum(n for kind, n in r["kinds"].items() if kind != "right")
    lines += ["", "| what the first wrong line got wrong | answers | share of the failures |", "|---|---|---|",
              f"| (right answer) | {r['kinds'].get('right', 0)} | |"]
    lines += [f"| {KINDS[kind]} | {n} | {n / failures:.0%} |" for kind, n in r["kinds"].items() if kind != "right"]
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    """The before/after table of two models on the same held-out chains."""
    b, a = before["results"], after["results"]
    if [row["steps"] for row in b["by_steps"]] != [row["steps"] for row in a["by_steps"]]:
        raise SystemExit("the two records hold different chain lengths: run both with the same --extra-steps")
    lines = [f"before: {bench_record.describe(before)}", f"after: {bench_record.describe(after)}", "",
             "| steps | answers | format before | format after | accuracy before | accuracy after "
             "| first wrong line after (line 1, 2, ...) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {_steps(y)} | {y['answers']} | {x['format']:.1%} | {y['format']:.1%} | {x['accuracy']:.1%} "
              f"| {y['accuracy']:.1%} | {_spread(y)} |"
              for x, y in zip(b["by_steps"], a["by_steps"])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="built-in name or Hugging Face directory (an SFT export)")
    p.add_argument("--config", default="configs/sft_chain.yaml", help="the SFT config whose held-out chains to use")
    p.add_argument("--extra-steps", type=int, nargs="*", default=[], help="chain lengths to add (not trained on)")
    p.add_argument("--extra-count", type=int, default=100, help="held-out problems per extra length")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    p.add_argument("--samples", type=int, default=1, help="answers per problem")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true",
                   help="bf16-mixed samples under the bf16 autocast of an RL run with precision auto on "
                        "a bf16 CPU; at temperature 1 the two formats differ by points (docs/results.md 6.2)")
    p.add_argument("--out", type=Path, help="store the record here (JSON)")
    p.add_argument("--report", type=Path, nargs="+", metavar="RECORD",
                   help="print a stored record's tables (two records: the before/after table) and exit")
    args = p.parse_args()
    if args.report:
        if len(args.report) > 2:
            p.error("--report takes one record, or two (before, after)")
        records = [bench_record.load(path) for path in args.report]
        print(table(records[0]) if len(records) == 1 else compare(*records))
        return
    if not args.model:
        p.error("--model is required unless --report is given")
    print(table(bench_record.save(args.out, measure(args))))


if __name__ == "__main__":
    main()
