"""Rollout throughput: Hugging Face ``model.generate`` against the HF engine's own sampling loop.

Both sample ``--prompts`` x ``--n`` responses of up to ``--max-new-tokens`` tokens from the same
model and chat prompts, alternating ``--repeats`` times; reported: generated tokens per second
(median) and the ratio. Usage:

    python scripts/bench_rollout.py --prompts 8 --n 8 --max-new-tokens 16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine
from ibpo_lightning.tasks import ArithmeticTask


def chat_prompts(tok, task, k):
    out = []
    for p in task.train_problems()[:k]:
        msgs = [{"role": "system", "content": task.system_prompt}, {"role": "user", "content": p.prompt}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out


@torch.no_grad()
def hf_generate(model, tok, prompts, n, max_new_tokens, temperature):
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=temperature,
                         top_k=None, top_p=None, max_new_tokens=max_new_tokens, num_return_sequences=n,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    new = out.sequences[:, width:]
    return int(sum((row != tok.pad_token_id).sum() + (row == tok.eos_token_id).any() for row in new))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_policy(args.model)
    model.eval()
    task = ArithmeticTask(system_prompt="You are a calculator. Answer with the number only.",
                          prompt_template="Compute {expression}. Answer with just the number.")
    prompts = chat_prompts(tok, task, args.prompts)
    engine = HFEngine()
    engine.bind(model, tok)
    rates: dict[str, list[float]] = {"model.generate": [], "HFEngine": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        tokens = hf_generate(model, tok, prompts, args.n, args.max_new_tokens, args.temperature)
        rates["model.generate"].append(tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        groups = engine.generate(prompts, args.n, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        tokens = sum(len(s.token_ids) for g in groups for s in g)
        rates["HFEngine"].append(tokens / (time.perf_counter() - start))
    print(f"{args.prompts} prompts x {args.n} samples x <= {args.max_new_tokens} new tokens, "
          f"{args.model}, fp32, {torch.get_num_threads()} threads, {args.repeats} alternating repeats")
    for name, r in rates.items():
        print(f"  {name:15s} median {statistics.median(r):7.1f} tok/s   (runs: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"  ratio HFEngine / model.generate: {statistics.median(rates['HFEngine']) / statistics.median(rates['model.generate']):.2f}x")


if __name__ == "__main__":
    main()
