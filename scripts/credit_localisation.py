"""Credit-localisation diagnostic: where each estimator puts negative credit in failed answers.

    python scripts/credit_localisation.py --steps 3 --out docs/img/credit_localisation.png

Runs ``ibpo fit -c configs/chain.yaml -c configs/estimators/<name>.yaml`` per estimator (the chain
task with its scripted noisy-calculator policy; thoughts are lines), with the
:class:`~ibpo_lightning.diagnostics.CreditLocalisation` callback writing one JSON line per failed
row whose first wrong step is known. Prints the table and plots (left) the after-error share of
negative credit against the share of tokens after the error, (right) the mean negative credit per
token by distance to the first wrong token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ESTIMATORS = {
    "grpo": [], "dapo": [], "rloo": [], "ibpo": [],
    "srpo": ["--estimator.init_args.delimiter", "\n", "--estimator.init_args.localisation_max_new_tokens", "32"],
    "rrpo": ["--estimator.init_args.delimiter", "\n"],
    "vineppo": [],
    "acpo": ["--estimator.init_args.step_delimiter", "\n"],
}
WINDOW = 12  # tokens either side of the first wrong token in the profile


def run(name: str, steps: int, root: Path, seed: int, noise_every: int) -> Path:
    out = root / name
    records = out / "credit.jsonl"
    for stale in (records, out / "csv" / "metrics.csv"):
        stale.unlink(missing_ok=True)
    callbacks = json.dumps([{"class_path": "ibpo_lightning.diagnostics.CreditLocalisation",
                             "init_args": {"path": str(records)}}])
    cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/chain.yaml",
           "-c", f"configs/estimators/{name}.yaml", *ESTIMATORS[name], "--data.steps", str(steps),
           "--seed_everything", str(seed), "--data.seed", str(seed), "--rollout.seed", str(seed),
           "--model.grad_noise_every", str(noise_every), "--trainer.callbacks", callbacks, "--trainer.enable_progress_bar", "false",
           "--trainer.logger", json.dumps([{"class_path": "lightning.pytorch.loggers.CSVLogger",
                                            "init_args": {"save_dir": str(out), "name": "csv", "version": ""}}]),
           "--trainer.default_root_dir", str(out)]
    print(f"run {name}", flush=True)
    subprocess.run(cmd, check=True)
    return records


def summarise(records: list[dict]) -> dict[str, float]:
    shares, token_shares, before_per_token, after_per_token = [], [], [], []
    for r in records:
        negative = [max(-c, 0.0) for c in r["credit"]]
        e, n = r["error_token"], len(negative)
        if sum(negative) <= 0:
            continue
        shares.append(sum(negative[e:]) / sum(negative))
        token_shares.append((n - e) / n)
        if 0 < e < n:
            before_per_token.append(sum(negative[:e]) / e / (sum(negative) / n))
            after_per_token.append(sum(negative[e:]) / (n - e) / (sum(negative) / n))
    mean = lambda xs: statistics.mean(xs) if xs else float("nan")  # noqa: E731
    return {"rows": len(records), "rows_negative": len(shares), "share": mean(shares),
            "token_share": mean(token_shares), "before_density": mean(before_per_token),
            "after_density": mean(after_per_token)}


def gradient_noise(csv_path: Path) -> list[float]:
    """``grad/noise_to_signal`` of every step of a run (measured each step on the chain task)."""
    import csv

    if not csv_path.exists():
        return []
    with open(csv_path) as f:
        return [float(row["grad/noise_to_signal"]) for row in csv.DictReader(f) if row.get("grad/noise_to_signal")]


def profile(records: list[dict]) -> list[float]:
    """Mean negative credit per token at distance -WINDOW..WINDOW from the first wrong token, each
    row's negative credit scaled to sum to 1."""
    sums, counts = [0.0] * (2 * WINDOW + 1), [0] * (2 * WINDOW + 1)
    for r in records:
        negative = [max(-c, 0.0) for c in r["credit"]]
        total = sum(negative)
        if total <= 0:
            continue
        for t, v in enumerate(negative):
            d = t - r["error_token"]
            if -WINDOW <= d <= WINDOW:
                sums[d + WINDOW] += v / total
                counts[d + WINDOW] += 1
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def noise_text(run_dir: Path) -> str:
    values = gradient_noise(run_dir / "csv" / "metrics.csv")
    return f"{statistics.mean(values):.2f} ({', '.join(f'{v:.2f}' for v in values)})" if values else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-every", type=int, default=1, help="model.grad_noise_every (0: off)")
    parser.add_argument("--root", type=Path, default=Path("runs/credit_localisation"))
    parser.add_argument("--report-only", action="store_true", help="read the records of an earlier run")
    parser.add_argument("--out", type=Path, default=Path("docs/img/credit_localisation.png"))
    args = parser.parse_args()
    results = {}
    for name in args.estimators:
        path = args.root / name / "credit.jsonl" if args.report_only else run(name, args.steps, args.root, args.seed, args.noise_every)
        results[name] = [json.loads(line) for line in path.read_text().splitlines()]

    noise = {name: noise_text(args.root / name) for name in results}
    with_noise = any(v != "n/a" for v in noise.values())  # runs with --noise-every 0 have none
    print("| estimator | failed rows located | with negative credit | negative credit from the first error on "
          "| tokens from the first error on | negative credit per token, before / after the error (1 = uniform) |"
          + (" gradient noise/signal per group (mean of steps) |" if with_noise else ""))
    print("|---|---|---|---|---|---|" + ("---|" if with_noise else ""))
    stats = {name: summarise(r) for name, r in results.items()}
    for name, s in stats.items():
        print(f"| {name.upper()} | {s['rows']} | {s['rows_negative']} | {s['share']:.3f} | {s['token_share']:.3f} "
              f"| {s['before_density']:.2f} / {s['after_density']:.2f} |" + (f" {noise[name]} |" if with_noise else ""))

    fig, (ax_bar, ax_prof) = plt.subplots(1, 2, figsize=(12, 4.2))
    names = list(stats)
    x = range(len(names))
    ax_bar.bar([i - 0.2 for i in x], [stats[n]["share"] for n in names], width=0.4, label="negative credit")
    ax_bar.bar([i + 0.2 for i in x], [stats[n]["token_share"] for n in names], width=0.4, label="tokens (uniform smear)")
    ax_bar.set_xticks(list(x), [n.upper() for n in names], rotation=30)
    ax_bar.set(title="share from the first wrong step on (failed answers)", ylim=(0, 1))
    for k, name in enumerate(names):
        ax_prof.plot(range(-WINDOW, WINDOW + 1), profile(results[name]), label=name.upper(), color=f"C{k}",
                     marker="o", markersize=3)
    ax_prof.axvline(0, color="grey", ls="--")
    ax_prof.set(title="negative credit per token (row total = 1)", xlabel="tokens from the first wrong token")
    for ax in (ax_bar, ax_prof):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
