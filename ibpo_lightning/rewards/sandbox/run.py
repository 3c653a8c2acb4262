"""Run a model-written Python program against tests in a separate, limited process.

``run_tests(program, tests)`` starts ``python -I -S -B child.py`` in a new session, in a
fresh run directory under :data:`RUNS_DIR`, with an empty environment, and waits at most ``timeout_s`` of wall
time. The child sets its own limits before the program runs (see :class:`SandboxConfig` and
``docs/code_reward.md``). When the parent runs as root the child drops to a sandbox uid leased
for this run only, so the program cannot signal, read or write the parent's processes and files,
and every process of that uid is killed afterwards. The whole process group is always killed.
The child can write only its run directory (a read-only mount namespace and a Landlock domain,
see :mod:`confine_files`), and assert-style tests are judged here, on plain values the child sends
back (see :mod:`plan`): the program does not decide their verdict (it still can for tests
of any other form, which only the child can run).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from ibpo_lightning.rewards.sandbox.confine_uids import kill_uid, lease_uid
from ibpo_lightning.rewards.sandbox.namespaces import compiled_helpers, runs_dir, shared_namespaces
from ibpo_lightning.rewards.sandbox.values import decode_list
from ibpo_lightning.rewards.sandbox.harden import harden
from ibpo_lightning.rewards.sandbox.library import SAFE_CALLS
from ibpo_lightning.rewards.sandbox.plan import TestPlan, defined_names, imported_names, plan_test

_CHILD = str(Path(__file__).with_name("child.py"))
_STATUS_BY_SIGNAL = {signal.SIGXCPU: "cpu_limit", signal.SIGXFSZ: "file_size_limit"}
_SWEPT: set[int] = set()
_log = logging.getLogger(__name__)
_logged: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run.

    Args:
        timeout_s: Wall-clock seconds before the whole process group is killed.
        cpu_s: CPU seconds per process (RLIMIT_CPU); None: ``timeout_s`` rounded up.
        memory_mb: Address space per process in MiB (RLIMIT_AS).
        file_size_mb: Largest file a process may write, in MiB (RLIMIT_FSIZE); this caps the
            captured stdout and stderr too (past it the program gets SIGXFSZ).
        max_processes: Processes the program may have at once (RLIMIT_NPROC, counted per uid:
            exact under the sandbox uid, "this many more than the user has" otherwise).
        max_open_files: File descriptors per process (RLIMIT_NOFILE).
        output_bytes: Leading bytes of stdout and stderr kept in the result.
        niceness: Added to the child's nice value so it yields the CPU to the trainer.
        isolate_network: Move the child into a new, empty network namespace where allowed.
        isolate_files: Confine the child's writes to its run directory: a read-only mount
            namespace and a Landlock domain, each where the kernel allows.
        strict_tests: Judge assert-style tests here, on the plain values the child computes,
            and make the child compare plain copies in any other test (see ``plan``).
            False: every test runs in the child as written, with the values' own ``__eq__``
            (for tests that compare objects of the program's classes; gameable).
        audit_hook: Also refuse sockets, exec/spawn, ctypes loading and signals to other
            processes from inside the interpreter (defence in depth; bypassable, not a boundary).
        drop_privileges: When the parent is root, run the program as a leased unprivileged uid.
        uid_base: First sandbox uid (uids ``uid_base .. uid_base + uid_count - 1`` are used).
        uid_count: Number of sandbox uids: the most runs at once on this machine.
        python: Interpreter for the child; None: the one running this process.
    """

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_mb: int = 1024
    file_size_mb: int = 8
    max_processes: int = 16
    max_open_files: int = 64
    output_bytes: int = 4096
    niceness: int = 10
    isolate_network: bool = True
    isolate_files: bool = True
    strict_tests: bool = True
    audit_hook: bool = True
    drop_privileges: bool = True
    uid_base: int = 61000
    uid_count: int = 256
    python: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_s", "memory_mb", "file_size_mb", "max_processes", "max_open_files"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"cpu_s must be > 0 or None, got {self.cpu_s}")


