"""Learning-efficiency study: estimators x seeds on one task, curves and a summary table.

    python scripts/study.py run --steps 10 --seeds 0 1 2            # quickstart task, 5 estimators
    python scripts/study.py report --out docs/img/study_quickstart.png

Each run is ``ibpo fit -c configs/quickstart.yaml [-c configs/estimators/<name>.yaml]`` in its own
process, CSV logs under ``runs/study/<task>/<estimator>/seed<k>``, with the per-group gradient noise
logged every ``--noise-every`` steps (``model.grad_noise_every``). ``report`` reads those logs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from plot_run import read_series  # noqa: E402

ESTIMATORS = {  # name -> extra config files and overrides on top of the task config
    "grpo": (["configs/estimators/grpo.yaml"], []),
    "ibpo": ([], []),  # the task config's own IBPO (quickstart: 1 reference, <= 2 repairs a group)
    # the arithmetic answers have no </thought> blocks: thoughts are words, and SRPO's call that
    # names the first wrong thought gets a short budget
    "srpo": (["configs/estimators/srpo.yaml"], ["--estimator.init_args.delimiter", " ",
                                                 "--estimator.init_args.localisation_max_new_tokens", "8"]),
    "rrpo": (["configs/estimators/rrpo.yaml"], ["--estimator.init_args.delimiter", " "]),
    "dapo": (["configs/estimators/dapo.yaml"], []),
}


def run_dir(root: Path, estimator: str, seed: int) -> Path:
    return root / estimator / f"seed{seed}"


def run(args) -> None:
    for seed in args.seeds:
        for name in args.estimators:
            out = run_dir(args.root, name, seed)
            if (out / "csv" / "metrics.csv").exists() and not args.force:
                print(f"skip {out}: already has metrics.csv", flush=True)
                continue
            configs, overrides = ESTIMATORS[name]
            logger = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
                      f'{{"save_dir": "{out}", "name": "csv", "version": "", "flush_logs_every_n_steps": 1}}}}]')
            cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", args.config]
            for c in configs:
                cmd += ["-c", c]
            # the held-out pass before training is the same greedy decode of the same model in every
            # run: only the first run of the study makes it; the report reuses its value
            first = seed == args.seeds[0] and name == args.estimators[0]
            cmd += overrides + [
                "--trainer.num_sanity_val_steps", "-1" if first else "0",
                "--trainer.val_check_interval", str(args.val_every or args.steps),
                "--seed_everything", str(seed), "--data.seed", str(seed), "--rollout.seed", str(seed),
                "--data.steps", str(args.steps), "--model.grad_noise_every", str(args.noise_every),
                "--trainer.default_root_dir", str(out), "--trainer.logger", logger,
                "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                "--trainer.enable_progress_bar", "false"]
            start = time.time()
            print(f"run {name} seed {seed}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
            print(f"done {name} seed {seed} in {time.time() - start:.0f} s", flush=True)


def noise_series(series: dict, every: int = 5) -> list[tuple[float, float]]:
    """``grad/noise_to_signal`` at the steps where it was measured (older logs repeat it between)."""
    return [(step, v) for step, v in series.get("grad/noise_to_signal", []) if step % every == 0]


def tokens_per_step(series: dict) -> list[float]:
    """Generated tokens of every kind, per training step (aligned with ``train/reward_mean``)."""
    return [sum(v for k, vals in series.items() if k.startswith("tokens/") for s, v in vals if s == step)
            for step, _ in series["train/reward_mean"]]


def summarise(series: dict, noise_every: int) -> dict[str, float]:
    tokens = tokens_per_step(series)
    val = series.get("val/accuracy", [])
    noise = [v for _, v in noise_series(series, noise_every)]
    before = [v for step, v in val if step == 0]
    return {"val_first": before[0] if before else float("nan"), "val_last": val[-1][1] if val else float("nan"),
            "reward_mean": statistics.mean(v for _, v in series["train/reward_mean"]),
            "tokens": sum(tokens), "noise_first": noise[0] if noise else float("nan"),
            "noise_mean": statistics.mean(noise) if noise else float("nan")}


def report(args) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_r, ax_t), (ax_v, ax_n) = axes
    rows = []
    before = [v for name in args.estimators for seed in args.seeds
              if (run_dir(args.root, name, seed) / "csv" / "metrics.csv").exists()
              for step, v in read_series(run_dir(args.root, name, seed) / "csv").get("val/accuracy", []) if step == 0]
    for k, name in enumerate(args.estimators):
        per_seed = []
        for seed in args.seeds:
            csv_dir = run_dir(args.root, name, seed) / "csv"
            if not (csv_dir / "metrics.csv").exists():
                continue
            s = read_series(csv_dir)
            per_seed.append({**summarise(s, args.noise_every), "seed": seed})
            style = dict(color=f"C{k}", alpha=0.7, label=name.upper() if len(per_seed) == 1 else None)
            steps, reward = zip(*s["train/reward_mean"])
            tokens = tokens_per_step(s)
            cumulative = [sum(tokens[: i + 1]) / 1000 for i in range(len(tokens))]
            ax_r.plot(steps, reward, **style)
            ax_t.plot(cumulative, reward, **style)
            val = s.get("val/accuracy", [])
            if before and not any(step == 0 for step, _ in val):  # the shared pass before training
                val = [(0.0, before[0]), *val]
            if val:
                ax_v.plot(*zip(*val), marker="o", **style)
            if noise_series(s, args.noise_every):
                ax_n.plot(*zip(*noise_series(s, args.noise_every)), marker="s", **style)
        if per_seed:
            rows.append((name, per_seed))
    ax_r.set(title="training reward", xlabel="RL step", ylabel="mean reward of fresh samples")
    ax_t.set(title="training reward by generated tokens", xlabel="generated tokens (thousands)")
    ax_v.set(title="held-out greedy accuracy", xlabel="RL step", ylabel="accuracy")
    ax_n.set(title="gradient noise-to-signal (per group, lower is better)", xlabel="RL step", yscale="log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")

    def ms(values):
        values = [v for v in values]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {sd:.3f}"

    print(f"held-out accuracy before training (greedy, the same for every run): {before[0] if before else 'n/a'}\n")
    # step 0 is sampled by the same policy with the same seed in every run: paired with GRPO's
    grpo = {p["seed"]: p["noise_first"] for name, per in rows if name == "grpo" for p in per}
    print("| estimator | seeds | held-out after | mean train reward | generated tokens "
          "| noise/signal at step 0 | ÷ GRPO's, same seed | noise/signal, mean of steps |")
    print("|---|---|---|---|---|---|---|---|")
    for name, per in rows:
        col = lambda key: [p[key] for p in per]  # noqa: E731
        paired = [p["noise_first"] / grpo[p["seed"]] for p in per if p["seed"] in grpo]
        print(f"| {name.upper()} | {len(per)} | {ms(col('val_last'))} | {ms(col('reward_mean'))} "
              f"| {statistics.mean(col('tokens')):.0f} | {ms(col('noise_first'))} | {ms(paired) if paired else 'n/a'} "
              f"| {ms(col('noise_mean'))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--root", type=Path, default=Path("runs/study/quickstart"))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--val-every", type=int, default=None, help="steps between held-out passes (default: at the end)")
    parser.add_argument("--noise-every", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="rerun runs that already have logs")
    parser.add_argument("--out", type=Path, default=Path("docs/img/study_quickstart.png"))
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
