"""Where one training micro-batch spends its time, fp32 against bf16 autocast, side by side.

    python scripts/profile_train_step.py --modes fp32 bf16 bf16-plain-attention --top 12

One micro-batch of the quickstart's shape (SmolLM2-135M-Instruct, 4 prompts of 40 tokens x 8
responses of 8 tokens, scored through ``token_logprobs`` with the shared-prompt path, loss and
backward), timed over ``--repeats`` runs after two warm-up runs, then profiled once with the
torch profiler (top operators by self CPU time). ``bf16-plain-attention`` switches the model back
to transformers' plain SDPA, to show what ``models/attention.py`` changes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from ibpo_lightning.losses import token_logprobs
from ibpo_lightning.models import attention, load_policy


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
    args = ap.parse_args()
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

    print(f"threads {torch.get_num_threads()}, micro-batch {tuple(ids.shape)}")
    for mode in args.modes:
        model.set_attn_implementation("sdpa" if mode.endswith("plain-attention") else attention.NAME)
        half = mode.startswith("bf16")
        for _ in range(2):
            step(half)
        start = time.perf_counter()
        for _ in range(args.repeats):
            step(half)
        print(f"{mode:24s} {(time.perf_counter() - start) / args.repeats:.3f} s per micro-batch", flush=True)
        if args.top:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(half)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
