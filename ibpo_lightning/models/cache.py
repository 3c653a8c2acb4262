"""On-disk cache of built-in models: one directory per name, created atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

CACHE_ENV = "IBPO_CACHE"
"""Environment variable naming the cache root; default ``~/.cache/ibpo_lightning/models``."""

BUILDS: Counter[str] = Counter()
"""How many times each built-in name was built in this process (a cache hit adds nothing)."""

_COMPLETE_MARKER = "config.json"


def cache_root() -> Path:
    """Directory under which each built-in model gets its own subdirectory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ibpo_lightning" / "models"


def cache_dir(name: str) -> Path:
    """Where the built-in model `name` lives (whether or not it is built yet)."""
    return cache_root() / name


def is_cached(name: str) -> bool:
    """True if `name` has been built completely into the cache."""
    return (cache_dir(name) / _COMPLETE_MARKER).is_file()


def materialize(name: str, build: Callable[[Path], None]) -> Path:
    """Return the cache directory of `name`, running `build(tmp_dir)` first if it is missing.

    The build writes into a fresh hidden temporary directory next to the final one, which is
    then renamed into place, so an interrupted build never leaves a half-written cache entry.
    If another process finishes the same build first, its result is kept and ours discarded.
    """
    final = cache_dir(name)
    if is_cached(name):
        return final
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(
            f"cache directory {final} exists but holds no complete model; delete it and retry"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp creates it private; the cache entry is readable like others
        BUILDS[name] += 1
        try:
            os.replace(tmp, final)  # atomic; also replaces an empty leftover directory
        except OSError:
            if not is_cached(name):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
