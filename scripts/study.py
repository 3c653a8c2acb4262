"""Learning-efficiency study: estimators x seeds on one task, curves and a summary table.

    python scripts/study.py run --steps 10 --seeds 0 1 2            # quickstart task, 5 estimators
    python scripts/study.py report --out docs/img/study_quickstart.png
    python scripts/study.py run --study chain --model runs/sft_chain/export   # from the SFT export
    python scripts/study.py report --study chain

Each run is ``ibpo fit -c <study config> [-c configs/estimators/<name>.yaml]`` in its own process,
CSV logs under ``<root>/<estimator>/seed<k>``, with the per-group gradient noise logged every
``--noise-every`` steps (``model.grad_noise_every``). A finished run leaves a ``done`` file and a
rerun skips it, so a long study can be stopped and continued at any point: a run checkpoints every
``--ckpt-every`` steps and when interrupted (under ``runs/study_checkpoints/``, outside the
repository, deleted when it finishes), and a rerun resumes it from there, its logs joined
(``merge_parts``); a run stopped before its first checkpoint starts over. A study from a model directory records its weights' sha256 in
``<root>/start_model.sha256`` at its first run and refuses to go on from other weights.
``--export DIR`` keeps each run's final policy in Hugging Face format (``DIR/<study>/<estimator>/seed<k>``)
for evaluations the study does not make. ``report`` reads the logs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import yaml  # noqa: E402

from ibpo_lightning.checkpointing import find_last  # noqa: E402
from ibpo_lightning.diagnostics.run_logs import by_tokens, read_series, tokens_per_step, value_at  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Study:
    config: str
    root: str
    estimators: dict[str, tuple[list[str], list[str]]]  # name -> overlays, overrides on the config
    steps: int
    val_every: int | None = None
    overrides: list[str] = field(default_factory=list)  # for every run
    needs_model: bool = False  # --model is passed as model.model


def load_studies(path: Path = ROOT / "configs/studies/studies.yaml") -> dict[str, Study]:
    """The studies of ``configs/studies/studies.yaml``, each arm as (overlays, overrides)."""
    raw = yaml.safe_load(path.read_text())
    return {name: Study(**{**spec, "estimators": {arm: (given.get("overlays", []), given.get("overrides", []))
                                                  for arm, given in spec["estimators"].items()}})
            for name, spec in raw.items()}


STUDIES = load_studies()


def run_dir(root: Path, estimator: str, seed: int) -> Path:
    return root / estimator / f"seed{seed}"


def finished(out: Path) -> bool:
    """A run that ended (its ``done`` file; older studies: a metrics.csv with no ``done`` files anywhere)."""
    return (out / "done").exists() or ((out / "csv" / "metrics.csv").exists() and not any(out.parent.parent.glob("*/*/done")))


def weight_digests(model: str) -> list[str]:
    """``sha256sum`` lines (digest, two spaces, file name) of a local model directory's weight
    files, in name order; empty for a model that is not a local directory (a built-in name)."""
    path = Path(model)
    files = sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]) if path.is_dir() else []
    lines = []
    for f in files:
        with open(f, "rb") as fh:
            lines.append(f"{hashlib.file_digest(fh, 'sha256').hexdigest()}  {f.name}")
    return lines


def check_start_model(root: Path, model: str) -> None:
    """Every run of a study starts from the same weights. The first run records them in
    ``<root>/start_model.sha256`` (``sha256sum -c`` reads it inside the model directory); a run
    from other weights stops before training, naming both."""
    digests = weight_digests(model)
    if not digests:
        return
    record = root / "start_model.sha256"
    if not record.exists():
        root.mkdir(parents=True, exist_ok=True)
        record.write_text("\n".join(digests) + "\n")
        return
    known = [line for line in record.read_text().splitlines() if line.strip()]
    if known != digests:
        sys.exit(f"--model {model} is not the model this study started from:\n  {record}:\n    "
                 + "\n    ".join(known) + f"\n  {model}:\n    "
                 + "\n    ".join(digests) + "\nfinished runs would no longer be comparable; pass the "
                 "study's starting model, or a new --root")


def start_values(runs) -> dict[str, float]:
    """The held-out values before training (step 0) found in ``runs`` (logged series): the same
    in every run of a study, made by its first run only."""
    return {key: v for s in runs for key in VAL for step, v in s.get(key, []) if step == 0}


def has_start_eval(root: Path) -> bool:
    """Whether a finished run of the study already holds the held-out pass before training."""
    return bool(start_values(read_series(done.parent / "csv") for done in root.glob("*/*/done")))


def run(args) -> None:
    study = STUDIES[args.study]
    if study.needs_model:
        check_start_model(args.root, args.model)
    for seed in args.seeds:
        for name in args.estimators:
            out = run_dir(args.root, name, seed)
            checkpoints = args.checkpoints / args.study / name / f"seed{seed}"
            last = find_last(checkpoints) if checkpoints.is_dir() else None  # last.ckpt, or interrupted.ckpt if newer
            resuming = last is not None and not args.force and not (out / "done").exists()
            if finished(out) and not args.force and not resuming:
                print(f"skip {out}: finished", flush=True)
                continue
            if resuming:  # the logger deletes metrics.csv at start: keep what the run logged so far
                parts = sorted((out / "csv").glob("metrics.part*.csv"))
                (out / "csv" / "metrics.csv").rename(out / "csv" / f"metrics.part{len(parts)}.csv")
            else:  # a run interrupted before its first checkpoint starts over
                shutil.rmtree(checkpoints, ignore_errors=True)
                for old in (out / "csv").glob("metrics*.csv"):
                    old.unlink()
            configs, overrides = study.estimators[name]
            logger = ('[{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": '
                      f'{{"save_dir": "{out}", "name": "csv", "version": "", "flush_logs_every_n_steps": 1}}}}]')
            # checkpoints outside the repository, every --ckpt-every steps and on an interruption
            callbacks = json.dumps([
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(checkpoints), "save_last": True, "save_top_k": 0,
                               "every_n_train_steps": args.ckpt_every}},
                {"class_path": "ibpo_lightning.checkpointing.InterruptCheckpoint",
                 "init_args": {"dirpath": str(checkpoints)}},
                *([{"class_path": "ibpo_lightning.export.HFExport",
                    "init_args": {"dirpath": str(args.export / args.study / name / f"seed{seed}")}}]
                  if args.export else [])])
            cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", study.config]
            for c in configs:
                cmd += ["-c", c]
            if study.needs_model:
                cmd += ["--model.model", args.model]
            if args.lr is not None:
                cmd += ["--model.optimizer.init_args.lr", str(args.lr)]
            # the held-out pass before training is the same decode of the same model in every run:
            # only the study's first run makes it; the report reuses its value
            first = not has_start_eval(args.root) and not resuming
            cmd += study.overrides + overrides + [
                "--trainer.num_sanity_val_steps", "-1" if first else "0",
                "--trainer.val_check_interval", str(args.val_every or args.steps),
                "--seed_everything", str(seed), "--data.seed", str(seed), "--rollout.seed", str(seed),
                "--data.steps", str(args.steps), "--model.grad_noise_every", str(args.noise_every),
                "--trainer.default_root_dir", str(out), "--trainer.logger", logger,
                "--trainer.callbacks", callbacks, "--trainer.enable_progress_bar", "false"]
            if resuming:
                cmd += ["--ckpt_path", str(last)]
            start = time.time()
            print(f"{'resume' if resuming else 'run'} {name} seed {seed}: {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True)
            merge_parts(out / "csv")
            shutil.rmtree(checkpoints, ignore_errors=True)
            (out / "done").write_text(f"{time.time() - start:.0f} s\n")
            print(f"done {name} seed {seed} in {time.time() - start:.0f} s", flush=True)


def merge_parts(csv_dir: Path) -> None:
    """Join the logs of a run that was resumed (``metrics.part<k>.csv``, oldest first) and of its last
    attempt (``metrics.csv``) into ``metrics.csv``: of each earlier part, the rows logged before the
    next attempt's first step (a resumed run repeats the steps after its checkpoint)."""
    parts = sorted(csv_dir.glob("metrics.part*.csv"), key=lambda p: int(p.stem.removeprefix("metrics.part")))
    if not parts:
        return
    files = [*parts, csv_dir / "metrics.csv"]
    tables = [list(csv.DictReader(f.open())) for f in files]
    rows = []
    for table, after in zip(tables, tables[1:] + [None]):
        begin = min((float(r["step"]) for r in after), default=math.inf) if after is not None else math.inf
        rows += [r for r in table if float(r["step"]) < begin]
    keys = sorted({k for r in rows for k in r})
    with (csv_dir / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    for part in parts:
        part.unlink()


def noise_series(series: dict, every: int = 5) -> list[tuple[float, float]]:
    """``grad/noise_to_signal`` at the steps where it was measured (older logs repeat it between)."""
    return [(step, v) for step, v in series.get("grad/noise_to_signal", []) if step % every == 0]


VAL = {"val/accuracy": "held-out accuracy", "val/greedy": "held-out greedy accuracy"}


def summarise(series: dict, noise_every: int, before: dict[str, float]) -> dict[str, float]:
    """Final value and gain over ``before`` of each held-out metric, reward, tokens, noise."""
    noise = [v for _, v in noise_series(series, noise_every)]
    out = {"reward_mean": statistics.mean(v for _, v in series["train/reward_mean"]),
           "tokens": sum(tokens_per_step(series)), "noise_first": noise[0] if noise else float("nan"),
           "noise_mean": statistics.mean(noise) if noise else float("nan")}
    for key in VAL:
        val = series.get(key, [])
        out[key] = val[-1][1] if val else float("nan")
        out[key + "_gain"] = out[key] - before.get(key, float("nan"))
    return out


def ms(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def stored_seeds(root: Path) -> list[int]:
    """The seeds with a run folder under ``root`` (``<estimator>/seed<k>``): what a report reads by default."""
    return sorted({int(d.name[4:]) for d in root.glob("*/seed*") if d.is_dir() and d.name[4:].isdigit()})


def report(args) -> None:
    runs = {(name, seed): read_series(run_dir(args.root, name, seed) / "csv") for name in args.estimators
            for seed in args.seeds if finished(run_dir(args.root, name, seed))}
    before = start_values(runs.values())
    shown = [key for key in VAL if any(key in s for s in runs.values())]
    fig, axes = plt.subplots(2, 1 + len(shown), figsize=(5 * (1 + len(shown)), 7.5), squeeze=False)
    ax_r, ax_n = axes[0][0], axes[1][0]
    rows = []
    for k, name in enumerate(args.estimators):
        per_seed = []
        for seed in args.seeds:
            if (name, seed) not in runs:
                continue
            s = runs[name, seed]
            per_seed.append({**summarise(s, args.noise_every, before), "seed": seed})
            style = dict(color=f"C{k}", alpha=0.7, label=name.upper() if len(per_seed) == 1 else None)
            ax_r.plot(*zip(*s["train/reward_mean"]), **style)
            for col, key in enumerate(shown, start=1):
                val = s.get(key, [])
                if key in before and not any(step == 0 for step, _ in val):
                    val = [(0.0, before[key]), *val]
                if val:
                    axes[0][col].plot(*zip(*val), marker="o", **style)
                    axes[1][col].plot(*zip(*[(t / 1000, v) for t, v in by_tokens(s, key, before.get(key))]),
                                      marker="o", **style)
            if noise_series(s, args.noise_every):
                ax_n.plot(*zip(*noise_series(s, args.noise_every)), marker="s", **style)
        if per_seed:
            rows.append((name, per_seed))
    ax_r.set(title="training reward", xlabel="RL step", ylabel="mean reward of fresh samples")
    ax_n.set(title="gradient noise-to-signal (per group, lower is better)", xlabel="RL step", yscale="log")
    for col, key in enumerate(shown, start=1):
        axes[0][col].set(title=VAL[key], xlabel="RL step", ylabel="accuracy")
        axes[1][col].set(title=f"{VAL[key]} by generated tokens", xlabel="generated tokens, every kind (thousands)",
                         ylabel="accuracy")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}\n")

    print("held-out before training (the same for every run): "
          + ", ".join(f"{VAL[k]} {v:.3f}" for k, v in before.items()) + "\n")
    # each seed's step-0 samples come from the same policy and seed in every run: pair with GRPO's
    grpo = {p["seed"]: p for name, per in rows if name == "grpo" for p in per}
    head = "".join(f" {VAL[k]} after, % (per seed) | gain, points | − GRPO's, same seed |" for k in shown)
    print(f"| estimator | seeds |{head} mean train reward | generated tokens | noise/signal at step 0 "
          "| ÷ GRPO's, same seed | noise/signal, mean of steps |")
    print("|---|---|" + "---|---|---|" * len(shown) + "---|---|---|---|---|")
    for name, per in rows:
        col = lambda key: [p[key] for p in per]  # noqa: E731
        paired = [(p, grpo[p["seed"]]) for p in per if p["seed"] in grpo and name != "grpo"]
        cells = []
        for key in shown:
            seeds = " / ".join(f"{100 * v:.1f}" for v in col(key))
            delta = [p[key] - g[key] for p, g in paired]
            cells.append(f" {ms(col(key), 100, 1)} ({seeds}) | {ms(col(key + '_gain'), 100, 1)} "
                         f"| {ms(delta, 100, 1) if paired else '—'} |")
        noise = [p["noise_first"] / g["noise_first"] for p, g in paired]
        print(f"| {name.upper()} | {len(per)} |{''.join(cells)} {ms(col('reward_mean'))} "
              f"| {statistics.mean(col('tokens')):.0f} | {ms(col('noise_first'))} "
              f"| {ms(noise) if paired else '—'} | {ms(col('noise_mean'))} |")
    equal_tokens(runs, [name for name, _ in rows], before, shown, args.out)


def equal_tokens(runs: dict, names: list[str], before: dict[str, float], shown: list[str], out: Path) -> None:
    """Held-out accuracy of every run at one budget of generated tokens (every kind): the smallest
    any run reached, each run's readings interpolated linearly in tokens; paired by seed with GRPO,
    the mean difference with its standard error (sd / sqrt(seeds)), printed and plotted to ``out``."""
    if not runs or not shown:
        return
    curves = {(name, seed): {key: by_tokens(s, key, before.get(key)) for key in shown} for (name, seed), s in runs.items()}
    budget = min(max(t for t, _ in c[key]) for c in curves.values() for key in shown if c[key])
    print(f"\nat equal generated tokens: {budget:.0f} (the smallest budget every run reached)\n")
    print("| estimator | seeds |" + "".join(f" {VAL[k]}, % (per seed) | − GRPO's, same seed: mean ± se |" for k in shown))
    print("|---|---|" + "---|---|" * len(shown))
    paired_by = {}  # (estimator, key) -> paired differences with GRPO, one per seed
    for name in names:
        seeds = sorted(seed for n, seed in curves if n == name)
        cells = []
        for key in shown:
            at = {seed: value_at(curves[name, seed][key], budget) for seed in seeds}
            delta = [at[seed] - value_at(curves["grpo", seed][key], budget) for seed in seeds
                     if name != "grpo" and ("grpo", seed) in curves]
            paired = f"{100 * statistics.mean(delta):+.1f}" if delta else "—"
            if len(delta) > 1:
                paired += f" ± {100 * statistics.stdev(delta) / math.sqrt(len(delta)):.1f}"
            elif delta:
                paired += " (one seed: no se)"
            cells.append(f" {ms(list(at.values()), 100, 1)} ({' / '.join(f'{100 * v:.1f}' for v in at.values())}) "
                         f"| {paired} |")
            if delta:
                paired_by[name, key] = [100 * d for d in delta]
        print(f"| {name.upper()} | {len(seeds)} |{''.join(cells)}")
    if paired_by:
        plot_paired(paired_by, names, shown, budget, out)


def plot_paired(paired_by: dict, names: list[str], shown: list[str], budget: float, out: Path) -> None:
    """One row per arm paired with GRPO, in the report's colours: each seed's difference with GRPO at
    equal tokens (grey dots), the mean with twice its standard error (the target: a bar clear of zero)."""
    colour = {name: f"C{k}" for k, name in enumerate(names)}
    names = [n for n in names if any((n, key) in paired_by for key in shown)]
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 0.5 * len(names) + 1.8), squeeze=False)
    for ax, key in zip(axes[0], shown):
        for row, name in enumerate(names):
            if delta := paired_by.get((name, key)):
                ax.scatter(delta, [row] * len(delta), color="grey", alpha=0.6, s=18)
                two_se = 2 * statistics.stdev(delta) / math.sqrt(len(delta)) if len(delta) > 1 else None
                ax.errorbar(statistics.mean(delta), row, xerr=two_se, fmt="o", color=colour[name], capsize=4)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(names)), [f"{n.upper()} ({len(paired_by.get((n, key), []))})" for n in names])
        ax.invert_yaxis()
        ax.set(title=f"{VAL[key]} at {budget / 1000:.0f}k tokens", xlabel="− GRPO's, same seed, points\n(dots: seeds; bar: mean ± 2 se)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = out.with_name(f"{out.stem}_paired{out.suffix}")
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--study", choices=list(STUDIES), default="quickstart")
    parser.add_argument("--root", type=Path, default=None, help="default: the study's")
    parser.add_argument("--estimators", nargs="+", default=None, help="default: the study's")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="default: run 0 1 2; report every seed stored under the study's root")
    parser.add_argument("--steps", type=int, default=None, help="default: the study's")
    parser.add_argument("--val-every", type=int, default=None, help="steps between held-out passes (default: the study's, else at the end)")
    parser.add_argument("--noise-every", type=int, default=5)
    parser.add_argument("--model", default="runs/sft_chain/export", help="model.model where the study starts from one")
    parser.add_argument("--lr", type=float, default=None, help="the learning rate (default: the config's)")
    parser.add_argument("--force", action="store_true", help="rerun runs that already finished")
    parser.add_argument("--export", type=Path, default=None,
                        help="save each run's final policy in Hugging Face format under EXPORT/<study>/<estimator>/seed<k>")
    parser.add_argument("--ckpt-every", type=int, default=5, help="checkpoint every this many steps (a rerun resumes)")
    parser.add_argument("--checkpoints", type=Path, default=Path("runs") / "study_checkpoints",
                        help="where unfinished runs keep their checkpoints")
    parser.add_argument("--out", type=Path, default=None, help="the plot (default: docs/img/study_<study>.png)")
    args = parser.parse_args()
    study = STUDIES[args.study]
    args.root = args.root or Path(study.root)
    args.estimators = args.estimators or list(study.estimators)
    unknown = sorted(set(args.estimators) - set(study.estimators))
    if unknown:
        parser.error(f"--estimators {unknown}: the {args.study} study has {sorted(study.estimators)}")
    if args.seeds is None:
        args.seeds = [0, 1, 2] if args.command == "run" else stored_seeds(args.root)
    args.steps = args.steps or study.steps
    args.val_every = args.val_every or study.val_every
    args.out = args.out or Path(f"docs/img/study_{args.study}.png")
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
