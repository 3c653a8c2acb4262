"""Train-phase cost: forward + backward of token log-probs with and without prompt sharing.

A batch shaped like the quickstart's (``--groups`` prompts x ``--group-size`` samples,
``--prompt-len`` prompt tokens, ``--response-len`` response tokens) is scored twice per repeat,
alternating: once with the shared-prompt path of ``token_logprobs`` (each prompt run once, its
KV cache repeated for the group) and once with every row's prompt made distinct (the plain
path). Usage:

    python scripts/bench_logprobs.py --groups 4 --group-size 8 --prompt-len 39 --response-len 13
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=39)
    ap.add_argument("--response-len", type=int, default=13)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
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
    print(f"{args.groups} groups x {args.group_size} samples, prompt {args.prompt_len} + response "
          f"{args.response_len} tokens, {args.model} fp32, {torch.get_num_threads()} threads")
    for name, t in times.items():
        print(f"  {name:14s} median {statistics.median(t[1:]):6.2f} s  (runs: {', '.join(f'{x:.2f}' for x in t[1:])})")
    print(f"  speed-up: {statistics.median(times['plain'][1:]) / statistics.median(times['shared prompt'][1:]):.2f}x")


if __name__ == "__main__":
    main()
