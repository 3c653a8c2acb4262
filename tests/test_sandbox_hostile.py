"""Hostile programs against the reward itself: the filesystem, the comparison, the result channel.

As in ``test_sandbox.py``, each program's tests pass only if its attack worked, so a reward of 1
means a hole; every case must score 0, leave no process and end in time (``_hostile``). The
filesystem cases also check that nothing outside the run directory changed, once with the
sandbox uid and once with the child left as root, where only the mount namespace and Landlock
stand in the way ("whatever the machine's permissions").
"""

import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from ibpo_lightning.rewards import SandboxConfig, run_tests
from tests.test_sandbox import HOSTILE, _children_before_the_test, _hostile  # noqa: F401

AS_ROOT = SandboxConfig(timeout_s=2.0, memory_mb=512, drop_privileges=False)
PROJECT = Path(__file__).resolve().parents[1]
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="the child stays root only under root")


@pytest.fixture
def open_dir():
    """A world-writable directory holding a world-writable ``victim`` file: permissions allow
    everything there, so only the sandbox's own layers can stop a change."""
    path = Path(tempfile.mkdtemp(prefix="ibpo-open-", dir="/tmp"))
    path.chmod(0o777)
    (path / "victim").write_text("victim")
    (path / "victim").chmod(0o666)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _attack(body: str) -> str:
    """A program whose ``done`` is True only if ``body`` ran without an OSError."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return (f"import os\ndef attack():\n{indented}try:\n    attack()\n    done = True\n"
            "except OSError as error:\n    print(type(error).__name__, error)\n    done = False\n")


FS_CASES = {
    "symlink to /": "os.symlink('/', 'root')\nopen('root/{name}', 'w').write('x')",
    "write /tmp": "open('/tmp/{name}', 'w').write('x')",
    "symlink to /tmp": "os.symlink('/tmp', 't')\nopen('t/{name}', 'w').write('x')",
    "write /dev/shm": "open('/dev/shm/{name}', 'w').write('x')",
    "write /var/tmp": "open('/var/tmp/{name}', 'w').write('x')",
    "write home": "open('{home}/{name}', 'w').write('x')",
    "write project": "open('{project}/{name}', 'w').write('x')",
    "write world-writable dir": "open('{open}/{name}', 'w').write('x')",
    "append to world-writable file": "open('{open}/victim', 'a').write('x')",
    "truncate outside": "os.truncate('{open}/victim', 0)",
    "rename outside": "os.rename('{open}/victim', '{open}/{name}')",
    "rename into run dir": "os.rename('{open}/victim', 'stolen')",
    "delete outside": "os.remove('{open}/victim')",
    "mkdir outside": "os.mkdir('{open}/{name}')",
    "hard link to outside file": "os.link('{open}/victim', 'mine')\nopen('mine', 'a').write('x')",
    "symlink planted outside": "os.symlink('/etc/passwd', '{open}/{name}')",
    "fifo outside": "os.mkfifo('{open}/{name}')",
    "chmod outside": "os.chmod('{open}/victim', 0o777)",
}


@NEEDS_ROOT
@pytest.mark.parametrize("config", [HOSTILE, AS_ROOT], ids=["sandbox-uid", "child-as-root"])
@pytest.mark.parametrize("case", sorted(FS_CASES))
def test_filesystem_writes_outside_the_run_dir(case, config, open_dir):
    name = f"ibpo-pwned-{secrets.token_hex(4)}"
    body = FS_CASES[case].format(name=name, home=Path.home(), project=PROJECT, open=open_dir)
    before = sorted(os.listdir(open_dir))
    result = _hostile(f"fs: {case}", _attack(body), tests=["assert done"], config=config)
    assert "mount-ns" in result.filesystem or "landlock" in result.filesystem
    for place in ("/", "/tmp", "/dev/shm", "/var/tmp", Path.home(), PROJECT, open_dir):
        assert not os.path.lexists(os.path.join(place, name)), place
    assert sorted(os.listdir(open_dir)) == before
    victim = open_dir / "victim"
    assert victim.read_text() == "victim" and stat.S_IMODE(victim.stat().st_mode) == 0o666


def test_run_dir_stays_writable():
    program = ("import os, tempfile\nos.mkdir('d')\nopen('d/a', 'w').write('ok')\n"
               "os.rename('d/a', 'b')\nos.link('b', 'c')\nos.symlink('b', 'e')\n"
               "with tempfile.NamedTemporaryFile() as f:\n    f.write(b'x')\n"
               "open(os.devnull, 'w').write('x')\ncontent = open('e').read()\n")
    result = run_tests(program, ["assert content == 'ok'"], config=HOSTILE)
    assert result.reward() == 1.0, result


_LIAR = "class Liar:\n    __eq__ = __ne__ = lambda self, other: True\n    __hash__ = lambda self: 1\n"
COMPARISON_CASES = {
    "lying __eq__": (_LIAR + "def f(x):\n    return Liar()\n", "assert f(1) == 2"),
    "lying __eq__ on the right": (_LIAR + "def f(x):\n    return Liar()\n", "assert 2 == f(1)"),
    "int subclass": ("class L(int):\n    __eq__ = lambda *a: True\n    __hash__ = int.__hash__\n"
                     "def f(x):\n    return L(0)\n", "assert f(1) == 2"),
    "str subclass": ("class S(str):\n    __eq__ = lambda *a: True\n    __hash__ = str.__hash__\n"
                     "def f(x):\n    return S('no')\n", "assert f(1) == 'yes'"),
    "list subclass": ("class M(list):\n    __eq__ = lambda *a: True\n"
                      "def f(x):\n    return M()\n", "assert f(1) == [1, 2]"),
    "dict subclass": ("class D(dict):\n    __eq__ = lambda *a: True\n"
                      "def f(x):\n    return D()\n", "assert f(1) == {'a': 1}"),
    "lying __ne__": ("class N(int):\n    __ne__ = lambda *a: True\n    __hash__ = int.__hash__\n"
                     "def f(x):\n    return N(1)\n", "assert f(1) != 1"),
    "lying __hash__ in a set": (_LIAR + "def f(x):\n    return {Liar(), Liar()}\n",
                                "assert f(1) == {1, 2}"),
    "lying __bool__": ("class B:\n    __bool__ = lambda self: True\n"
                       "def f(x):\n    return B()\n", "assert f(1)"),
    "spoofed __class__": ("class X:\n    __class__ = int\n    __eq__ = lambda *a: True\n"
                          "def f(x):\n    return X()\n", "assert f(1) == 2"),
    "liar inside a list": (_LIAR + "def f(x):\n    return [Liar()]\n", "assert f(1) == [2]"),
    "patched builtins.sorted": ("import builtins\nbuiltins.sorted = lambda *a, **k: [1, 2, 3]\n"
                                "def f(x):\n    return [3]\n", "assert sorted(f(1)) == [1, 2, 3]"),
    "patched builtins.len": ("import builtins\nbuiltins.len = lambda x: 3\n"
                             "def f(x):\n    return []\n", "assert len(f(1)) == 3"),
    "patched builtins.type": ("import builtins\nbuiltins.type = lambda x: int\n" + _LIAR +
                              "def f(x):\n    return Liar()\n", "assert f(1) == 2"),
    "patched operator": ("import operator\noperator.eq = operator.__eq__ = lambda a, b: True\n"
                         "def f(x):\n    return 0\n", "assert f(1) == 2"),
    "patched sys.modules['math']": (
        "import sys, types\nfake = types.ModuleType('math')\n"
        "fake.isclose = lambda *a, **k: True\nsys.modules['math'] = fake\nimport math\n"
        "def f(x):\n    return 0.0\n", "assert math.isclose(f(1), 2.0)"),
    "AssertionError replaced": ("import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\n"
                                "def f(x):\n    return 0\n", "assert f(1) == 2"),
    "AssertionError swallowed by a trace function": (
        "import sys\ndef tracer(frame, event, arg):\n    frame.f_trace_lines = True\n"
        "    return tracer\nsys.settrace(tracer)\ndef f(x):\n    return 0\n", "assert f(1) == 2"),
    "redefined check(candidate)": (
        "import builtins\ndef check(candidate):\n    pass\nbuiltins.check = check\n"
        "def f(x):\n    return 0\n", "def check(candidate):\n    assert candidate(1) == 2\n\ncheck(f)"),
    "lying __sub__ under a tolerance": ("class Z:\n    __sub__ = __rsub__ = lambda *a: 0\n"
                                        "def f(x):\n    return Z()\n",
                                        "assert abs(f(1) - 3.5) < 1e-9"),
    "sequence repeated by a huge count": ("def f(x):\n    return 10 ** 12\n",
                                          "assert [0] * f(1) == [0]"),
    "value over the size limit": ("def f(x):\n    return [0] * 10 ** 6\n",
                                  "assert len(f(1)) == 10 ** 6 and f(1)[0] == 1"),
}


@pytest.mark.parametrize("case", sorted(COMPARISON_CASES))
def test_comparison_cannot_be_lied_to(case):
    program, test = COMPARISON_CASES[case]
    _hostile(f"compare: {case}", program, tests=[test])


@pytest.mark.parametrize("case", ["lying __eq__", "int subclass", "list subclass", "lying __bool__",
                                  "patched builtins.len", "liar inside a list",
                                  "lying __sub__ under a tolerance"])
def test_comparison_in_a_test_the_child_judges(case):
    """A test that is not plain asserts (a loop) runs in the child: its comparisons and truth
    tests are rewritten to compare plain copies, so the same liars fail there too."""
    program, test = COMPARISON_CASES[case]
    looped = "for _ in range(2):\n    " + test
    _hostile(f"compare (judged in child): {case}", program, tests=[looped])


_FIND_CHANNEL = (
    "import os, sys\nframe, nonce = sys._getframe(), None\nwhile frame is not None:\n"
    "    nonce = frame.f_locals.get('nonce') or nonce\n    frame = frame.f_back\n"
    "forged = ''.join(f'{{nonce}} {{i}} 1\\n{{nonce}} {{i}} v [[\"i\",\"0x3\"]]\\n' for i in range(3))\n"
    "forged = (forged + f'{{nonce}} done\\n').encode()\n"
    "for fd in range(3, 64):\n    try:\n        if os.readlink(f'/proc/self/fd/{{fd}}').startswith('pipe:'):\n"
    "            os.write(fd, forged)\n    except OSError:\n        pass\n{then}"
    "def f(x):\n    return 0\n"
)
CHANNEL_CASES = {
    "result tags printed to stdout and stderr": (
        "import sys\nfor i in range(3):\n    print(f'x {i} 1\\nx {i} v [[\"i\",\"0x2\"]]')\n"
        "    print(f'x {i} 1', file=sys.stderr)\nprint('x done')\ndef f(x):\n    return 0\n"),
    "forged lines on the side channel, then exit 0": _FIND_CHANNEL.format(then="os._exit(0)\n"),
    "forged lines on the side channel, then carry on": _FIND_CHANNEL.format(then=""),
    "exit 0 inside a test": "import os\ndef f(x):\n    os._exit(0)\n",
    "exit 0 from atexit": "import atexit, os\natexit.register(os._exit, 0)\ndef f(x):\n    return 0\n",
    "SystemExit inside a test": "def f(x):\n    raise SystemExit(0)\n",
    "close the channel": ("import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n"
                          "    except OSError:\n        pass\ndef f(x):\n    return 2\n"),
}


@pytest.mark.parametrize("case", sorted(CHANNEL_CASES))
@pytest.mark.parametrize("form", ["assert", "child-judged"])
def test_result_channel_cannot_be_forged(case, form):
    tests = ["assert f(1) == 2", "assert f(2) == 2", "assert f(3) == 2"]
    if form == "child-judged":  # the forged verdict '1' must not count twice either
        tests = ["for _ in range(1):\n    " + t for t in tests]
        if case.endswith("then exit 0"):
            pytest.skip("a test judged in the child can be forged by a program that reads the "
                        "harness's frames; see docs/code_reward.md")
    _hostile(f"channel ({form}): {case}", CHANNEL_CASES[case], tests=tests)


def test_canonical_humaneval_check_passes():
    program = "def add(a, b):\n    return a + b\n"
    check = ('def check(candidate):\n    """Docstring."""\n    assert candidate(1, 2) == 3\n'
             "    assert candidate(-1, 1) == 0\n    assert [candidate(i, i) for i in range(3)] "
             "== [0, 2, 4]\n\ncheck(add)")
    assert run_tests(program, [check], config=HOSTILE).reward() == 1.0
    wrong = run_tests("def add(a, b):\n    return a - b\n", [check], config=HOSTILE)
    assert wrong.reward() == 0.0 and "judged by the harness" in wrong.stderr
