"""Checkpoints that keep runs apart and survive a kill: one saved when a run is interrupted,
sharded checkpoints written whole or not at all, and finding the last one.

Lightning's ``OnExceptionCheckpoint`` makes every later ``fit`` in the same directory silently
resume from ``last`` (Lightning treats its presence as a request to resume), so a second run
trains nothing. :class:`InterruptCheckpoint` saves the same state without that side effect, next
to the run's own periodic checkpoints (which Lightning puts under the logger's versioned
directory when ``ModelCheckpoint`` has no ``dirpath``). A run resumes only when asked:
``--ckpt_path last`` picks the newest checkpoint under ``trainer.default_root_dir``, or a path.

Lightning's ``ModelParallelStrategy`` (FSDP2) rewrites a sharded checkpoint's files in place, so a
``kill -9`` during the save of ``last.ckpt`` leaves torn shards that no resume can read (measured:
``EOFError`` on loading). :class:`AtomicModelParallelStrategy` writes to ``<name>.partial`` and
swaps it in only once every rank has written; a kill between the two renames of the swap leaves
the previous checkpoint complete as ``<name>.old``, which :func:`find_last` then returns.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.strategies import ModelParallelStrategy

from ibpo_lightning.models.cache import remove_path

CHECKPOINT_NAMES = ("last.ckpt", "interrupted.ckpt")
PARTIAL, OLD = ".partial", ".old"


def swap_in(written: Path, path: Path) -> None:
    """Put the complete checkpoint ``written`` at ``path``; the one there before (a file or a
    directory) is kept as ``<path>.old`` until the new one is in place, then removed."""
    old = path.with_name(path.name + OLD)
    remove_path(old)
    if path.exists() or path.is_symlink():
        path.rename(old)
    written.rename(path)
    remove_path(old)


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` (FSDP2) whose sharded checkpoints are written whole or
    not at all: every rank writes its shards to ``<path>.partial``, and rank 0 swaps that in for
    ``path`` (:func:`swap_in`) after a barrier. Same arguments; single-file saves
    (``save_distributed_checkpoint: false``) are Lightning's own, which are already atomic."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        # only process 0's path is used: Lightning's save broadcasts it, and process 0 swaps
        path = Path(filepath)
        partial = path.with_name(path.name + PARTIAL)
        if self.global_rank == 0:
            remove_path(partial)  # a save killed earlier
        self.barrier("checkpoint-clear")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("checkpoint-written")
        if self.global_rank == 0:
            swap_in(partial, path)
        self.barrier("checkpoint-swapped")


class InterruptCheckpoint(Callback):
    """Saves ``interrupted.ckpt`` when fitting stops on an exception, Ctrl-C or SIGTERM (Lightning
    turns SIGTERM into an exception at the end of the current step).

    Args:
        dirpath: where to save; None: the run's ``ModelCheckpoint`` directory, else
            ``<log_dir>/checkpoints`` of the first logger, else ``<default_root_dir>/checkpoints``.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath
        self.saved_to: Path | None = None

    def _directory(self, trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            return Path(trainer.checkpoint_callback.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.training:  # nothing of a fit to keep
            return
        path = self._directory(trainer) / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        self.saved_to = path
        pl_module.print(f"run interrupted ({type(exception).__name__}): state saved to {path}")


def find_last(root: str | Path) -> Path | None:
    """The most recently written checkpoint of any run under ``root``: any ``*.ckpt`` file or
    sharded directory (``last.ckpt``, ``interrupted.ckpt``, or named by ``ModelCheckpoint``'s
    ``filename``, such as ``epoch=0-step=5.ckpt``; ``<name>.old`` where a kill during
    :func:`swap_in` left only that), or None. Never a ``.partial`` save."""
    root = Path(root)
    found = [p for p in root.rglob("*.ckpt") if PARTIAL not in p.parent.name]
    found += [old for old in root.rglob("*.ckpt" + OLD) if not old.with_name(old.name[: -len(OLD)]).exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_summary(path: str | Path) -> dict:
    """What a checkpoint says of its run without loading its tensors: ``step`` (Lightning's
    ``global_step``) and ``signature`` (the estimator and loss settings ``PolicyModule`` saved;
    {} for checkpoints of other modules); {} where it cannot be read this way (a sharded
    directory without ``meta.pt``)."""
    import torch

    path = Path(path)
    if path.is_dir():
        path = path / "meta.pt"
        if not path.exists():
            return {}
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 (a note only: the resume itself reports a bad file)
        return {}
    return {"step": ckpt.get("global_step"), "signature": ckpt.get("run_signature", {})}


def resume_notes(path: str | Path, total_steps: int | None, signature: dict) -> list[str]:
    """Lines to print before resuming from ``path``: which step; that nothing is left to train
    when the checkpoint is at the run's end; that it was made with another estimator or loss."""
    summary = checkpoint_summary(path)
    step = summary.get("step")
    notes = [f"resuming from {path}" + (f" at step {step}" if step is not None else "")]
    if step is not None and total_steps and step >= total_steps:
        notes.append(f"note: the checkpoint is at step {step}, where this run ends (data.steps x "
                     f"trainer.max_epochs = {total_steps}): nothing is left to train; raise --data.steps "
                     "to train further")
    saved = summary.get("signature") or {}
    for key in ("estimator", "loss"):
        if saved.get(key) is not None and signature.get(key) is not None and saved[key] != signature[key]:
            notes.append(f"note: the checkpoint was made with {key} {saved[key]}, this run uses {signature[key]}")
    return notes


def check_run_dir(trainer) -> None:
    """Refuse, in one line, a run that could not keep its state: a ``default_root_dir`` that
    cannot be made or written, and Lightning's ``OnExceptionCheckpoint`` (see the module)."""
    from lightning.pytorch.callbacks import OnExceptionCheckpoint

    if any(isinstance(cb, OnExceptionCheckpoint) for cb in trainer.callbacks):
        raise SystemExit("error: Lightning's OnExceptionCheckpoint makes every later fit in this directory resume "
                         "from its checkpoint without a word, so a second run trains nothing; use "
                         "ibpo_lightning.checkpointing.InterruptCheckpoint, which saves the same state on Ctrl-C, "
                         "SIGTERM or a crash without that")
    root = Path(trainer.default_root_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise SystemExit(f"error: --trainer.default_root_dir {root} cannot hold the run's logs and checkpoints: "
                         f"{error.strerror or error}") from None


def warn_if_tearable(trainer) -> None:
    """Warn when the run saves sharded checkpoints that a kill during the save would tear."""
    strategy = trainer.strategy
    if (type(strategy) is ModelParallelStrategy and strategy._save_distributed_checkpoint
            and trainer.checkpoint_callbacks):
        warnings.warn("ModelParallelStrategy rewrites a sharded checkpoint in place: a kill during a save "
                      "leaves it unreadable. Use ibpo_lightning.checkpointing.AtomicModelParallelStrategy "
                      "(same arguments; configs/strategies/fsdp2.yaml does)", stacklevel=2)
