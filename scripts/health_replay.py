"""Replay a finished run's metrics through the run-health checks: what would they have said, and when?

The checks (``ibpo_lightning.diagnostics.RunHealth``) are a function of the metrics every RL step
logs, so feeding a run's ``metrics.csv`` rows through them repeats what a live run would have
warned (all but the temperature check, which reads the sampler before the first step).

Usage:  python scripts/health_replay.py runs/quickstart/csv/version_0 [--max-new-tokens 16] [--patience 3]
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

from ibpo_lightning.diagnostics import RunHealth, RunHealthWarning


def replay(path: Path, max_new_tokens: int = 0, **settings) -> list[tuple[int, str]]:
    """(step, message) of every warning the checks give on the training rows of ``path``."""
    health = RunHealth(**settings)
    module = SimpleNamespace(parts=SimpleNamespace(sampler=SimpleNamespace(temperature=1.0,
                                                                           max_new_tokens=max_new_tokens)))
    trainer = SimpleNamespace(is_global_zero=True, global_step=0, callback_metrics={})
    said = []
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/reward_mean")]
    for step, row in enumerate(rows, start=1):
        trainer.global_step = step
        trainer.callback_metrics = {k: float(v) for k, v in row.items() if v and k.startswith(("train/", "rollout/"))}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            health.on_train_batch_end(trainer, module, {}, None, step)
        said += [(step, str(w.message)) for w in caught if w.category is RunHealthWarning]
    return said


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run's csv/version_N folder or its metrics.csv")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="shown in the truncation message")
    parser.add_argument("--patience", type=int, default=3)
    args = parser.parse_args(argv)
    path = args.run / "metrics.csv" if args.run.is_dir() else args.run
    if not path.is_file():
        parser.error(f"{path} does not exist")
    said = replay(path, args.max_new_tokens, patience=args.patience)
    for step, message in said:
        print(f"step {step}: {message}")
    print(f"{len(said)} run-health warnings over the run ({path})")
    sys.exit(0)


if __name__ == "__main__":
    main()
