"""Train-phase cost: forward + backward of token log-probs with and without prompt sharing.

A batch shaped like the quickstart's (``--groups`` prompts x ``--group-size`` samples,
``--prompt-len`` prompt tokens, ``--response-len`` response tokens) is scored twice per repeat,
alternating: once with the shared-prompt path of ``token_logprobs`` (each prompt run once, its
KV cache repeated for the group) and once with every row's prompt made distinct (the plain
path). Usage:

    python scripts/bench_logprobs.py --groups 4 --group-size 8 --prompt-len 39 --response-len 13 \
        --out docs/data/benchmarks/logprobs_shared_prompt.json
    python scripts/bench_logprobs.py --report docs/data/benchmarks/logprobs_shared_prompt.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import load_policy


def report(record: dict) -> str:
    """The published table of a stored record."""
    r = record["results"]
    rows = [bench_record.describe(record), "",
            f"{r['groups']} groups x {r['group_size']} samples, prompt {r['prompt_len']} + response "
            f"{r['response_len']} tokens, {r['model']} fp32", "",
            f"| path | median seconds ({len(r['times']['plain'])} alternating runs after a warm-up) |", "|---|---|"]
    for name, label in (("shared prompt", f"shared prompt (each prompt once, KV cache repeated x{r['group_size']})"),
                        ("plain", "plain (every row's prompt distinct)")):
        t = r["times"][name]
        rows.append(f"| {label} | {statistics.median(t):.2f} ({', '.join(f'{x:.2f}' for x in t)}) |")
    ratio = statistics.median(r["times"]["plain"]) / statistics.median(r["times"]["shared prompt"])
    rows.append(f"| ratio | **{ratio:.2f}x** |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=39)
    ap.add_argument("--response-len", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, help="store the measurement here (JSON)")
    ap.add_argument("--report", type=Path, help="print the table of a stored measurement and stop")
    args = ap.parse_args()
    if args.report:
        print(report(bench_record.load(args.report)))
        return
    torch.manual_seed(0)
    model, _ = load_policy(args.model)
    model.train()
    n = args.groups * args.group_size
    prompts = torch.randint(100, 40000, (args.groups, args.prompt_len)).repeat_interleave(args.group_size, 0)
    ids = torch.cat([prompts, torch.randint(100, 40000, (n, args.response_len))], dim=1)
    distinct = ids.clone()
    distinct[:, 0] = torch.arange(n) + 100  # every row's prompt differs: no sharing possible
    attn = torch.ones_like(ids)
    score = torch.zeros(ids.shape)
    score[:, args.prompt_len :] = 1
    times: dict[str, list[float]] = {"shared prompt": [], "plain": []}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, x in (("shared prompt", ids), ("plain", distinct)):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            logp, _ = token_logprobs(model, x, attn, score, with_entropy=True)
            logp.sum().backward()
            times[name].append(time.perf_counter() - start)
    results = {"model": args.model, "groups": args.groups, "group_size": args.group_size,
               "prompt_len": args.prompt_len, "response_len": args.response_len,
               "times": {name: t[1:] for name, t in times.items()}}
    print(report(bench_record.save(args.out, results)))

if __name__ == "__main__":
    main()
