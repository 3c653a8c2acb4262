"""Supervised fine-tuning on worked solutions (cold start before RL): ``ibpo sft -c configs/sft_chain.yaml``."""

from ibpo_lightning.sft.data import Example, SFTDataModule, collate, encode_example, pack
from ibpo_lightning.sft.module import SFTModule

__all__ = ["Example", "SFTDataModule", "SFTModule", "collate", "encode_example", "pack"]
