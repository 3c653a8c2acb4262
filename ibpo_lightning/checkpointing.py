"""Checkpoints that keep runs apart: one saved when a run is interrupted, and finding the last one.

Lightning's ``OnExceptionCheckpoint`` makes every later ``fit`` in the same directory silently
resume from ``last`` (Lightning treats its presence as a request to resume), so a second run
trains nothing. :class:`InterruptCheckpoint` saves the same state without that side effect, next
to the run's own periodic checkpoints (which Lightning puts under the logger's versioned
directory when ``ModelCheckpoint`` has no ``dirpath``). A run resumes only when asked:
``--ckpt_path last`` picks the newest checkpoint under ``trainer.default_root_dir``, or a path.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback

CHECKPOINT_NAMES = ("last.ckpt", "interrupted.ckpt")


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
    """The most recently written checkpoint of any run under ``root`` (files or sharded directories
    named ``last.ckpt`` or ``interrupted.ckpt``), or None."""
    found = [p for name in CHECKPOINT_NAMES for p in Path(root).rglob(name)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None