@dataclass(frozen=True)
class Result:
    """What one sandboxed run did."""

    passed: int
    """Tests that ran without raising."""
    total: int
    """Tests given."""
    status: str
    """``ok`` (all tests ran), ``load_error`` (the program raised), ``timeout``, ``cpu_limit``,
    ``file_size_limit`` or ``crashed`` (the process died before reporting every test)."""
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    network: str
    """How the network was cut off: ``namespace`` or ``audit-hook`` (``none`` if unreported)."""
    filesystem: str = "none"
    """The layers confining writes, joined by ``+``: ``mount-ns``, ``uid`` (a sandbox uid),
    ``landlock-v<ABI>``; ``none`` if none (or unreported)."""

    def reward(self, partial: bool = False) -> float:
        """1.0 if every test passed (else 0.0), or with ``partial`` the fraction passed."""
        if self.total == 0:
            return 0.0
        return self.passed / self.total if partial else float(self.passed == self.total)


def run_tests(program: str, tests: Sequence[str], setup: str = "", preamble: str = "",
              config: SandboxConfig | None = None) -> Result:
    """Run ``preamble``, ``program`` and ``setup`` in one namespace, then each test (a statement
    such as ``assert f(1) == 2``) in it. A test made of asserts passes when they hold on the
    values the child sends back; any other test passes when it raises nothing in the child."""
    config = config or SandboxConfig()
    root = os.geteuid() == 0 and config.drop_privileges
    with lease_uid(config.uid_base, config.uid_count) if root else nullcontext(None) as uid:
        outer = Path(tempfile.mkdtemp(prefix="ibpo-sandbox-", dir=runs_dir()))
        try:
            return _run_in(outer, uid, program, list(tests), setup, preamble, config)
        except BaseException:
            if uid is not None:
                kill_uid(uid)
            raise
        finally:
            shutil.rmtree(outer, ignore_errors=True)


def _plans(program: str, tests: list[str], setup: str, preamble: str,
           config: SandboxConfig) -> list[TestPlan | None]:
    if not config.strict_tests:
        return [None] * len(tests)
    program_names = defined_names(program)
    names = defined_names(preamble, program, setup) & SAFE_CALLS
    imported = imported_names(setup) | frozenset(
        (name, target) for name, target in imported_names(preamble) if name not in program_names)
    return [plan_test(test, names, imported) for test in tests]


