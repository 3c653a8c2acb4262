"""The streaming data module: prompts in, freshly sampled trajectory groups out."""

from ibpo_lightning.data.datamodule import RLDataModule, RolloutStream

__all__ = ["RLDataModule", "RolloutStream"]
