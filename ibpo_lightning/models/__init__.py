"""Policy models: built-in offline models, path resolution and loading.

Names are imported lazily so that ``import ibpo_lightning.models`` stays cheap and
``python -m ibpo_lightning.models.loading`` runs without a double import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BUILTIN_MODELS": "ibpo_lightning.models.builtin",
    "CACHE_ENV": "ibpo_lightning.models.cache",
    "cache_root": "ibpo_lightning.models.cache",
    "load_policy": "ibpo_lightning.models.loading",
    "load_tokenizer": "ibpo_lightning.models.loading",
    "prepare_models_main": "ibpo_lightning.models.loading",
    "resolve_model_path": "ibpo_lightning.models.loading",
    "tiny_random_model": "ibpo_lightning.models.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
