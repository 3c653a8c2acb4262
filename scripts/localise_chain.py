"""Where every estimator puts the blame in a real model's wrong chain answers, and how IBPO's repairs fare.

    python scripts/localise_chain.py run --model runs/sft_chain/export --steps 3
    python scripts/localise_chain.py report

The runs behind docs/results.md 6.3 and 6.4 are stored under docs/data/localise_chain/ and
docs/data/localise_chain_repairs/ (each run's credit rows and CSV log); ``report`` reads them.

Each estimator runs ``ibpo fit -c configs/chain_rl.yaml -c configs/estimators/<name>.yaml`` for
``--steps`` steps with the learning rate at 0, so every step samples from the same (SFT) model and
the credit is computed on its own failures; with one seed the fresh samples of a step are the same
for estimators with the same group size. The :class:`~ibpo_lightning.diagnostics.CreditLocalisation`
callback writes each located row (per-token credit, the token of the first wrong line) to
``<root>/<name>/credit.jsonl``; ``report`` turns them into one table: the share of negative credit
from the first wrong line on, the token share there (what one number on every token gets), and the
AUC (does the credit rank the tokens from the error on above the ones before?). For IBPO it adds
the repair success rate and the edited-token fraction from the run's CSV log. A finished estimator
(its ``done`` file) is skipped on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ibpo_lightning.diagnostics.credit import row_localisation

ROOT = Path(__file__).resolve().parents[1]
CHAIN = {arm: (given.get("overlays", []), given.get("overrides", [])) for arm, given in  # the chain study's
         yaml.safe_load((ROOT / "configs/studies/studies.yaml").read_text())["chain"]["estimators"].items()}
ESTIMATORS = {  # name -> estimator overlays and overrides on the chain config
    **{name: ([f"configs/estimators/{name}.yaml"], []) for name in
       ("grpo", "dr_grpo", "gspo", "rloo", "reinforce_pp", "reinforce_pp_baseline")},
    "dapo": CHAIN["dapo"],
    "ibpo_whole": CHAIN["ibpo"],  # the chain config's own IBPO
    "ibpo_line": ([], ["--estimator.init_args.repair_prompt", "line"]),
    "ibpo_revision": CHAIN["ibpo_revision"],
    "srpo": CHAIN["srpo"], "rrpo": CHAIN["rrpo"], "vineppo": CHAIN["vineppo"],
    "spo": (["configs/estimators/spo.yaml"], ["--estimator.init_args.segment_tokens", "8"]),
    "acpo": (["configs/estimators/acpo.yaml"], ["--estimator.init_args.step_delimiter", "\n"]),
    # token credit from the group, no extra rollout
    **{name: ([f"configs/estimators/{name}.yaml"], []) for name in ("ktae", "tempo", "forking")},
    # IBPO's repairs by reference kind (the sibling arms above: ibpo_whole, ibpo_line)
    "ibpo_solution": ([], ["--estimator.init_args.reference", "solution"]),
    "ibpo_both": ([], ["--estimator.init_args.reference", "both"]),
    "ibpo_solution_line": ([], ["--estimator.init_args.reference", "solution", "--estimator.init_args.repair_prompt", "line"]),
}
LABELS = {  # name -> how the tables name it
    "grpo": "GRPO", "dr_grpo": "Dr.GRPO", "gspo": "GSPO", "rloo": "RLOO", "dapo": "DAPO",
    "reinforce_pp": "REINFORCE++", "reinforce_pp_baseline": "REINFORCE++-baseline",
    "ibpo_whole": "IBPO, sibling, whole-answer repair", "ibpo_line": "IBPO, sibling, line repair",
    "ibpo_revision": "IBPO, sibling, line repair + `train_on_revision`", "srpo": "SRPO", "rrpo": "RRPO",
    "vineppo": "VinePPO (9 probes a line)", "spo": "SPO (8-token segments)", "acpo": "ACPO",
    "ktae": "KTAE", "tempo": "TEMPO", "forking": "forking tokens (top 20% by entropy)",
    "ibpo_solution": "IBPO, solution, whole-answer repair", "ibpo_both": "IBPO, sibling and solution, whole-answer repair",
    "ibpo_solution_line": "IBPO, solution, line repair"}


def run(args) -> None:
    for name in args.estimators:
        out = args.root / name
        if (out / "done").exists():
            print(f"skip {name}: {out / 'done'} exists", flush=True)
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / "credit.jsonl").unlink(missing_ok=True)
        overlays, overrides = ESTIMATORS[name]
        logger = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": str(out), "name": "csv", "version": "", "flush_logs_every_n_steps": 1}}]
        callbacks = [{"class_path": "ibpo_lightning.diagnostics.CreditLocalisation",
                      "init_args": {"path": str(out / "credit.jsonl")}}]
        cmd = [sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", args.config]
        for overlay in overlays:
            cmd += ["-c", overlay]
        cmd += overrides + [
            "--model.model", args.model, "--model.optimizer.init_args.lr", "0.0",
            "--trainer.precision", args.precision, "--data.steps", str(args.steps),
            "--data.prompts_per_step", str(args.prompts), "--seed_everything", str(args.seed),
            "--data.seed", str(args.seed), "--rollout.seed", str(args.seed),
            "--trainer.num_sanity_val_steps", "0", "--trainer.limit_val_batches", "0",
            "--trainer.default_root_dir", str(out), "--trainer.logger", json.dumps(logger),
            "--trainer.callbacks", json.dumps(callbacks), "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false"]
        start = time.time()
        print(f"run {name}: {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
        (out / "done").write_text(f"{time.time() - start:.0f} s\n")
        print(f"done {name} in {time.time() - start:.0f} s", flush=True)


def localisation(path: Path) -> dict[str, float]:
    """Mean after-error share, token share and AUC over the rows with negative credit, and the
    AUC over the rows whose credit is not one number on every token (the rows an estimator
    localised at all)."""
    shares, token_shares, aucs, shaped = [], [], [], []
    masked, masked_after, masked_positive = 0, [], 0  # rows with credit on some tokens only
    for line in path.read_text().splitlines():
        row = json.loads(line)
        credit, error = row["credit"], row["error_token"]
        if 0.0 in credit and any(credit):
            masked += 1
            masked_after.append(sum(abs(c) for c in credit[error:]) / sum(abs(c) for c in credit))
            masked_positive += max(credit) > 0
        located = row_localisation(credit, error)
        if located is None:
            continue
        share, token_share, auc = located
        shares.append(share)
        token_shares.append(token_share)
        if auc is not None:
            aucs.append(auc)
            if len(set(credit)) > 1:
                shaped.append(auc)
    mean = lambda v: statistics.mean(v) if v else float("nan")  # noqa: E731
    return {"rows": len(shares), "share": mean(shares), "token_share": mean(token_shares),
            "auc": mean(aucs), "auc_rows": len(aucs), "shaped_rows": len(shaped), "shaped_auc": mean(shaped),
            "masked_rows": masked, "masked_after": mean(masked_after), "masked_positive": masked_positive}


def repairs(csv_dir: Path) -> dict[str, float] | None:
    """Repairs tried and verified, and the mean edited-token fraction over steps with a success."""
    with open(csv_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    if not rows or "ibpo/revisions" not in rows[0]:
        return None
    total = lambda key: sum(float(r[key]) for r in rows if r.get(key))  # noqa: E731
    edited = [float(r["ibpo/edited_token_fraction"]) * float(r["ibpo/repaired_samples"]) for r in rows
              if r.get("ibpo/repaired_samples") and float(r["ibpo/repaired_samples"]) > 0]
    repaired = total("ibpo/repaired_samples")
    return {"tried": total("ibpo/revisions"), "verified": total("ibpo/revisions_correct"),
            "edited": sum(edited) / repaired if repaired else float("nan"), "repaired": repaired}


def _f(value: float) -> str:
    return "—" if value != value else f"{value:.3f}"  # nan: no such rows


def report(args) -> None:
    summary = {}
    print("| estimator | rows with blame | blame from the first wrong line on | tokens there | AUC "
          "| rows with non-uniform credit | their AUC |")
    print("|---|---|---|---|---|---|---|")
    for name in args.estimators:
        path = args.root / name / "credit.jsonl"
        if not (args.root / name / "done").exists():
            continue
        loc = localisation(path)
        summary[name] = {**loc, "repairs": repairs(args.root / name / "csv")}
        print(f"| {LABELS[name]} | {loc['rows']} | {_f(loc['share'])} | {_f(loc['token_share'])} | {_f(loc['auc'])} "
              f"| {loc['shaped_rows']} | {_f(loc['shaped_auc'])} |")
    print("\n| IBPO reading | repairs tried | verified | success rate | wrong answers repaired | edited-token fraction "
          "| masked rows: credit from the first wrong line on | masked rows with positive credit |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        r = s["repairs"]
        if r and r["tried"]:
            print(f"| {LABELS[name]} | {r['tried']:.0f} | {r['verified']:.0f} | {r['verified'] / r['tried']:.1%} "
                  f"| {r['repaired']:.0f} | {_f(r['edited'])} | {_f(s['masked_after'])} "
                  f"| {s['masked_positive']} of {s['masked_rows']} |")
    if not summary:
        sys.exit(f"no finished run under {args.root}: run `localise_chain.py run` first")
    out = args.summary or args.root / "summary.json"
    out.write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--config", default="configs/chain_rl.yaml")
    parser.add_argument("--model", default="runs/sft_chain/export", help="the SFT stage's export")
    parser.add_argument("--root", type=Path, default=Path("docs/data/localise_chain"))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--summary", type=Path, default=None, help="report: where to write the figures "
                        "as JSON (default: <root>/summary.json)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()
    run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    main()
