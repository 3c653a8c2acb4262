"""The code sandbox: hostile programs score 0, leave nothing behind, and cannot touch this process.

Each hostile program's tests pass only if its attack worked, so a reward of 1 means a hole.
Every case prints its wall time (``pytest -s`` shows them).
"""

import json
import os
import signal
import socket
import time

import psutil
import pytest

from ibpo_lightning.rewards import CodeReward, SandboxConfig, TestSpec, run_tests
from ibpo_lightning.rewards.sandbox import NETNS_HOLDER_MARK

HOSTILE = SandboxConfig(timeout_s=2.0, memory_mb=512)
SANDBOX_UIDS = range(HOSTILE.uid_base, HOSTILE.uid_base + HOSTILE.uid_count)
# Without root the program runs as this user: it could signal this process, read its environ,
# write its files and escape the group kill, so those cases only hold (and only run) as root.
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sandbox uids)")


_BASELINE: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before_the_test():
    """Children this process already had (e.g. reward process pools of earlier test modules)."""
    _BASELINE.clear()
    _BASELINE.update(p.pid for p in psutil.Process().children(recursive=True))
    yield


def _leftovers() -> list[str]:
    """Processes this test left: new children of this process (but the one holding the shared
    network namespace), or any process of a sandbox uid."""
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in _BASELINE]
    found = [f"child {p.pid}" for p in children if NETNS_HOLDER_MARK not in " ".join(p.cmdline())]
    for p in psutil.process_iter(["uids", "status"]):
        uids = p.info["uids"]
        if uids and uids.real in SANDBOX_UIDS and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(f"sandbox process {p.pid} ({p.info['status']})")
    return found


def _hostile(name: str, program: str, tests=("assert True",), config=HOSTILE, setup: str = ""):
    start = time.monotonic()
    result = run_tests(program, list(tests), setup=setup, config=config)
    wall = time.monotonic() - start
    case = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split("[")[0].split(" ")[0]
    print(f"\n[hostile] {case} | {name}: {wall:.2f} s wall, status {result.status}")
    assert result.reward() == 0.0 and result.reward(partial=True) == 0.0, result
    assert wall < config.timeout_s + 3.0
    assert _leftovers() == []
    return result


def test_infinite_loop():
    result = _hostile("infinite loop", "while True:\n    pass\n")
    assert result.status in ("timeout", "cpu_limit")


def test_fork_bomb():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert _hostile("fork bomb", bomb).status in ("timeout", "cpu_limit", "crashed")


@ROOT_ONLY
def test_escaped_sleepers_are_killed_and_process_count_is_capped():
    """Children leave the process group (setsid) and sleep: only the uid sweep finds them."""
    program = (
        "import os, sys, time\nforked = 0\nfor _ in range(100):\n    try:\n"
        "        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n"
        "        os.setsid()\n        time.sleep(600)\n        os._exit(0)\n    forked += 1\n"
        "print('forked', forked, flush=True)\ntime.sleep(600)\n"
    )
    result = _hostile("escaped sleepers", program)
    assert result.status == "timeout"
    forked = int(result.stdout.split()[1])
    assert 1 <= forked < HOSTILE.max_processes  # RLIMIT_NPROC holds under the sandbox uid


@pytest.mark.parametrize("program", [
    "x = bytearray(8 * 1024 ** 3)\n",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n",
])
def test_memory_bomb(program):
    assert _hostile("memory bomb", program).status == "load_error"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_flood(stream):
    program = f"import sys\nwhile True:\n    sys.{stream}.write('x' * 65536)\n"
    result = _hostile(f"output flood ({stream})", program)
    assert len(result.stdout) <= HOSTILE.output_bytes and len(result.stderr) <= HOSTILE.output_bytes
    assert "File too large" in result.stderr or stream == "stderr"


@ROOT_ONLY
def test_writing_outside_its_directory(tmp_path):
    target = tmp_path / "pwned"
    program = f"open({str(target)!r}, 'w').write('x')\nopen('../escaped', 'w').write('x')\n"
    result = _hostile("write outside", program)
    assert "Permission denied" in result.stderr
    assert not target.exists()
    inside = run_tests("open('mine.txt', 'w').write('ok')\n",
                       ["assert open('mine.txt').read() == 'ok'"], config=HOSTILE)
    assert inside.reward() == 1.0  # its own working directory is writable


@ROOT_ONLY
def test_parent_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("IBPO_SECRET", "s3cret-value")
    _hostile("environment variable", "import os\nfound = 's3cret-value' in str(os.environ)\n",
             tests=["assert found"])
    _hostile("parent's /proc environ",
             "import os\ndata = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n",
             tests=["assert data"])
    seen = run_tests("import os\nkeys = sorted(os.environ)\n",
                     ["assert 'IBPO_SECRET' not in keys", "assert 'PATH' in keys"], config=HOSTILE)
    assert seen.reward() == 1.0


