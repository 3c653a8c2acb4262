"""The random states a checkpoint carries, so that a resumed run continues the same streams.

Sampling itself does not depend on them (the rollout callback seeds each generate call from the
policy version), but anything drawing from the global generators (an estimator's choices, dropout)
does.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """torch, Python, numpy (and CUDA) generator states, loadable with ``weights_only=True``."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # numpy's key array as a tensor: checkpoints stay loadable with torch.load(weights_only=True)
    numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

