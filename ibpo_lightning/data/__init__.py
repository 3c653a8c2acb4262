"""The streaming data module: each RL step's problems, from a checkpointed prompt order."""

from ibpo_lightning.data.datamodule import RLDataModule, ProblemStream

__all__ = ["RLDataModule", "ProblemStream"]
