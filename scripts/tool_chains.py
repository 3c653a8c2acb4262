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
``configs/environments/calculator.yaml``; the record counts tool calls per episode and the share
of malformed calls. Accuracy is ``ChainTask.verify`` on the last turn.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.environments import Calculator
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine, Sampler
from ibpo_lightning.tasks import ChainTask

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
        texts = [getattr(a, "answer_text", a.text) for a in answers]
        right = task.verify(texts, [p.answer for p in problems])
        counts = sampler.episode_counts
        rows.append({"steps": length, "trained_length": trained, "problems": len(problems), "accuracy": sum(right) / len(problems),
                     "tool_calls_per_episode": counts.get("tool_calls", 0) / len(problems),
                     "malformed_share": counts.get("malformed_calls", 0) / max(counts.get("tool_calls", 0), 1),
                     "turns_per_episode": counts.get("turns", len(problems)) / len(problems),
                     "model_tokens_per_episode": sum(len(a.token_ids) - sum(b - e for e, b in getattr(a, "env_spans", ()))
                                                     for a in answers) / len(problems),
                     "seconds": time.perf_counter() - start, "example": answers[0].text})
        print(f"{length} steps: {rows[-1]['accuracy']:.3f}", flush=True)
    return rows


def table(record: dict) -> str:
    lines = [bench_record.describe(record), "",
             "| steps | problems | greedy accuracy | tool calls / episode | malformed calls | model tokens / episode |",
             "|---|---|---|---|---|---|"]
    for r in record["results"]:
        lines.append(f"| {r['steps']}{'' if r['trained_length'] else ' (not trained)'} | {r['problems']} | {100 * r['accuracy']:.1f}% | {r['tool_calls_per_episode']:.2f} "
                     f"| {100 * r['malformed_share']:.1f}% | {r['model_tokens_per_episode']:.0f} |")
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
