"""Where one training micro-batch spends its time, fp32 against bf16 autocast, side by side.

    python scripts/profile_train_step.py --modes fp32 bf16 bf16-plain-attention --top 12 \
        --out docs/data/benchmarks/train_micro_batch.json
    python scripts/profile_train_step.py --report docs/data/benchmarks/train_micro_batch.json

One micro-batch of the quickstart's shape (SmolLM2-135M-Instruct, 4 prompts of 40 tokens x 8
responses of 8 tokens, scored through ``token_logprobs`` with the shared-prompt path, loss and
backward), timed over ``--repeats`` runs after two warm-up runs, then profiled once with the
torch profiler (top operators by self CPU time). ``bf16-plain-attention`` switches the model back
to transformers' plain SDPA, to show what ``models/attention.py`` changes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import attention, load_policy


def report(record: dict) -> str:
    """The published table of a stored record: seconds per micro-batch by mode, and fp32's ratio."""
    r = record["results"]
    seconds = r["seconds"]
    rows = [bench_record.describe(record), "", f"micro-batch {r['shape']}, {r['repeats']} runs after 2 warm-ups", "",
            "| mode | seconds per micro-batch | fp32 / mode |", "|---|---|---|"]
    for mode, value in seconds.items():
        ratio = f"{seconds['fp32'] / value:.2f}x" if "fp32" in seconds else "-"
        rows.append(f"| {mode} | {value:.3f} | {ratio} |")
    return "\n".join(rows + [f"\n{mode}, top operators:\n{table}" for mode, table in r.get("top", {}).items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--modes", nargs="+", default=["fp32", "bf16", "bf16-plain-attention"])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=40)
    ap.add_argument("--response-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=0, help="print the profiler's top operators (0: no profile)")
    ap.add_argument("--out", type=Path, help="store the measurements here (JSON)")
    ap.add_argument("--report", type=Path, help="print the table of a stored measurement and stop")
    args = ap.parse_args()
    if args.report:
        print(report(bench_record.load(args.report)))
        return
    model, _ = load_policy(args.model)
    model.train()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(100, 40000, (args.prompts, args.prompt_tokens), generator=g)
    responses = torch.randint(100, 40000, (args.prompts * args.samples, args.response_tokens), generator=g)
    ids = torch.cat([prompts.repeat_interleave(args.samples, 0), responses], 1)
    score = torch.zeros(ids.shape)
    score[:, args.prompt_tokens:] = 1

    def step(half: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            logp, _ = token_logprobs(model, ids, torch.ones_like(ids), score, chunk_tokens=1024)
            loss = -(logp * score).sum() / score.sum()
        loss.backward()
        model.zero_grad(set_to_none=True)

    results: dict = {"model": args.model, "shape": list(ids.shape), "repeats": args.repeats, "seconds": {}, "top": {}}
    for mode in args.modes:
        model.set_attn_implementation("sdpa" if mode.endswith("plain-attention") else attention.NAME)
        half = mode.startswith("bf16")
        for _ in range(2):
            step(half)
        start = time.perf_counter()
        for _ in range(args.repeats):
            step(half)
        results["seconds"][mode] = (time.perf_counter() - start) / args.repeats
        if args.top:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(half)
            results["top"][mode] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top)
    print(report(bench_record.save(args.out, results)))


if __name__ == "__main__":
    main()
