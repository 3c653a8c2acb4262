"""Rollout engines and the callback that drives them."""

from ibpo_lightning.rollout.callback import RolloutCallback, find_callback
from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.rollout.hf_engine import HFEngine

__all__ = ["HFEngine", "RolloutCallback", "RolloutEngine", "Sample", "find_callback"]
