"""Advantage estimators: Lightning callbacks with ``plan`` and ``assign`` hooks."""

from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.grpo import GRPO
from ibpo_lightning.estimators.ibpo import IBPO
from ibpo_lightning.estimators.rloo import RLOO

__all__ = ["Estimator", "GRPO", "IBPO", "RLOO"]
