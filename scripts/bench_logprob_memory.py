"""Peak memory of one scoring pass with gradients (forward + backward of the response tokens'
log-probs, what a training micro-batch does) against response length, plain head vs chunked head.

Each measurement runs in a fresh child process and reports its peak resident memory above the
memory it held once the model was loaded, so runs do not inherit each other's allocations.

    python scripts/bench_logprob_memory.py --lengths 256 1024 4096 --chunk 1024 \
        --out docs/data/benchmarks/logprob_memory.json
    python scripts/bench_logprob_memory.py --report docs/data/benchmarks/logprob_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from ibpo_lightning.diagnostics import bench_record


def child(model_name: str, length: int, chunk: int | None, rows: int) -> dict:
    import torch

    from ibpo_lightning.losses import token_logprobs
    from ibpo_lightning.models import load_policy

    torch.manual_seed(0)
    model, tok = load_policy(model_name)
    model.train()
    prompt = 32
    ids = torch.randint(10, len(tok) - 1, (rows, prompt + length))
    attn, score = torch.ones_like(ids), torch.zeros(rows, prompt + length)
    score[:, prompt:] = 1.0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; the model and the batch
    start = time.perf_counter()
    logp, _ = token_logprobs(model, ids, attn, score, 1.0, with_entropy=True, chunk_tokens=chunk)
    logp.sum().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"length": length, "rows": rows, "chunk": chunk, "peak_above_model_gib": (peak - base) / 2**20,
            "seconds": seconds, "vocab": model.config.vocab_size}


def report(record: dict) -> str:
    """The published table of a stored record: peak memory and seconds per length and head."""
    by = {(r["length"], r["chunk"]): r for r in record["results"]}
    lengths = sorted({length for length, _ in by})
    chunk = next(c for _, c in by if c is not None)
    rows = [bench_record.describe(record), "",
            f"| response tokens | plain head: peak above the model (GiB), seconds | chunked head ({chunk} positions "
            "per chunk) |", "|---|---|---|"]
    for length in lengths:
        plain, chunked = by[(length, None)], by[(length, chunk)]
        rows.append(f"| {length:,} | {plain['peak_above_model_gib']:.2f} GiB, {plain['seconds']:.1f} s | "
                    f"{chunked['peak_above_model_gib']:.2f} GiB, {chunked['seconds']:.1f} s |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--chunk", type=int, default=1024, help="positions per chunk of the chunked head")
    p.add_argument("--child", nargs=2, metavar=("LENGTH", "CHUNK"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="store the measurements here (JSON)")
    p.add_argument("--report", type=Path, help="print the table of a stored measurement and stop")
    args = p.parse_args(argv)
    if args.report:
        print(report(bench_record.load(args.report)))
        return []
    if args.child:
        length, chunk = int(args.child[0]), None if args.child[1] == "none" else int(args.child[1])
        print(json.dumps(child(args.model, length, chunk, args.rows)))
        return []
    results = []
    for length in args.lengths:
        for chunk in ("none", str(args.chunk)):
            out = subprocess.run([sys.executable, __file__, "--model", args.model, "--rows", str(args.rows),
                                  "--child", str(length), chunk], capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(report(bench_record.save(args.out, results)))
    return results


if __name__ == "__main__":
    main()
