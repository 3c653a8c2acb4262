"""The training side of a step: scoring, the policy update, data-parallel rules, metrics, the optimizer."""

from ibpo_lightning.training.config import MemoryConfig, UpdateConfig
from ibpo_lightning.training.metrics import batch_metrics
from ibpo_lightning.training.optim import with_warmup
from ibpo_lightning.training.parallel import DataParallel
from ibpo_lightning.training.scorer import Scorer
from ibpo_lightning.training.update import PolicyUpdate

__all__ = ["DataParallel", "MemoryConfig", "PolicyUpdate", "Scorer", "UpdateConfig", "batch_metrics", "with_warmup"]
