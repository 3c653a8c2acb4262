"""Filesystem isolation of the sandboxed child: its run directory is the one place it can write.

Imported by path by :mod:`child` (standard library only). Two independent layers, each
used where the kernel allows and reported by name, so the parent can say which are active:

``mount-ns``  (needs root, or a user namespace of the child's own): a private mount namespace
    in which every mount is read-only (``mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)``)
    except a bind mount of one directory on itself. Writes elsewhere fail with ``EROFS``,
    whatever the files' permissions; links and renames out of it cross a mount and fail with
    ``EXDEV``. As root the parent's namespace holder makes one such namespace, writable in the
    runs directory, and each child joins it (``setns``, well under 1 ms); otherwise each child
    makes its own, writable in its run directory only (0.4-4 ms here, mostly its teardown).
``landlock``  (Linux 5.13+, no privilege needed): a Landlock domain that handles every kind of
    write (write, truncate, create, remove, link and rename) and allows them only beneath the
    run directory (and writing ``/dev/null``). With ABI 4+ it also refuses TCP bind and
    connect, and with ABI 6+ signals to and abstract Unix sockets of processes outside the
    domain. Inherited by every child process and irrevocable.

Neither layer hides files from reading: the program can read what its uid may read.
"""

import ctypes
import os

_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 0x1000, 0x4000, 0x40000
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_SYS_MOUNT_SETATTR, _SYS_LL_CREATE, _SYS_LL_ADD_RULE, _SYS_LL_RESTRICT = 442, 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_LL_VERSION, _LL_RULE_PATH_BENEATH = 1, 1
# Landlock filesystem rights that change something (reading and executing stay unhandled).
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE_ANY = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14
_NET_TCP = 0x3  # bind and connect
_SCOPES = 0x3  # abstract Unix sockets and signals


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def read_only_mounts(libc, work: str, enter: bool = True) -> bool:
    """Move into a new mount namespace where all is read-only but ``work`` (and, with ``enter``,
    into ``work``); False if refused (nothing changed then, or at worst a private copy of the
    same mounts). The namespace holder makes one for all runs, with ``work`` the runs directory."""
    libc.syscall.restype = ctypes.c_long
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    path, root = work.encode(), b"/"
    if libc.mount(b"none", root, None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False  # never propagate a change back to the machine's namespace
    if libc.mount(path, path, None, _MS_BIND, None) != 0:
        return False
    attr = _MountAttr(attr_set=_MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID)
    size = ctypes.sizeof(attr)
    if libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_long(_AT_FDCWD), root, _AT_RECURSIVE,
                    ctypes.byref(attr), size) != 0:
        return False
    writable = _MountAttr(attr_clr=_MOUNT_ATTR_RDONLY)
    if libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_long(_AT_FDCWD), path, 0,
                    ctypes.byref(writable), size) != 0:
        return False
    if enter:
        os.chdir(work)  # the working directory still pointed into the mount below the bind
    return True


def join_mounts(libc, pid: int, wanted: str, work: str) -> bool:
    """Join the mount namespace of process ``pid`` if it is still ``wanted`` (not a reused pid's),
    then go back into ``work`` (joining resets the working directory to the root)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
    except OSError:
        return False
    try:
        if os.readlink(f"/proc/{pid}/ns/mnt") != wanted or libc.setns(fd, _CLONE_NEWNS) != 0:
            return False
    finally:
        os.close(fd)
    os.chdir(work)
    return os.readlink("/proc/self/ns/mnt") == wanted


def landlock(libc, work: str) -> int:
    """Restrict this process (and its future children) to writing beneath ``work``; the
    Landlock ABI version in force, 0 where Landlock is missing or refused."""
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LL_CREATE, None, 0, _LL_VERSION)
    if abi < 1:
        return 0
    fs = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE_ANY
    fs |= (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    attr = _RulesetAttr(handled_access_fs=fs, handled_access_net=_NET_TCP if abi >= 4 else 0,
                        scoped=_SCOPES if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_LL_CREATE, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return 0
    try:
        rules = [(work, fs), (os.devnull, _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0))]
        for path, allowed in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
                if libc.syscall(_SYS_LL_ADD_RULE, ruleset, _LL_RULE_PATH_BENEATH,
                                ctypes.byref(rule), 0) != 0:
                    return 0
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return 0
        return abi if libc.syscall(_SYS_LL_RESTRICT, ruleset, 0) == 0 else 0
    finally:
        os.close(ruleset)
