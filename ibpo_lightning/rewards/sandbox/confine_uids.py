"""Sandbox uids: leased one per run across processes (``flock``), swept of processes after it.

Used by :mod:`ibpo_lightning.rewards.sandbox` when the parent is root: each run's program runs
as a uid no other run holds, so ``RLIMIT_NPROC`` counts only its processes and every process it
left (even one that left the process group) can be found and killed by uid.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCK_DIR = Path(tempfile.gettempdir()) / "ibpo-sandbox-uids"


def pids_of(uid: int) -> tuple[list[int], int]:
    """Live processes whose real uid is ``uid``, and how many zombies. (Read from ``status``:
    after ``setuid`` a process is not dumpable and its ``/proc/<pid>`` belongs to root.)"""
    live, zombies, prefix = [], 0, b"\nUid:\t%d\t" % uid
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                status = f.read()
        except OSError:
            continue
        if prefix not in status:
            continue
        if b"\nState:\tZ" in status or b"\nState:\tX" in status:
            zombies += 1
        else:
            live.append(int(entry.name))
    return live, zombies


def kill_uid(uid: int, timeout_s: float = 10.0, zombie_wait_s: float = 2.0) -> None:
    """SIGKILL every process of ``uid`` until none is left (escapes from the group included),
    then wait up to ``zombie_wait_s`` for init to reap them (zombies count against NPROC)."""
    start = time.monotonic()
    while True:
        live, zombies = pids_of(uid)
        if not live and (not zombies or time.monotonic() - start > zombie_wait_s):
            return
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if live and time.monotonic() - start > timeout_s:
            raise RuntimeError(f"sandbox uid {uid}: processes {live} survive SIGKILL")
        time.sleep(0.002)


@contextmanager
def lease_uid(uid_base: int, uid_count: int) -> Iterator[int]:
    """An unused sandbox uid, held (by ``flock``, across processes) until the run ends."""
    _LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    info = _LOCK_DIR.lstat()  # refuse a directory planted by someone else (e.g. a symlink)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise RuntimeError(f"{_LOCK_DIR} must be a directory owned by root with mode 0700")
    for uid in range(uid_base, uid_base + uid_count):
        fd = os.open(_LOCK_DIR / str(uid), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise RuntimeError(f"all {uid_count} sandbox uids from {uid_base} are in use")
