"""Rollout speed: the vLLM engine against the HF engine, weight sync, and prefix caching.

Measured side by side in one process, on the same model and dtype (the trainer's fp32):

1. tokens/s of ``VLLMEngine`` and ``HFEngine`` (and optionally HF ``model.generate``) at the
   quickstart's batch (8 prompts x 8 samples x 16 tokens, arithmetic prompts) and at
   64 prompts x 1 sample x 256 tokens (open-ended prompts), alternating ``--repeats`` times;
2. seconds to sync the trainer's weights into vLLM;
3. seconds of an SRPO-style reset continuation (4 suffixes from the middle of each of 64
   responses) with the prefix cache read and with it skipped.

Usage:  python scripts/bench_rollout.py [--repeats 3] [--with-generate] [--shapes quick long] [--skip-reset]
            [--out docs/data/benchmarks/rollout.json]
        python scripts/bench_rollout.py --report docs/data/benchmarks/rollout.json

The vLLM prefix cache is reset before every timed call, as it is after each weight sync in
training (otherwise repeats would find the prompts already cached).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from ibpo_lightning.diagnostics import bench_record
from ibpo_lightning.models import load_policy
from ibpo_lightning.rollout import HFEngine, VLLMEngine
from ibpo_lightning.tasks import ArithmeticTask

TOPICS = ["the sea", "a robot", "winter", "a library", "trains", "a garden", "the moon", "a market"]


def chat(tok, text: str, system: str | None = None) -> list[int]:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@torch.no_grad()
def hf_generate(model, tok, prompts, n, max_new_tokens):
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=None,
                         top_p=None, max_new_tokens=max_new_tokens, num_return_sequences=n,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    new = out[:, width:]
    return int(sum((row != tok.pad_token_id).sum() + (row == tok.eos_token_id).any() for row in new))


def rate(engine, prompts, n, max_new_tokens) -> float:
    if isinstance(engine, VLLMEngine):
        engine.llm.reset_prefix_cache()  # as after a weight sync: no prompt KV from the last repeat
    start = time.perf_counter()
    groups = engine.generate(prompts, n, max_new_tokens=max_new_tokens, temperature=1.0)
    return sum(len(s.token_ids) for g in groups for s in g) / (time.perf_counter() - start)


def reset_continuation(engine: VLLMEngine, prompts, read_cache: bool) -> float:
    """Fresh responses, then 4 continuations from the middle of each; seconds of the second call."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    fresh = engine.generate(prompts, 1, max_new_tokens=128, temperature=1.0)
    prefixes = [p + g[0].token_ids[: len(g[0].token_ids) // 2] for p, g in zip(prompts, fresh)]
    params = SamplingParams(n=4, temperature=1.0, max_tokens=64, logprobs=0, detokenize=False,
                            stop_token_ids=[engine.tokenizer.eos_token_id], skip_reading_prefix_cache=not read_cache)
    start = time.perf_counter()
    engine.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prefixes], params, use_tqdm=False)
    return time.perf_counter() - start


def _runs(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({', '.join(f'{x:.{digits}f}' for x in values)})"


def report(record: dict) -> str:
    """The published tables of a stored record: tokens/s per shape and engine, sync, reset continuation."""
    r = record["results"]
    names = list(next(iter(r["rates"].values()))) if r["rates"] else []
    rows = [bench_record.describe(record), "",
            "| shape | " + " | ".join(f"{n}, median tok/s (runs)" for n in names) + " | vLLM / HFEngine |",
            "|---|" + "---|" * (len(names) + 1)]
    for label, rates in r["rates"].items():
        ratio = statistics.median(rates["vLLM"]) / statistics.median(rates["HFEngine"])
        rows.append(f"| {label} | " + " | ".join(_runs(rates[n], 1) for n in names) + f" | **{ratio:.2f}x** |")
    rows += ["", "| other figure | seconds, median (runs) |", "|---|---|",
             f"| vLLM engine start-up (build + first sync) | {r['startup_s']:.1f} |",
             f"| weight sync into vLLM | {_runs(r['sync_s'], 2)} |"]
    if r.get("reset_cached_s"):
        ratio = statistics.median(r["reset_uncached_s"]) / statistics.median(r["reset_cached_s"])
        rows += [f"| reset continuation (4 suffixes x <=64 tokens from the middle of 64 responses), prefix cache read "
                 f"| {_runs(r['reset_cached_s'], 1)} |",
                 f"| the same, prefix cache skipped | {_runs(r['reset_uncached_s'], 1)} (**{ratio:.2f}x** slower) |"]
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-generate", action="store_true", help="also time HF model.generate")
    ap.add_argument("--shapes", nargs="+", default=["quick", "long"], choices=["quick", "long"])
    ap.add_argument("--skip-reset", action="store_true", help="skip the reset-continuation figure")
    ap.add_argument("--compiled", action="store_true", help="vLLM's compiled mode instead of eager")
    ap.add_argument("--out", type=Path, help="store the measurements here (JSON)")
    ap.add_argument("--report", type=Path, help="print the tables of a stored measurement and stop")
    args = ap.parse_args()
    if args.report:
        print(report(bench_record.load(args.report)))
        return
    torch.manual_seed(0)
    model, tok = load_policy(args.model)
    model.eval()
    start = time.perf_counter()
    vllm = VLLMEngine(enforce_eager=not args.compiled)
    vllm.bind(model, tok)
    results: dict = {"model": args.model, "repeats": args.repeats, "startup_s": time.perf_counter() - start,
                     "rates": {}}
    hf = HFEngine()
    hf.bind(model, tok)
    task = ArithmeticTask(operators=("+",), max_value=20)
    quick = [chat(tok, p.prompt, "You are a calculator. Answer with the number only.")
             for p in task.train_problems()[:8]]
    stories = [chat(tok, f"Write a long story about {TOPICS[i % 8]}, number {i}.") for i in range(64)]
    vllm.generate(quick, 2, max_new_tokens=4, temperature=1.0)  # warm-up of both engines
    hf.generate(quick, 2, max_new_tokens=4, temperature=1.0)
    shapes = {"quick": ("quickstart: 8 prompts x 8 samples x <=16 tokens (arithmetic)", quick, 8, 16),
              "long": ("64 prompts x 1 sample x <=256 tokens (open-ended stories)", stories, 1, 256)}
    names = ["vLLM", "HFEngine"] + (["model.generate"] if args.with_generate else [])
    for label, prompts, n, max_new in (shapes[k] for k in args.shapes):
        rates: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(args.repeats):
            rates["vLLM"].append(rate(vllm, prompts, n, max_new))
            rates["HFEngine"].append(rate(hf, prompts, n, max_new))
            if args.with_generate:
                begin = time.perf_counter()
                rates["model.generate"].append(hf_generate(model, tok, prompts, n, max_new) / (time.perf_counter() - begin))
        results["rates"][label] = rates
    syncs = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        vllm.sync_weights(model.named_parameters())
        syncs.append(time.perf_counter() - begin)
    results["sync_s"] = syncs
    if not args.skip_reset:
        results["reset_cached_s"] = [reset_continuation(vllm, stories, True) for _ in range(args.repeats)]
        results["reset_uncached_s"] = [reset_continuation(vllm, stories, False) for _ in range(args.repeats)]
    print(report(bench_record.save(args.out, results)))


if __name__ == "__main__":
    main()
