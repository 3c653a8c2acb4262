"""Advantage estimators: Lightning callbacks with ``plan`` and ``assign`` hooks."""

from ibpo_lightning.estimators.acpo import ACPO
from ibpo_lightning.estimators.base import Estimator
from ibpo_lightning.estimators.dapo import DAPO
from ibpo_lightning.estimators.forking import ForkingTokens
from ibpo_lightning.estimators.grpo import GRPO
from ibpo_lightning.estimators.ibpo import IBPO
from ibpo_lightning.estimators.ktae import KTAE
from ibpo_lightning.estimators.mc_values import SPO, VinePPO
from ibpo_lightning.estimators.reinforce_pp import ReinforcePP
from ibpo_lightning.estimators.rloo import RLOO
from ibpo_lightning.estimators.reset import RRPO
from ibpo_lightning.estimators.srpo import SRPO
from ibpo_lightning.estimators.tempo import TEMPO

__all__ = ["ACPO", "DAPO", "Estimator", "ForkingTokens", "GRPO", "IBPO", "KTAE", "ReinforcePP", "RLOO", "RRPO", "SPO",
           "SRPO", "TEMPO", "VinePPO"]
