"""The training side of an RL step: scoring, the policy update, data-parallel rules, metrics."""

from ibpo_lightning.training.metrics import batch_metrics
from ibpo_lightning.training.parallel import DataParallel
from ibpo_lightning.training.scorer import Scorer
from ibpo_lightning.training.update import PolicyUpdate

__all__ = ["DataParallel", "PolicyUpdate", "Scorer", "batch_metrics"]
