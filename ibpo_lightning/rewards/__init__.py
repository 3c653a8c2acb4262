"""Rewards that check a completion's final answer against a reference."""

from ibpo_lightning.rewards.answer import extract_final_number, number_reward
from ibpo_lightning.rewards.math_verify import MathVerifyReward

__all__ = ["MathVerifyReward", "extract_final_number", "number_reward"]
