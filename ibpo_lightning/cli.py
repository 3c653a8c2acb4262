"""The ``ibpo`` command: LightningCLI with the rollout callback and an estimator as config groups.

``ibpo fit -c configs/quickstart.yaml`` trains; ``ibpo validate`` evaluates on the held-out split
and ``ibpo test`` on the task's test split; every constructor argument is a yaml key and its
docstring is its ``--help`` text. ``ibpo sft -c configs/sft_chain.yaml`` fine-tunes on a task's
worked solutions (``SFTModule``, ``SFTDataModule``; the rollout callback samples its
evaluations), with the same trainer, strategies, logging, checkpoints and ``--ckpt_path last``;
``ibpo sft validate|test ...`` evaluates under that config.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ibpo_lightning.checkpointing import find_last, warn_if_tearable
from ibpo_lightning.data import RLDataModule
from ibpo_lightning.estimators import Estimator
from ibpo_lightning.module import PolicyModule
from ibpo_lightning.precision import Trainer
from ibpo_lightning.rollout import RolloutCallback
from ibpo_lightning.sft import SFTDataModule, SFTModule


class SFTCLI(LightningCLI):
    """Adds ``rollout:`` as a forced callback (it samples the evaluations).

    A run starts fresh unless ``--ckpt_path`` names a checkpoint; ``--ckpt_path last`` resumes
    from the newest one under ``trainer.default_root_dir`` (see ``checkpointing.py``). The
    trainer is ``precision.Trainer``, which also takes ``precision: auto`` (its default).
    """

    def __init__(self, *args, trainer_class=Trainer, **kwargs) -> None:
        super().__init__(*args, trainer_class=trainer_class, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(RolloutCallback, "rollout")

    def before_fit(self) -> None:
        warn_if_tearable(self.trainer)
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            last = find_last(self.trainer.default_root_dir)
            if last is None:
                print(f"--ckpt_path last: no checkpoint under {self.trainer.default_root_dir}; starting fresh",
                      file=sys.stderr)
            else:
                print(f"resuming from {last}", file=sys.stderr)
            config["ckpt_path"] = None if last is None else str(last)


class IBPOCLI(SFTCLI):
    """Adds ``rollout:`` and ``estimator:`` (chosen by ``class_path``) as forced callbacks; runs
    start fresh unless ``--ckpt_path`` says otherwise, as in ``SFTCLI``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(Estimator, "estimator", subclass_mode=True, required=True)


# Lightning warnings that this design triggers on purpose (see docs/architecture.md)
EXPECTED_WARNINGS = (
    r".*IterableDataset. has .__len__. defined",  # the stream is sized to stop pre-fetching
    r".*overridden .transfer_batch_to_device.",  # RolloutBatch moves itself
    r"Found \d+ module\(s\) in eval mode",  # the frozen reference model
    r".*isinstance\(treespec, LeafSpec\)",
    r"Using ModelCheckpoint with manual optimization",  # saving the state after the update is the intent
    r"It is recommended to use .self.log\(.val/",  # vLLM opens a 1-process group: nothing to sync
    r"Precision bf16-mixed is not supported by the model summary",  # only its size estimate is off
    r"LightningCLI's args parameter is intended",  # `ibpo sft` hands on its arguments after `fit`
)


def _run(cls: type[LightningCLI], module: type, data: type, args: list[str] | None) -> LightningCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    return cls(module, data, parser_kwargs={"parser_mode": "omegaconf"}, save_config_kwargs={"overwrite": True},
               args=args)


def run_cli(args: list[str] | None = None) -> IBPOCLI:
    """Build and run the RL CLI (``args=None`` reads ``sys.argv``); returns it for inspection."""
    return _run(IBPOCLI, PolicyModule, RLDataModule, args)


def run_sft_cli(args: list[str] | None = None) -> SFTCLI:
    """Build and run the supervised fine-tuning CLI (``fit|validate|test`` first, as for ``run_cli``)."""
    return _run(SFTCLI, SFTModule, SFTDataModule, args)


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``ibpo``; a run stopped by SIGTERM (after saving, see
    ``checkpointing.InterruptCheckpoint``) exits with status 143, as a terminated process does.
    ``ibpo sft ARGS`` is ``run_sft_cli(["fit", *ARGS])`` (or ``validate``/``test`` when ARGS start
    with one)."""
    given = sys.argv[1:] if argv is None else argv
    try:
        if given[:1] == ["sft"]:
            rest = given[1:]
            run_sft_cli(rest if rest[:1] and rest[0] in ("fit", "validate", "test") else ["fit", *rest])
        else:
            run_cli(argv)
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
