"""Rewards that check a completion's final answer against a reference."""

from ibpo_lightning.rewards.answer import NumberReward, extract_final_number, number_reward
from ibpo_lightning.rewards.code import CodeReward, TestSpec, extract_program
from ibpo_lightning.rewards.composite import (
    FormatReward,
    LengthPenalty,
    Reward,
    RewardTerm,
    WeightedReward,
    close_reward,
)
from ibpo_lightning.rewards.countdown import check_equation, countdown_reward
from ibpo_lightning.rewards.math_verify import MathVerifyReward
from ibpo_lightning.rewards.sandbox import Result, SandboxConfig, run_tests

__all__ = [
    "CodeReward",
    "FormatReward",
    "LengthPenalty",
    "MathVerifyReward",
    "NumberReward",
    "Result",
    "Reward",
    "RewardTerm",
    "SandboxConfig",
    "TestSpec",
    "WeightedReward",
    "check_equation",
    "close_reward",
    "countdown_reward",
    "extract_final_number",
    "extract_program",
    "number_reward",
    "run_tests",
]
