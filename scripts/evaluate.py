"""Evaluate a model, a training checkpoint or an exported HF directory on named benchmarks.

Prints one row per benchmark (problems, samples, temperature, mean@n, pass@k, seconds) and the
total time. Benchmarks are the presets of ``ibpo_lightning.evaluation.benchmarks`` (gsm8k,
math500, aime24, countdown) read from ``--data-dir`` (default ``$IBPO_DATA`` or ../shared/data).

    # SmolLM2-135M before training: pass@1 and pass@8 on a fixed 100-problem GSM8K test subset
    python scripts/evaluate.py --model smollm2-135m-instruct --benchmark gsm8k --limit 100 --samples 8
    # ... and after a GSM8K run (ibpo fit -c configs/gsm8k.yaml)
    python scripts/evaluate.py --model runs/gsm8k/csv/version_0/checkpoints/last.ckpt --benchmark gsm8k --limit 100 --samples 8
    python scripts/evaluate.py --model runs/gsm8k/export --benchmark gsm8k --benchmark math500 --limit 50
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from lightning.pytorch import Trainer, seed_everything

from ibpo_lightning.cli import EXPECTED_WARNINGS
from ibpo_lightning.data import RLDataModule
from ibpo_lightning.evaluation import PRESETS, EvalConfig, benchmark
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.rollout import HFEngine, RolloutCallback


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="built-in name, local HF directory, Hub id, or a .ckpt written by `ibpo fit`")
    p.add_argument("--benchmark", action="append", choices=sorted(PRESETS),
                   help="benchmark preset; repeat for several (default: gsm8k)")
    p.add_argument("--limit", type=int, default=None, help="a fixed (seeded) subset of N problems per benchmark")
    p.add_argument("--samples", type=int, default=1, help="answers sampled per problem (n)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: 0 = greedy with 1 sample, else 0.7)")
    p.add_argument("--pass-k", type=int, nargs="+", default=None, help="k of each pass@k (default: 1 and n)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="response length limit")
    p.add_argument("--engine", choices=["auto", "hf", "vllm"], default="auto",
                   help="rollout engine (auto: vLLM where installed, else HF)")
    p.add_argument("--batch-size", type=int, default=64, help="problems per generate call")
    p.add_argument("--data-dir", default=None, help="directory of the benchmark files")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem subset and of sampling")
    return p.parse_args(argv)


def _engine(name: str, batch_size: int):
    if name == "hf":
        return HFEngine(batch_size=batch_size)
    if name == "vllm":
        from ibpo_lightning.rollout import VLLMEngine

        return VLLMEngine()
    return None  # RolloutCallback's default


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse(argv)
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    start = time.perf_counter()
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 0.7)
    names = list(dict.fromkeys(args.benchmark or ["gsm8k"]))
    tasks = {name: benchmark(name, args.data_dir, args.limit, args.seed) for name in names}
    ckpt = args.model if args.model.endswith(".ckpt") else None
    model = torch.load(ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["model"] if ckpt else args.model
    first, *rest = names
    evaluation = EvalConfig(samples=args.samples, temperature=temperature, pass_k=args.pass_k,
                            max_new_tokens=args.max_new_tokens, heldout_name=first)
    module = PolicyModule(model=model, evaluation=evaluation, benchmarks={n: tasks[n] for n in rest})
    data = RLDataModule(tasks[first], val_batch_size=args.batch_size, seed=args.seed)
    rollout = RolloutCallback(_engine(args.engine, args.batch_size), max_new_tokens=args.max_new_tokens)
    seed_everything(args.seed, verbose=False)
    trainer = Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[rollout])
    try:
        metrics = trainer.validate(module, datamodule=data, ckpt_path=ckpt, verbose=False)[0]
    finally:
        for task in tasks.values():
            task.close()
    print(f"model: {args.model}; {time.perf_counter() - start:.1f} s in all (loading included)")
    return {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
    main()
