"""Held-out chain accuracy by chain length, with or without the calculator tool.

    python scripts/tool_chains.py --model runs/sft_chain_calculator/export --tool \
        --out docs/data/tool_chains/sft_calculator.json
    python scripts/tool_chains.py --report docs/data/tool_chains/sft_calculator.json

Greedy episodes (HF engine) on up to ``--problems`` held-out chains of each length in ``--lengths``.
Chains of a trained length come from the held-out split of the training config (``ChainTask``
seed 0 with ``--trained-lengths``, ``--operators``, ``--max-value`` and ``--heldout``: the first
drawn chains, never among its training chains; ``configs/sft_chain*.yaml``: 300 of 2-3 steps, up
to 20, ``+-*``), chains of other lengths were never trained on. With ``--tool`` each
answer is a multi-turn episode with ``Calculator`` and the system prompt of
``configs/environments/calculator.yaml``; the record counts tool calls per episode, the share of
episodes with one call per step and of malformed calls, and where the wrong answers first go wrong
(``ChainTask.first_error`` on the model's own lines). Accuracy is ``ChainTask.verify`` on the last
turn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.diagnostics.credit import model_text
from ibpo_lightning.environments import Calculator
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine, Sampler
from ibpo_lightning.tasks import ChainTask
from ibpo_lightning.types import Trajectory

ROOT = Path(__file__).resolve().parents[1]


def tool_prompt() -> str:
    """The system prompt the calculator overlay gives the chain task."""
    spec = yaml.safe_load((ROOT / "configs/environments/calculator.yaml").read_text())
    return spec["data"]["task"]["init_args"]["system_prompt"]


def measure(args) -> list[dict]:
    model, tokenizer = load_policy(args.model)
    env = Calculator(max_turns=args.max_turns) if args.tool else None
    sampler = Sampler(HFEngine(batch_size=args.batch_size), group_size=1, max_new_tokens=args.max_new_tokens,
                      temperature=0.0, top_p=1.0, seed=0, environment=env)
    sampler.bind(model, tokenizer, version=0)
    rows = []
    for length in args.lengths:
        kwargs = {"system_prompt": tool_prompt()} if args.tool else {}
        trained = length in args.trained_lengths
        task = ChainTask(num_steps=args.trained_lengths if trained else length, max_value=args.max_value,
                         operators=args.operators, num_train=0, num_heldout=args.heldout if trained else args.problems,
                         **kwargs)
        problems = [p for p in task.heldout_problems() if p.prompt.count(".") - 1 == length][: args.problems]
        prompts = [sampler.encode(p.prompt, task.system_prompt) for p in problems]
        sampler.episode_counts, start = {}, time.perf_counter()
        answers = [g[0] for g in sampler.answer(problems, prompts, 1, temperature=0.0)]
        texts = [a.scored_text for a in answers]
        right = task.verify(texts, [p.answer for p in problems])
        counts = sampler.episode_counts
        wrong = [(p, a) for p, a, ok in zip(problems, answers, right) if not ok]
        rows.append({**failures(tokenizer, task, length, wrong), "calls_equal_steps":
                     sum(getattr(a, "tool_calls", 0) == length for a in answers) / len(problems),"steps": length, "trained_length": trained, "problems": len(problems), "accuracy": sum(right) / len(problems),
                     "tool_calls_per_episode": counts.get("tool_calls", 0) / len(problems),
                     "malformed_share": counts.get("malformed_calls", 0) / max(counts.get("tool_calls", 0), 1),
                     "turns_per_episode": counts.get("turns", len(problems)) / len(problems),
                     "model_tokens_per_episode": sum(len(a.token_ids) - sum(b - e for e, b in getattr(a, "env_spans", ()))
                                                     for a in answers) / len(problems),
                     "seconds": time.perf_counter() - start, "example": answers[0].text})
        print(f"{length} steps: {rows[-1]['accuracy']:.3f}", flush=True)
    return rows


def failures(tokenizer, task: ChainTask, length: int, wrong: list) -> dict:
    """Where the wrong answers go wrong: the first wrong line of the model's own text (tool calls and
    the tool's turns left out, ``diagnostics.credit.model_text``), 1-based, ``length + 1`` for the
    ``Answer:`` line; and the first two wrong answers' text."""
    lines: dict[str, int] = {}
    for problem, answer in wrong:
        row = Trajectory([], answer.token_ids, answer.logprobs, "", answer.text, group=0,
                         env_spans=getattr(answer, "env_spans", ()), turn_ends=getattr(answer, "turn_ends", ()))
        _, text, _ = model_text(tokenizer, row)
        offset = task.first_error(problem.prompt, text)
        line = "right lines" if offset is None else str(text[:offset].count("\n") + 1)
        lines[line] = lines.get(line, 0) + 1
    return {"first_wrong_line": dict(sorted(lines.items())), "wrong_examples": [a.text for _, a in wrong[:2]]}


def table(record: dict) -> str:
    lines = [bench_record.describe(record), "",
             "| steps | problems | greedy accuracy | tool calls / episode | one call per step | malformed calls "
             "| model tokens / episode | first wrong line of the wrong answers |",
             "|---|---|---|---|---|---|---|---|"]
    for r in record["results"]:
        where = ", ".join(f"{k}: {v}" for k, v in r.get("first_wrong_line", {}).items()) or "—"
        lines.append(f"| {r['steps']}{'' if r['trained_length'] else ' (not trained)'} | {r['problems']} "
                     f"| {100 * r['accuracy']:.1f}% | {r['tool_calls_per_episode']:.2f} "
                     f"| {100 * r.get('calls_equal_steps', 0):.0f}% | {100 * r['malformed_share']:.1f}% "
                     f"| {r['model_tokens_per_episode']:.0f} | {where} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/sft_chain_calculator/export")
    parser.add_argument("--tool", action="store_true", help="answer in episodes with the calculator")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4, 5])
    parser.add_argument("--problems", type=int, default=100, help="held-out chains per length")
    parser.add_argument("--trained-lengths", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--heldout", type=int, default=300, help="held-out chains of the training config")
    parser.add_argument("--max-value", type=int, default=20)
    parser.add_argument("--operators", default="+-*")
    parser.add_argument("--max-turns", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", type=Path, help="store the record here (JSON)")
    parser.add_argument("--report", type=Path, help="print the table of a stored record and exit")
    args = parser.parse_args()
    if args.report:
        print(table(bench_record.load(args.report)))
        return
    print(table(bench_record.save(args.out, measure(args))))


if __name__ == "__main__":
    main()
