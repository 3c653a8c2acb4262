"""What every sandboxed run of this process shares: the runs directory, one namespace holder, and
the child's helper modules compiled once.

One process holds an empty network namespace and a read-only mount namespace (every mount
read-only but :data:`RUNS_DIR`) for the children to join: making a network namespace per child
costs about 25 ms here, a mount namespace 0.4-4 ms (mostly tearing it down), joining either well
under 1 ms.
"""

from __future__ import annotations

import atexit
import hashlib
import marshal
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

NETNS_HOLDER_MARK = "# ibpo-sandbox namespace holder"
_NETNS_HOLDER = NETNS_HOLDER_MARK + """
import ctypes, os, sys, time
parent = os.getppid()
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x40000000) != 0:
    sys.exit(1)
sys.path.insert(0, sys.argv[1])
import confine_files
mounts = confine_files.read_only_mounts(libc, sys.argv[2], enter=False)
print(os.readlink("/proc/self/ns/net"), os.readlink("/proc/self/ns/mnt") if mounts else "-", flush=True)
while os.getppid() == parent:
    time.sleep(1)
"""
RUNS_DIR = Path(tempfile.gettempdir()) / f"ibpo-sandbox-runs-{os.geteuid()}"
"""Where every run directory is made (one per user): the one writable mount in the holder's
mount namespace."""
_netns_lock = threading.Lock()
_netns: dict = {}


def compiled_helpers() -> dict[str, str]:
    """The child's helper modules compiled once, as marshal files in :data:`RUNS_DIR` (named by
    a hash of their source), name -> path; the child loads them instead of compiling them."""
    with _netns_lock:
        if "compiled" not in _netns:
            paths = {}
            for name in ("confine_files", "values"):
                source = Path(__file__).with_name(f"{name}.py")
                text = source.read_bytes()
                digest = hashlib.sha256(text + sys.version.encode()).hexdigest()[:16]
                path = runs_dir() / f"{name}-{digest}.marshal"
                if not path.exists():
                    partial = path.with_suffix(f".{os.getpid()}.partial")
                    partial.write_bytes(marshal.dumps(compile(text, str(source), "exec")))
                    partial.replace(path)
                paths[name] = str(path)
            _netns["compiled"] = paths
        return _netns["compiled"]


def runs_dir() -> Path:
    """:data:`RUNS_DIR`, made on first use; refused if someone else planted it."""
    RUNS_DIR.mkdir(mode=0o711, exist_ok=True)
    info = RUNS_DIR.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{RUNS_DIR} must be a directory of this user, writable by it only")
    return RUNS_DIR


def shared_namespaces() -> tuple[int, str, str | None] | None:
    """(pid, network namespace id, mount namespace id or None) of the namespace holder, started on
    first use; None where it cannot be made (each child then makes namespaces of its own)."""
    with _netns_lock:
        holder = _netns.get("process")
        if holder is not None and holder.poll() is None:
            return holder.pid, *_netns["ids"]
        if _netns.get("failed"):
            return None
        holder = subprocess.Popen([sys.executable, "-I", "-S", "-c", _NETNS_HOLDER,
                                   str(Path(__file__).parent), str(runs_dir())],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        net, _, mnt = holder.stdout.readline().decode().strip().partition(" ")
        if not net.startswith("net:") or holder.poll() is not None:
            holder.kill()
            holder.wait()
            _netns["failed"] = True
            return None
        atexit.register(holder.kill)
        _netns.update(process=holder, ids=(net, mnt if mnt.startswith("mnt:") else None))
        return holder.pid, *_netns["ids"]