def _run_in(outer: Path, uid: int | None, program: str, tests: list[str], setup: str,
            preamble: str, config: SandboxConfig) -> Result:
    outer.chmod(0o711)
    work = outer / "work"
    work.mkdir(mode=0o700)
    if uid is not None:
        os.chown(work, uid, uid)
        if uid not in _SWEPT:  # anything left by a process that died while running under it
            kill_uid(uid)
            _SWEPT.add(uid)
    nonce = secrets.token_hex(16)
    plans = _plans(program, tests, setup, preamble, config)
    read_end, write_end = os.pipe()
    try:  # room for the values (the child writes without blocking; past this a test fails)
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    request = {
        **{k: v for k, v in asdict(config).items() if k not in ("uid_base", "uid_count")},
        "cpu_s": config.cpu_s or max(1, int(-(-config.timeout_s // 1))),
        "nonce": nonce, "report_fd": write_end, "uid": uid, "preamble": preamble,
        "program": program, "setup": setup,
        "tests": [{"probes": list(p.probes)} if p else
                  {"statement": harden(t) if config.strict_tests else t}
                  for p, t in zip(plans, tests)],
        "shared_ns": shared_namespaces() if uid is not None else None,
        "compiled": compiled_helpers() if config.python in (None, sys.executable) else None,
    }
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
           "LANG": "C.UTF-8"}
    with (open(outer / "request", "w+b") as stdin, open(outer / "stdout", "w+b") as out,
          open(outer / "stderr", "w+b") as err):
        stdin.write(json.dumps(request).encode())
        stdin.seek(0)
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                [config.python or sys.executable, "-I", "-S", "-B", _CHILD], stdin=stdin,
                stdout=out, stderr=err, cwd=work, env=env, pass_fds=(write_end,),
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        try:
            timed_out = not _wait_unreaped(process.pid, config.timeout_s)
            _kill_group(process.pid)  # the leader is not reaped yet, so the group id is ours
            returncode = process.wait()
            if uid is not None:  # escapes from the group; then wait for init to reap them
                kill_uid(uid)
        finally:
            if process.returncode is None:
                process.kill()
                process.wait()
        wall_s = time.monotonic() - start
        report = _read_available(read_end)
        os.close(read_end)
        stdout, stderr = (_head(f, config.output_bytes) for f in (out, err))
    result = _result(report, nonce, plans, timed_out, returncode, stdout, stderr, wall_s)
    _log_protections(result)
    return result


def _result(report: str, nonce: str, plans: list[TestPlan | None], timed_out: bool,
            returncode: int | None, stdout: str, stderr: str, wall_s: float) -> Result:
    """Judge the report. A test passes on exactly one line for it: its plan holding on the
    values sent, or ``1`` for a test run in the child (two lines for one test: tampering)."""
    said: dict[int, list[str]] = {}
    network, files, loaded, done = "none", "none", True, False
    for line in report.splitlines():
        fields = line.split(" ", 3)
        if len(fields) < 2 or fields[0] != nonce:
            continue
        if fields[1] == "net" and len(fields) == 3:
            network = fields[2]
        elif fields[1] == "fs" and len(fields) == 3:
            files = fields[2]
        elif fields[1] == "load":
            loaded = False
        elif fields[1] == "done":
            done = True
        elif fields[1].isdigit() and int(fields[1]) < len(plans):
            said.setdefault(int(fields[1]), []).append(" ".join(fields[2:]))
    verdicts = {i: len(lines) == 1 and _passes(plans[i], lines[0]) for i, lines in said.items()}
    passed = sum(verdicts.values())
    judged = [i for i, ok in verdicts.items() if not ok and plans[i] is not None]
    for i in judged:  # the child printed no traceback for these: say which failed here
        stderr += f"AssertionError: test {i} failed (judged by the harness)\n"
    if timed_out:
        status = "timeout"
    elif not loaded:
        status = "load_error"
    elif done:
        status = "ok"
    else:
        status = _STATUS_BY_SIGNAL.get(-(returncode or 0), "crashed")
    return Result(passed, len(plans), status, returncode, stdout, stderr, wall_s, network, files)


def _passes(plan: TestPlan | None, said: str) -> bool:
    if plan is None:
        return said == "1"
    if not said.startswith("v "):
        return False
    try:
        values = decode_list(said[2:])
    except (ValueError, TypeError, RecursionError):  # malformed, or unhashable set items
        return False
    return plan.passes(values)


def _log_protections(result: Result) -> None:
    """Say once per process (and per combination) how programs are confined."""
    key = (result.network, result.filesystem)
    if result.network == "none" or key in _logged:  # "none": the child died in its set-up
        return
    _logged.add(key)
    confined = "landlock" in key[1] or "mount-ns" in key[1]
    _log.log(logging.INFO if confined else logging.WARNING,
             "code sandbox protections: network=%s, files=%s", *key)


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` exits without reaping it; False on timeout."""
    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_available(fd: int, limit: int = 1 << 20) -> str:
    """What the pipe holds now (never blocks: an escaped process may still hold it open)."""
    os.set_blocking(fd, False)
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _head(file, limit: int) -> str:
    file.seek(0)
    return file.read(limit).decode("utf-8", "replace")
