"""Rollout engines and the callback that drives them."""

from ibpo_lightning.rollout.callback import RolloutCallback
from ibpo_lightning.rollout.engine import RolloutEngine, Sample
from ibpo_lightning.rollout.hf_engine import HFEngine
from ibpo_lightning.rollout.sampler import Sampler
from ibpo_lightning.rollout.vllm_engine import VLLMEngine, default_engine, vllm_available

__all__ = ["HFEngine", "RolloutCallback", "RolloutEngine", "Sample", "Sampler", "VLLMEngine", "default_engine",
           "vllm_available"]
