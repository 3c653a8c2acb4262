"""The one place where the parts of a run meet.

The rollout callback owns the sampler (and the dynamic-sampling switch); the estimator is a
callback of its own; the data module holds the task and the prompt order. ``run_parts`` finds
them once, checks that they agree, and returns them as one :class:`RunParts`. The module asks for
it in its own ``setup`` hook (``PolicyHost.setup``), which Lightning runs at the start of every
``fit``, ``validate`` and ``test`` after the data module's and the callbacks' ``setup`` and
before ``configure_model``; a hand-built ``Trainer`` runs it just as the CLI does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning.pytorch import Trainer

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.rollout.callback import RolloutCallback
from ibpo_lightning.rollout.dynamic import DynamicSampling
from ibpo_lightning.rollout.sampler import Sampler
from ibpo_lightning.tasks.base import Problem, Task


@dataclass(frozen=True)
class RunParts:
    """What a policy module samples, scores and credits with."""

    sampler: Sampler
    task: Task
    estimator: Estimator | None = None
    """None when the stage needs none (evaluation, supervised fine-tuning)."""
    draw_problems: Callable[[int], list[Problem]] | None = None
    """The next ``k`` training problems of the run's prompt order (refills of dynamic sampling)."""
    dynamic_sampling: DynamicSampling | None = None


def _one(trainer: Trainer, cls: type, hint: str, required: bool = True):
    found = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
    if len(found) > 1 or (required and not found):
        names = ", ".join(type(cb).__name__ for cb in found) or "none"
        raise ValueError(f"expected exactly one {cls.__name__} callback, found {names}: {hint}")
    return found[0] if found else None


def run_parts(trainer: Trainer, stage: str, *, with_estimator: bool, max_policy_lag: int = 0) -> RunParts:
    """The parts of ``trainer``'s run; ``with_estimator``: the module trains with credit, so a
    ``fit`` needs an estimator callback and a data module that draws problems."""
    rollout = _one(trainer, RolloutCallback, "the CLI adds one under `rollout:`; a hand-built Trainer "
                   "needs `callbacks=[RolloutCallback(...), ...]`")
    fitting = with_estimator and stage == "fit"
    estimator = _one(trainer, Estimator, "set `estimator: {class_path: ibpo_lightning.estimators.GRPO}`",
                     required=fitting) if with_estimator else None
    data = trainer.datamodule
    task = getattr(data, "task", None)
    if not isinstance(task, Task):
        raise ValueError(f"the run's data module ({type(data).__name__}) has no task: use RLDataModule "
                         "(or SFTDataModule for `ibpo sft`) with `data.task`")
    draw = getattr(data, "draw_problems", None)
    if fitting and draw is None:
        raise ValueError(f"{type(data).__name__} cannot draw training problems: RL needs RLDataModule")
    sampler = rollout.sampler
    if estimator is not None and estimator.group_relative and sampler.group_size < 2:
        raise ValueError(f"rollout.group_size={sampler.group_size}: {type(estimator).__name__} compares samples "
                         "of the same prompt and needs a group size of at least 2")
    if estimator is not None and sampler.environment is not None and not estimator.multi_turn:
        raise ValueError(f"{type(estimator).__name__} generates single-turn continuations of its own and cannot "
                         f"run with rollout.environment ({type(sampler.environment).__name__}): use GRPO, DAPO, "
                         "RLOO, ReinforcePP, ACPO, SRPO, RRPO, VinePPO, SPO or IBPO for multi-turn episodes")
    rollout.check_lag(max_policy_lag)
    return RunParts(sampler, task, estimator, draw if with_estimator else None,
                    rollout.dynamic_sampling if with_estimator else None)