@pytest.mark.parametrize("audit_hook", [True, False])
def test_network_connection_is_refused(audit_hook):
    if not audit_hook and run_tests("", ["assert True"]).network != "namespace":
        pytest.skip("no network namespace here: only the audit hook stands in the way")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # it would succeed here
            server.accept()[0].close()
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
        config = SandboxConfig(timeout_s=2.0, audit_hook=audit_hook)
        result = _hostile(f"network (audit hook {audit_hook})", program, config=config)
        with pytest.raises(BlockingIOError):
            server.accept()
    # without the hook: Landlock refuses the connect (EACCES), else the empty namespace does
    blocked_by = ["sandbox: socket"] if audit_hook else ["Network is unreachable", "Permission denied"]
    assert any(reason in result.stderr for reason in blocked_by)


@pytest.mark.parametrize("audit_hook", [True, False])
@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.kill(os.getppid(), signal.SIGTERM)",
    "os.killpg(os.getpgid(os.getppid()), signal.SIGTERM)",
])
def test_signalling_the_parent(attack, audit_hook):
    if not audit_hook and os.geteuid() != 0:
        pytest.skip("without root only the audit hook stands between the program and this process")
    config = SandboxConfig(timeout_s=2.0, audit_hook=audit_hook)
    result = _hostile(f"signal parent: {attack}", f"import os, signal\n{attack}\n", config=config)
    assert ("sandbox: os.kill" if audit_hook else "Operation not permitted") in result.stderr


def test_kill_everything_is_refused():
    result = _hostile("kill(-1)", "import os, signal\nos.kill(-1, signal.SIGKILL)\n")
    assert "sandbox: os.kill" in result.stderr


@pytest.mark.parametrize(("limit", "statuses"), [
    ("", ("load_error",)),  # RecursionError at the default limit
    # A raised limit: Python 3.11 frames live on the heap, so the stack grows until RLIMIT_AS
    # (about 8 s to fill 256 MiB at nice 10 here); the wall clock stops it first.
    ("sys.setrecursionlimit(10 ** 8)\n", ("timeout", "load_error", "crashed")),
])
def test_deep_recursion(limit, statuses):
    program = f"import sys\n{limit}def f(n):\n    return f(n + 1) + 1\nf(0)\n"
    config = SandboxConfig(timeout_s=2.0, memory_mb=256)
    name = "deep recursion, " + (limit.strip() or "default limit")
    assert _hostile(name, program, config=config).status in statuses


def test_closed_stdout_and_sleep():
    program = "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(600)\n"
    assert _hostile("closed stdout, sleeps", program).status == "timeout"


@pytest.mark.parametrize("program", [
    "import os\nos._exit(0)\n",
    "raise SystemExit(0)\n",
    "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\n",
    "import builtins\nbuiltins.enumerate = lambda tests: [(0, 'pass')] * 3\n",
    "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'x 0 1\\nx done\\n')\n"
    "    except OSError:\n        pass\nos._exit(0)\n",
])
def test_reward_hacks_score_zero(program):
    _hostile("reward hack", program, tests=["assert f(1) == 2"] * 3)


def test_plain_function_result():
    result = run_tests("def add(a, b):\n    return a + b\nprint('hello')\n",
                       ["assert add(1, 2) == 3", "assert add(2, 2) == 5"],
                       setup="import math", preamble="from typing import List")
    assert (result.passed, result.total, result.status) == (1, 2, "ok")
    assert result.stdout == "hello\n" and "AssertionError" in result.stderr
    assert result.reward() == 0.0 and result.reward(partial=True) == 0.5


def test_fraction_passed_switch():
    program = ("def f(x):\n    if x == 3:\n        while True:\n            pass\n"
               "    return x if x < 2 else -1\n")
    tests = ["assert f(0) == 0", "assert f(1) == 1", "assert f(2) == 2", "assert f(3) == 3"]
    answer = json.dumps(tests)
    completion = f"Here:\n```python\n{program}```\n"
    whole = CodeReward(workers=1, timeout_s=2.0)([completion], [answer])
    partial = CodeReward(workers=1, timeout_s=2.0, partial_credit=True)([completion], [answer])
    assert (whole, partial) == ([0.0], [0.5])  # 2 of 4 before the hang; the hang counts as failed
    assert _leftovers() == []


def test_mbpp_reference_solutions_score_one(shared_data):
    rows = [json.loads(line) for line in (shared_data / "code" / "mbpp.jsonl").open()]
    rows = [r for r in rows if 11 <= r["task_id"] <= 40]
    completions = [f"```python\n{r['code']}\n```" for r in rows]
    answers = [TestSpec(tuple(r["test_list"]), setup=r["test_setup_code"]) for r in rows]
    start = time.monotonic()
    scores = CodeReward(workers=2)(completions, answers)
    print(f"\n[mbpp] {len(rows)} reference solutions in {time.monotonic() - start:.2f} s")
    assert len(rows) == 30 and scores == [1.0] * 30
    broken = [c.replace("return", "return None and", 1) for c in completions]
    assert sum(CodeReward(workers=2)(broken[:6], answers[:6])) == 0.0


def test_programs_run_in_parallel():
    reward = CodeReward(workers=4, timeout_s=5.0)
    start = time.monotonic()
    scores = reward(["import time\ntime.sleep(1.5)\n"] * 4, [["assert True"]] * 4)
    wall = time.monotonic() - start
    assert scores == [1.0] * 4 and wall < 4.5  # one at a time would take over 6 s
    assert _leftovers() == []

