"""The ``ibpo`` command: LightningCLI with the rollout callback and an estimator as config groups.

``ibpo fit -c configs/quickstart.yaml`` trains; ``ibpo validate`` evaluates; every constructor
argument is a yaml key and its docstring is its ``--help`` text.
"""

from __future__ import annotations

import os
import warnings

from lightning.pytorch.cli import LightningCLI

from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import Estimator
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.rollout import RolloutCallback


class IBPOCLI(LightningCLI):
    """Adds ``rollout:`` and ``estimator:`` (chosen by ``class_path``) as forced callbacks."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")
        parser.add_lightning_class_args(Estimator, "estimator", subclass_mode=True, required=True)


# Lightning warnings that this design triggers on purpose (see docs/architecture.md)
EXPECTED_WARNINGS = (
    r".*IterableDataset. has .__len__. defined",  # the stream is sized to stop pre-fetching
    r".*overridden .transfer_batch_to_device.",  # RolloutBatch moves itself
    r"Found \d+ module\(s\) in eval mode",  # the frozen reference model
    r".*isinstance\(treespec, LeafSpec\)",
    r"Using ModelCheckpoint with manual optimization",  # saving the state after the update is the intent
    r"It is recommended to use .self.log\(.val/",  # vLLM opens a 1-process group: nothing to sync
)


def run_cli(args: list[str] | None = None) -> IBPOCLI:
    """Build and run the CLI (``args=None`` reads ``sys.argv``); returns it for inspection."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    return IBPOCLI(
        PolicyModule,
        RLDataModule,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main() -> None:
    """Console entry point of ``ibpo``."""
    run_cli()


if __name__ == "__main__":
    main()
