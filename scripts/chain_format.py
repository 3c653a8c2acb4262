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

    python scripts/chain_format.py --model smollm2-135m-instruct --extra-steps 4        # before
    python scripts/chain_format.py --model runs/sft_chain/export --extra-steps 4        # after
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch
import yaml

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="built-in name or Hugging Face directory (an SFT export)")
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
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args()
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
    rows = {}
    print(f"model {args.model}, {args.precision}, temperature {args.temperature:g}, {args.samples} sample(s) per problem, "
          f"{len(held)} problems, {seconds:.0f} s of sampling")
    print("steps  answers  format  accuracy  first wrong line (1..steps, then the Answer line)")
    for steps in sorted(by_len):
        c = by_len[steps]
        spread = [first[steps][k] for k in range(1, steps + 2)]
        rows[steps] = {"answers": c["n"], "format": c["format"] / c["n"], "accuracy": c["right"] / c["n"],
                       "first_wrong_line": spread}
        print(f"{steps:5d}  {c['n']:7d}  {c['format'] / c['n']:6.3f}  {c['right'] / c['n']:8.3f}  {spread}")
    print("what the first wrong line got wrong: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "temperature": args.temperature,
                                               "seconds": seconds, "by_steps": rows, "kinds": kinds}, indent=1))


if __name__ == "__main__":
    main()
