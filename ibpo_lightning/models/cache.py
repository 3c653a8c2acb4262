"""On-disk cache of built-in models: one directory per name, built once however many processes
ask for it at the same time, and renamed into place only when complete."""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:  # not POSIX: no lock; concurrent builds then race (the rename keeps one)
    fcntl = None  # type: ignore[assignment]

CACHE_ENV = "IBPO_CACHE"
"""Environment variable naming the cache root; default ``~/.cache/ibpo_lightning/models``."""

BUILDS: Counter[str] = Counter()
"""How many times each built-in name was built in this process (a cache hit adds nothing)."""

_COMPLETE_MARKER = "config.json"
_log = logging.getLogger(__name__)


def cache_root() -> Path:
    """Directory under which each built-in model gets its own subdirectory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ibpo_lightning" / "models"


def cache_dir(name: str) -> Path:
    """Where the built-in model `name` lives (whether or not it is built yet)."""
    return cache_root() / name


def lock_path(name: str) -> Path:
    """The lock file held while `name` is checked, built and renamed into place."""
    return cache_root() / f".{name}.lock"


def is_cached(name: str) -> bool:
    """True if `name` has been built completely into the cache."""
    return (cache_dir(name) / _COMPLETE_MARKER).is_file()


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on `lock_path(name)`, waiting for any other holder.

    The lock file is left in place (removing it would let a waiter lock a stale inode); the
    kernel releases the lock when its holder exits, so a killed build never blocks the next.
    """
    if fcntl is None:
        yield
        return
    path = lock_path(name)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log.info("waiting for another process to build %s into %s", name, cache_dir(name))
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_path(path: Path) -> None:
    """Remove a file, a link or a directory tree at ``path``, if there is one."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _run_build(name: str, build: Callable[[Path], None], tmp: Path) -> None:
    """``build(tmp)``, in a fresh process when this one is a rank of an initialised process group:
    transformers' ``save_pretrained`` writes only on global rank 0 there, so a build on another
    rank (whichever takes the lock first) would leave an entry without weights or config.

    An in-process build runs inside a forked torch RNG: building a model initialises weights
    from the global generator, and a seeded run that happens to fill the cache must draw the
    same numbers as the same run on a warm cache (it did not: the first SFT run on a fresh
    machine trained a different model from the same seed)."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        with torch.random.fork_rng(devices=[]):
            build(tmp)
        return
    child = multiprocessing.get_context("spawn").Process(target=build, args=(tmp,), name=f"build-{name}")
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"building the built-in model {name!r} failed in a child process (exit code {child.exitcode})")


def materialize(name: str, build: Callable[[Path], None]) -> Path:
    """Return the cache directory of `name`, running `build(tmp_dir)` first if it is missing.

    Processes that ask for the same missing name at once (the ranks of a distributed run) take
    turns on a file lock beside the entry: the first builds, the others wait and then find it
    cached. The build writes into a fresh hidden temporary directory next to the final one,
    which is then renamed into place, so an interrupted build never leaves a half-written
    entry; leftovers of a build killed by an older version (an entry without ``config.json``,
    stale temporary directories) are removed and the model rebuilt.
    """
    final = cache_dir(name)
    if is_cached(name):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(name):
        if is_cached(name):  # built by another process while we waited
            return final
        if fcntl is not None:  # only a lock holder builds, so these are from dead builds
            for stale in final.parent.glob(f".{name}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
        if final.exists() or final.is_symlink():
            _log.warning("removing incomplete cache entry %s (no %s) to rebuild it",
                         final, _COMPLETE_MARKER)
            remove_path(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=final.parent))
        try:
            _run_build(name, build, tmp)
            tmp.chmod(0o755)  # mkdtemp creates it private; the cache entry is readable like others
            BUILDS[name] += 1
            try:
                os.replace(tmp, final)  # atomic
            except OSError:
                if not is_cached(name):  # without fcntl another process may have won the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
