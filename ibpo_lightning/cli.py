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

from ibpo_lightning.checkpointing import check_run_dir, find_last, resume_notes, warn_if_tearable
from ibpo_lightning.data import RLDataModule
from ibpo_lightning.diagnostics import RunHealth, RunHealthError
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
        check_run_dir(self.trainer)
        warn_if_tearable(self.trainer)
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            last = find_last(self.trainer.default_root_dir)
            if last is None:
                print(f"--ckpt_path last: no checkpoint under {self.trainer.default_root_dir}; starting fresh",
                      file=sys.stderr)
            config["ckpt_path"] = None if last is None else str(last)
        if config.get("ckpt_path"):
            steps = getattr(self.datamodule, "steps", None)
            epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
            total = self.trainer.max_steps if self.trainer.max_steps > 0 else (steps * epochs if steps else None)
            estimator = next((cb for cb in self.trainer.callbacks if isinstance(cb, Estimator)), None)
            signature = self.model.run_signature(estimator) if hasattr(self.model, "run_signature") else {}
            for line in resume_notes(config["ckpt_path"], total, signature):
                print(line, file=sys.stderr)


class IBPOCLI(SFTCLI):
    """Adds ``rollout:``, ``estimator:`` (chosen by ``class_path``) and ``health:`` (run-health
    warnings, on by default) as forced callbacks; runs start fresh unless ``--ckpt_path`` says
    otherwise, as in ``SFTCLI``."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_lightning_class_args(Estimator, "estimator", subclass_mode=True, required=True)
        parser.add_lightning_class_args(RunHealth, "health")


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


def check_config_files(args: list[str]) -> None:
    """Parse every ``-c``/``--config`` file given, so that a YAML syntax error names its file, line
    and column (the CLI's own parser names ``"<unicode string>"``, and with stacked ``-c`` files
    one cannot tell which is broken); exits with that one line."""
    import yaml

    paths = [b for a, b in zip(args, args[1:]) if a in ("-c", "--config")]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # the CLI says so itself
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise SystemExit(f"error: config file {path}{where}: {problem}") from None


def _run(cls: type[LightningCLI], module: type, data: type, args: list[str] | None) -> LightningCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    check_config_files(sys.argv[1:] if args is None else args)
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


USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError)
"""What this project raises about a config, a data row or a path, with a message naming it."""
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def users_error(error: BaseException) -> bool:
    """Whether ``error`` is one of this project's messages about the user's input: one of
    ``USER_ERRORS`` raised by a line of this package. Errors raised inside a library (a bug or a
    crash) are not, and keep their traceback; so does everything under ``IBPO_TRACEBACK=1``."""
    if not isinstance(error, USER_ERRORS) or os.environ.get("IBPO_TRACEBACK") == "1":
        return False
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(_PACKAGE)


def leave_process_group() -> None:
    """End a multi-process run's process group once every rank is done. Left to the interpreter's
    exit, gloo's threads can abort a rank after its run finished ("terminate called without an
    active exception", status -6, seen once in CI), which the launcher reports as a failed run."""
    import torch.distributed as dist

    # one process: the group (if any) is vLLM's own, which its engine ends at exit itself
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Console entry point of ``ibpo``; a run stopped by SIGTERM (after saving, see
    ``checkpointing.InterruptCheckpoint``) exits with status 143, by Ctrl-C (SIGINT) with 130, as
    a terminated or interrupted process does. An error in the user's input (``users_error``) or a
    run-health stop prints ``error: <message>`` alone and exits 1; a crash keeps its traceback.
    ``ibpo sft ARGS`` is ``run_sft_cli(["fit", *ARGS])`` (or ``validate``/``test`` when ARGS start
    with one)."""
    given = sys.argv[1:] if argv is None else argv
    try:
        if given[:1] == ["sft"]:
            rest = given[1:]
            run_sft_cli(rest if rest[:1] and rest[0] in ("fit", "validate", "test") else ["fit", *rest])
        else:
            run_cli(argv)
        leave_process_group()
    except SIGTERMException:
        sys.exit(128 + signal.SIGTERM)
    except (RunHealthError, *USER_ERRORS) as error:
        if not isinstance(error, RunHealthError) and not users_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)  # the message says what to change: no traceback
        sys.exit(1)
    except SystemExit as stop:  # Lightning saves on Ctrl-C, then exits 1: say 130, as an interrupted process does
        if stop.code == 1 and isinstance(stop.__context__, KeyboardInterrupt):
            sys.exit(128 + signal.SIGINT)
        raise


if __name__ == "__main__":
    main()
