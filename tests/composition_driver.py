"""Runs one RL step of every estimator overlay through the real CLI, in this one process.

    python tests/composition_driver.py OUT [OVERLAY ...] [-- extra CLI args]   # one process
    python -m torch.distributed.run --nproc_per_node 2 tests/composition_driver.py OUT -- -c configs/strategies/ddp.yaml

Under ``torch.distributed.run`` every rank runs the same loop; Lightning finds the launcher's
environment and joins its process group, so the runs share one launch. Naming overlays (file stems)
runs only those. Each rank appends one JSON line per estimator to ``OUT/rank<r>.jsonl``: the
overlay, the strategy, the policy version after the step, the reward, the learning signal (the
mean absolute advantage on weighted tokens, the gradient norm, whether the weights moved), the
estimator's own and the dynamic-sampling metrics, whether a reference model was built, the
safetensors ``HFExport`` wrote, and the error if the run failed (the loop goes on to the next
overlay).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from ibpo_lightning.cli import leave_process_group, run_cli  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    head, extra = (args[: args.index("--")], args[args.index("--") + 1 :]) if "--" in args else (args, [])
    out, only = Path(head[0]), set(head[1:])
    rank = int(os.environ.get("RANK", 0))
    out.mkdir(parents=True, exist_ok=True)
    for overlay in sorted((ROOT / "configs/estimators").glob("*.yaml")):
        if only and overlay.stem not in only:
            continue
        row: dict = {"estimator": overlay.stem, "rank": rank}
        try:
            cli = run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(overlay), *extra,
                           f"--trainer.default_root_dir={out / overlay.stem}", "--trainer.max_steps=1",
                           "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                           "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                           "--trainer.enable_model_summary=false",
                           "--trainer.callbacks+=ibpo_lightning.export.HFExport",
                           "--trainer.callbacks+=tests.helpers.WeightMotion"])
            metrics = cli.trainer.callback_metrics
            own = f"{cli.model.estimator.name}/"
            motion = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "WeightMotion")
            row.update(version=cli.model.policy_version, reward=float(metrics["train/reward_mean"]),
                       adv_abs_mean=float(metrics["train/adv_abs_mean"]), grad_norm=float(metrics["train/grad_norm"]),
                       moved=motion.moved,
                       estimator_metrics={k: float(v) for k, v in metrics.items() if k.startswith(own)},
                       dynamic={k: float(v) for k, v in metrics.items() if k.startswith("dynamic/")},
                       credit={k: float(v) for k, v in metrics.items() if k.startswith("credit/")},
                       episode={k: float(v) for k, v in metrics.items() if k.startswith(("episode/", "tokens/"))},
                       reference=cli.model.reference is not None, world=cli.trainer.world_size,
                       train_problems=len(cli.datamodule.train_problems),
                       strategy=type(cli.trainer.strategy).__name__,
                       exported=sorted(p.name for p in (out / overlay.stem / "export").glob("*.safetensors")))
        except Exception as err:  # noqa: BLE001 - recorded, and the next overlay still runs
            row["error"] = f"{type(err).__name__}: {err}\n{traceback.format_exc()[-2000:]}"
        with open(out / f"rank{rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    leave_process_group()


if __name__ == "__main__":
    main()
