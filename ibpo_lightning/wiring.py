"""The one place where the parts of an RL run meet.

The rollout callback owns the sampler; the estimator is a callback of its own; the data module
streams batches; the module trains on them. ``connect`` finds the two callbacks once, checks
that the parts agree, and hands each part what it uses, through declared methods:

* ``RLDataModule.connect(sampler, estimator)``: the data stream samples and plans with them;
* ``PolicyModule.connect(sampler, estimator)``: the module scores at the sampler's temperature,
  asks the estimator for credit, evaluates with the sampler.

``RLDataModule.setup`` calls it at the start of every ``fit``, ``validate`` and ``test``.
Supervised fine-tuning (``SFTDataModule.setup``) calls ``connect_evaluation``: its module
evaluates with the sampler and has no estimator.
"""

from __future__ import annotations

from lightning.pytorch import Trainer

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.rollout.callback import RolloutCallback


def _one(trainer: Trainer, cls: type, hint: str, required: bool = True):
    found = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
    if len(found) > 1 or (required and not found):
        names = ", ".join(type(cb).__name__ for cb in found) or "none"
        raise ValueError(f"expected exactly one {cls.__name__} callback, found {names}: {hint}")
    return found[0] if found else None


def connect(trainer: Trainer, stage: str = "fit") -> None:
    """Wire the sampler and the estimator into the data module and the module of ``trainer``
    (evaluation alone, ``stage`` other than ``fit``, needs no estimator)."""
    rollout = _one(trainer, RolloutCallback, "the CLI adds one under `rollout:`")
    estimator = _one(trainer, Estimator, "set `estimator: {class_path: ibpo_lightning.estimators.GRPO}`",
                     required=stage == "fit")
    module, data = trainer.lightning_module, trainer.datamodule
    sampler = rollout.sampler
    if estimator is not None and estimator.group_relative and sampler.group_size < 2:
        raise ValueError(f"rollout.group_size={sampler.group_size}: {type(estimator).__name__} compares samples "
                         "of the same prompt and needs a group size of at least 2")
    rollout.check_lag(module.max_policy_lag)
    data.connect(sampler, estimator)
    module.connect(sampler, estimator)


def connect_evaluation(trainer: Trainer) -> None:
    """Hand the module of a run without an estimator (supervised fine-tuning) the sampler it
    evaluates with."""
    rollout = _one(trainer, RolloutCallback, "the CLI adds one under `rollout:`")
    trainer.lightning_module.connect(rollout.sampler)
