"""One RL step's time split by phase, tokens/s and peak memory, for any config.

    python scripts/bench_step.py -c configs/quickstart.yaml -c configs/estimators/grpo.yaml \
        --steps 6 --warmup 1 --out runs/bench_step/grpo_vllm -- --rollout.engine ibpo_lightning.rollout.HFEngine

Runs ``ibpo fit`` in a child process with validation and checkpoints off and the
:class:`~ibpo_lightning.diagnostics.StepClock` callback on, then averages the logged phase times
over the steps after ``--warmup``. Arguments after ``--`` go to ``ibpo fit`` unchanged. Writes
``summary.json`` in ``--out`` (``--report DIR ...`` prints the rows of stored ones) and prints a
markdown row, then a per-phase table: seconds, tokens,
achieved GFLOP/s and its share of this machine's matrix-multiply peak, measured by a probe
(square matmuls, fp32 and bf16, on the threads torch uses), and the padding fraction of the
train micro-batches.

FLOPs are model FLOPs, the usual MFU convention: 2 x parameters per token of a forward pass and
6 x for forward + backward, attention's own FLOPs left out. Generation counts every generated
token and each call's prompt tokens once (an upper bound where vLLM's prefix cache reuses a
prompt); the log-prob phase counts the tokens of its no-grad passes (reference, old policy);
training counts the unpadded tokens of its micro-batches (a shared prompt is run once there, so
this too is an upper bound on the work done). Weight sync moves bytes: seconds only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ibpo_lightning.diagnostics.run_logs import PHASES, matmul_peak, phase_table, summarise_steps
"""Logged ``time/<phase>`` keys; the estimator phase holds its extra rollouts (``plan``)."""


def bench(configs: list[str], steps: int, out: Path, extra: list[str]) -> Path:
    logger = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
              f'{{"save_dir": "{out}", "name": "csv", "version": "", "flush_logs_every_n_steps": 1}}}}]')
    cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit"]
    for c in configs:
        cmd += ["-c", c]
    cmd += ["--data.steps", str(steps), "--trainer.default_root_dir", str(out), "--trainer.logger", logger,
            "--trainer.callbacks", '[{"class_path": "ibpo_lightning.diagnostics.StepClock"}]',
            "--trainer.enable_checkpointing", "false", "--trainer.limit_val_batches", "0",
            "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false", *extra]
    subprocess.run(cmd, check=True)
    return out / "csv"


def export_prompts(configs: list[str], steps: int, path: Path) -> None:
    """The prompts ``ibpo fit`` draws in its first ``steps`` steps, in order, as JSONL (``system``,
    ``prompt``, ``answer``), for the other framework's benchmark to train on the same ones."""
    from ibpo_lightning.cli import IBPOCLI
    from ibpo_lightning.data import RLDataModule
    from ibpo_lightning.module import PolicyModule

    args = [f"--config={c}" for c in configs] + ["--trainer.logger", "false"]
    dm = IBPOCLI(PolicyModule, RLDataModule, parser_kwargs={"parser_mode": "omegaconf"}, args=args, run=False).datamodule
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for _ in range(steps):
            for p in dm.draw_problems(dm.prompts_per_step):
                f.write(json.dumps({"system": dm.task.system_prompt, "prompt": p.prompt, "answer": p.answer}) + "\n")


def markdown(label: str, r: dict[str, float]) -> str:
    phases = " | ".join(f"{r[f'{p}_s']:.2f}" for p in PHASES)
    return (f"| {label} | {phases} | **{r['step_s']:.2f}** ± {r['step_s_stdev']:.2f} | "
            f"{r['generated_tokens_per_step']:.0f} | {r['generated_tokens_per_s']:.0f} | {r['peak_rss_gib']:.1f} |")


HEADER = ("| run | " + " | ".join(PHASES) + " | step (s, mean ± sd) | generated tokens / step | "
          "generated tokens / s | peak RSS (GiB) |\n|---|" + "---|" * (len(PHASES) + 4))


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    if argv[:1] == ["--report"]:  # the rows of stored runs: bench_step.py --report DIR [DIR ...]
        stored = {Path(f).name: json.loads((Path(f) / "summary.json").read_text()) for f in argv[1:]}
        print(HEADER)
        for name, result in stored.items():
            print(markdown(name, result))
        for name, result in stored.items():  # and each one's phase table, against the peaks it probed
            if "matmul_peak_gflops" in result:
                print(f"\n{name}:\n{phase_table(result, result['matmul_peak_gflops'])}")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="config files, stacked in order")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the averages")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_step/run"))
    parser.add_argument("--label", default=None)
    parser.add_argument("--export-prompts", type=Path, help="only write the prompts of --steps steps here")
    args = parser.parse_args(argv)
    if args.export_prompts:
        return export_prompts(args.config, args.steps, args.export_prompts)
    result = summarise_steps(bench(args.config, args.steps, args.out, extra), args.warmup)
    import torch

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    result["matmul_peak_gflops"] = peaks
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(HEADER)
    print(markdown(args.label or args.out.name, result))
    print()
    print(phase_table(result, peaks))


if __name__ == "__main__":
    main()
