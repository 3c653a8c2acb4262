"""TRL's GRPOTrainer on the prompts and settings of an ibpo-lightning benchmark run, timed per step.

Runs in the separate TRL environment (``bash scripts/install_trl.sh``), never in ``.venv``:

    .venv/bin/python scripts/bench_step.py -c configs/quickstart.yaml -c configs/estimators/grpo.yaml \\
        --steps 6 --export-prompts runs/bench_trl/prompts.jsonl
    .venv-trl/bin/python scripts/bench_trl.py --prompts runs/bench_trl/prompts.jsonl --steps 6 \\
        --prompts-per-step 8 --group-size 8 --max-new-tokens 16 --lr 2e-5 --out runs/bench_trl/hf

The settings mirror ``ibpo fit`` with GRPO: one optimizer step per batch of ``prompts-per-step x
group-size`` samples (``num_iterations=1``, no gradient accumulation), no KL term (``beta=0``, so
no reference model), per-sequence token-mean loss (``loss_type="grpo"``), group-std scaling, the
same reward function (``ibpo_lightning/rewards/answer.py``, loaded by path), fp32 on the CPU, the
prompts in the exported order (no shuffling). Step time is measured as in ``StepClock``: from the
end of one optimizer step to the end of the next.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path.home() / ".cache" / "ibpo_lightning" / "models" / "smollm2-135m-instruct"


def load_reward():
    spec = importlib.util.spec_from_file_location("answer", ROOT / "ibpo_lightning" / "rewards" / "answer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def reward(prompts, completions, answer, **_):
        return [module.number_reward(c[0]["content"] if isinstance(c, list) else c, a)
                for c, a in zip(completions, answer)]
    return reward


class Clock(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.last = None

    def on_train_begin(self, args, state, control, **kw):
        print(f"torch threads: {torch.get_num_threads()}", flush=True)
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--engine", choices=["hf", "paged", "vllm"], default="hf",
                        help="hf: transformers generate; paged: transformers continuous batching; "
                             "vllm: TRL's colocated vLLM")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (as ours under bf16-mixed)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_trl/run"))
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.prompts.read_text().splitlines()]
    need = args.steps * args.prompts_per_step
    if len(rows) < need:
        raise SystemExit(f"{args.prompts}: {len(rows)} prompts, {need} needed for {args.steps} steps")
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": r["system"]}, {"role": "user", "content": r["prompt"]}],
                               "answer": r["answer"]} for r in rows[:need]])
    batch = args.prompts_per_step * args.group_size
    config = GRPOConfig(
        output_dir=str(args.out), max_steps=args.steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=args.group_size, steps_per_generation=1,
        num_iterations=1, max_completion_length=args.max_new_tokens, temperature=args.temperature,
        top_p=1.0, top_k=0, learning_rate=args.lr, lr_scheduler_type="constant", beta=0.0,
        loss_type="grpo", scale_rewards="group", max_grad_norm=1.0, shuffle_dataset=False,
        use_cpu=True, bf16=args.bf16, fp16=False, logging_steps=1, save_strategy="no", report_to="none",
        seed=args.seed, dataloader_num_workers=0, model_init_kwargs={"dtype": torch.float32},
        use_vllm=args.engine == "vllm", vllm_mode="colocate",
        use_transformers_paged=args.engine == "paged",
    )
    clock = Clock()
    trainer = GRPOTrainer(model=str(MODEL), reward_funcs=load_reward(), args=config, train_dataset=data,
                          callbacks=[clock])
    trainer.train()
    times = clock.times[args.warmup:]
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    result = {"engine": args.engine, "step_s": statistics.mean(times), "step_s_median": statistics.median(times),
              "step_s_stdev": statistics.stdev(times) if len(times) > 1 else 0.0, "steps": len(times),
              "all_step_s": clock.times, "reward_mean": statistics.mean(rewards) if rewards else None,
              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
