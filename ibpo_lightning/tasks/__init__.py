"""Tasks: where problems come from and how answers are rewarded."""

from ibpo_lightning.tasks.arithmetic import ArithmeticTask
from ibpo_lightning.tasks.base import Problem, Task
from ibpo_lightning.tasks.chain import ChainTask
from ibpo_lightning.tasks.code import CodeTask
from ibpo_lightning.tasks.countdown import CountdownTask
from ibpo_lightning.tasks.jsonl import JsonlTask

__all__ = ["ArithmeticTask", "ChainTask", "CodeTask", "CountdownTask", "JsonlTask", "Problem", "Task"]
