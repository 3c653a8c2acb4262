"""Training diagnostics: gradient noise per estimator, a step clock, run-health warnings, where
negative credit lands (with a scripted chain-task policy that makes the first wrong step known)."""

from ibpo_lightning.diagnostics.chain_policy import NoisyCalculator
from ibpo_lightning.diagnostics.credit import CreditLocalisation
from ibpo_lightning.diagnostics.gradient_noise import group_gradient_noise
from ibpo_lightning.diagnostics.health import RunHealth, RunHealthError, RunHealthWarning
from ibpo_lightning.diagnostics.step_clock import StepClock

__all__ = ["CreditLocalisation", "NoisyCalculator", "RunHealth", "RunHealthError", "RunHealthWarning", "StepClock",
           "group_gradient_noise"]
