"""ibpo-lightning: reinforcement learning of language models with verifiable rewards, on Lightning."""

__version__ = "0.1.0"
