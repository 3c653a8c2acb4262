"""Environments of multi-turn episodes: tools the model calls between its turns.

The rollout (``ibpo_lightning.rollout.episodes``) runs one episode per sample turn by turn with the
environment configured under ``rollout.environment``; tokens the environment writes carry no loss.
"""

from ibpo_lightning.environments.base import Environment, Feedback, ToolCall, ToolEnvironment, parse_tool_calls
from ibpo_lightning.environments.calculator import Calculator
from ibpo_lightning.environments.python_tool import PythonTool

__all__ = ["Calculator", "Environment", "Feedback", "PythonTool", "ToolCall", "ToolEnvironment", "parse_tool_calls"]
