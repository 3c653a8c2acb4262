"""The sandboxed side of :mod:`ibpo_lightning.rewards.sandbox` (a script, not imported).

Run as ``python -I -S -B child.py`` with a JSON request on stdin; standard library only
(plus :mod:`confine_files` and :mod:`values`, imported by path from this directory). A
trusted set-up phase (still as the parent's user) lowers the priority, moves into a fresh
network namespace and a read-only mount namespace when the kernel allows, sets the resource
limits and, when started as root, drops to the sandbox uid; then a Landlock domain confines
writes to the run directory. Then the program runs in a fresh namespace, then each test.

Results go to the report pipe as lines ``<nonce> <test index> <1|0>`` (a statement run here;
1: it raised nothing) or ``<nonce> <test index> v <values>`` (the probes of a test the parent
judges, see :mod:`~ibpo_lightning.rewards.sandbox.plan`), then ``<nonce> done``; a program that
fails to load writes ``<nonce> load 0`` instead. The parent trusts values, not verdicts, where
it can: anything in this process after set-up is the program's to tamper with.
"""

import builtins
import json
import os
import resource
import sys

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_SIGKILL = 9
_BLOCKED_PREFIXES = ("socket.", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                     "subprocess.Popen", "os.fork_exec", "ctypes.dlopen", "pty.spawn")


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except Exception:
        return None


def _isolate_network(libc, shared) -> str:
    """Join the parent's empty network namespace, else make one where the kernel allows; says
    how the network is cut off."""
    if shared is not None and libc is not None:
        pid, wanted = shared
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            joined = libc.setns(fd, _CLONE_NEWNET) == 0
            os.close(fd)
            if joined and os.readlink("/proc/self/ns/net") == wanted:  # not a reused pid's
                return "namespace"
        except OSError:
            pass
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    return "namespace" if libc is not None and libc.unshare(flags) == 0 else "audit-hook"


def _own_process_count(uid: int) -> int:
    count = 0
    for name in os.listdir("/proc"):
        try:
            count += name.isdigit() and os.stat(f"/proc/{name}").st_uid == uid
        except OSError:
            pass
    return count


def _set_limits(request: dict) -> None:
    mib = 1024 * 1024
    cpu = request["cpu_s"]
    limits = {
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU at cpu_s seconds, SIGKILL one later
        resource.RLIMIT_AS: (request["memory_mb"] * mib,) * 2,
        resource.RLIMIT_FSIZE: (request["file_size_mb"] * mib,) * 2,
        resource.RLIMIT_NOFILE: (request["max_open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    processes = request["max_processes"]
    processes += request["existing_processes"]
    limits[resource.RLIMIT_NPROC] = (processes, processes)
    for which, (soft, hard) in limits.items():
        resource.setrlimit(which, (soft, hard))


def _keep_imports_readable() -> None:
    """Import through directory descriptors opened now, as the stdlib may sit under a directory
    (such as /root) that the sandbox uid cannot enter; a process may always use its own fds."""
    moved = {}
    for path in sys.path:
        try:
            moved[path] = f"/proc/self/fd/{os.open(path, os.O_RDONLY | os.O_DIRECTORY)}"
        except OSError:
            pass
    sys.path[:] = list(moved.values())
    for module in list(sys.modules.values()):  # packages already imported, e.g. collections
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            for i, entry in enumerate(search):
                for old, new in moved.items():
                    if entry.startswith(old + os.sep):
                        search[i] = new + entry[len(old):]
    sys.path_importer_cache.clear()


def _audit_hook(event: str, args: tuple) -> None:
    if event.startswith(_BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event in ("os.kill", "os.killpg") and args[0] != os.getpid() and (
        args[0] <= 0 or args[0] == _PARENT or event == "os.killpg"
    ):
        raise PermissionError(f"sandbox: {event}{args} is not allowed")


def _judges(plain_copy, binop, program_object, bool_=bool, type_=type, getattr_=getattr,
            flags=type.__dict__["__flags__"].__get__, heap=1 << 9):
    """The comparisons, arithmetic, truth test and method calls of a test judged here
    (``harden.harden``): on plain copies only, so no ``__eq__``, ``__sub__`` or ``__bool__`` of
    the program runs; a method of a plain type is called through the type itself, on a receiver
    and arguments of plain data only, and a method of any other receiver only where that is an
    object of a class the program wrote or of the interpreter's own types (a ``deque``, a
    module), never a subclass of one (a ``list`` whose ``count`` lies)."""
    import collections

    plain_types = (str, bytes, list, tuple, dict, set, frozenset, int, float, complex, bool,
                   collections.Counter, collections.OrderedDict, collections.defaultdict)
    def compare(left, op, right):
        left, right = plain_copy(left), plain_copy(right)
        if op == "==":
            return left == right
        if op == "!=":
            return left != right
        if op == "<":
            return left < right
        if op == "<=":
            return left <= right
        if op == ">":
            return left > right
        if op == ">=":
            return left >= right
        return (left in right) if op == "in" else (left not in right)

    def arithmetic(op, left, right):
        return binop(op, plain_copy(left), plain_copy(right))

    def truth(value):
        return bool_(plain_copy(value))

    def method(receiver, name, *args, **kwargs):
        kind = type_(receiver)
        if kind in plain_types:
            plain_copy(receiver)
            for arg in args:  # plain data; or a map, generator, function of the interpreter's
                if type_(arg) in plain_types or flags(type_(arg)) & heap:
                    plain_copy(arg)
            return getattr_(kind, name)(receiver, *args, **kwargs)
        if not flags(kind) & heap or program_object(receiver):
            return getattr_(receiver, name)(*args, **kwargs)
        raise TypeError(f"sandbox: {name} of a {kind.__name__} is not called in a test")

    return compare, arithmetic, truth, method


def _run(request, report, nonce, probe, compare, arithmetic, truth, method, exec_=exec,
         compile_=compile,
         error=BaseException, enumerate_=enumerate, exit_=os._exit, len_=len, dict_=dict,
         builtins_=dict(builtins.__dict__), settrace=sys.settrace, setprofile=sys.setprofile,
         importer=builtins.__import__):
    """Load the program, run each test, report; every name used is bound before the program
    runs, and each test sees the builtins as they were before it (a test's own names only:
    the program's functions keep the builtins they were defined with)."""
    namespace = {"__name__": "__sandbox__"}
    try:
        for name in ("preamble", "program", "setup"):
            exec_(compile_(request[name], f"<{name}>", "exec"), namespace)
    except error:
        _print_error()
        report(f"{nonce} load 0\n".encode())
        _flush()
        exit_(1)
    for index, test in enumerate_(request["tests"]):
        settrace(None)
        setprofile(None)
        namespace["__builtins__"] = dict_(builtins_, __import__=importer)
        namespace["__sandbox_compare__"], namespace["__sandbox_binop__"] = compare, arithmetic
        namespace["__sandbox_truth__"], namespace["__sandbox_method__"] = truth, method
        try:
            if "probes" in test:
                values = [probe(p, namespace, f"<test {index}>") for p in test["probes"]]
                ok = "v [" + ",".join(values) + "]"
                ok = "0" if len_(ok) > _MAX_LINE else ok
            else:
                exec_(compile_(test["statement"], f"<test {index}>", "exec"), namespace)
                ok = "1"
        except error:
            _print_error()
            ok = "0"
        report(f"{nonce} {index} {ok}\n".encode())
    report(f"{nonce} done\n".encode())
    _flush()
    exit_(0)


def _prober(encode, program_object, unencodable, eval_=eval, compile_=compile, type_=type,
            str_=str):
    """``probe(source, namespace, name)``: the encoded value of one probe (see
    ``plan.TestPlan.probes``). For a method probe ``[receiver, call]`` it is the receiver tagged
    ``R`` when that is plain data (the parent makes the call), the call's value when the
    receiver is an object of a class the program wrote, and an error for anything else (a
    ``list`` subclass whose ``count`` lies)."""
    def probe(source, namespace, name):
        if type_(source) is str_:
            return encode(eval_(compile_(source, name, "eval"), namespace))
        receiver = eval_(compile_(source[0], name, "eval"), namespace)
        try:
            return '["R",' + encode(receiver) + "]"
        except unencodable:
            if not program_object(receiver):
                raise
        namespace[_RECEIVER] = receiver
        return encode(eval_(compile_(source[1], name, "eval"), namespace))

    return probe


def _pristine_importer(modules=("math",), import_=builtins.__import__, module_type=type(sys)):
    """An ``__import__`` for the tests the child judges: the modules a test may compute with
    (``math``) as copies made before the program ran, so ``import math`` in a test gets neither a
    module the program put in ``sys.modules`` nor functions it patched into the real one."""
    copies = {}
    for name in modules:
        copy = module_type(name)
        copy.__dict__.update(import_(name).__dict__)
        copies[name] = copy

    def importer(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name in copies:
            return copies[name]
        return import_(name, globals, locals, fromlist, level)

    return importer


def _print_error() -> None:
    try:
        import traceback

        traceback.print_exc(limit=20)  # the outermost frames: walking a deep stack takes long
    except BaseException:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


_PARENT = os.getppid()
_MAX_LINE = 256 * 1024  # a longer report line (a huge value) fails its test
_RECEIVER = "__sandbox_receiver__"  # plan.RECEIVER


def _helpers(compiled):
    """:mod:`confine_files` and :mod:`values`: from the code the parent compiled once
    (``compiled``: name -> marshal file; this interpreter never writes bytecode, ``-B``, and
    compiling them here cost about 5 ms a program), else imported from this file's directory."""
    modules = []
    for name in ("confine_files", "values"):
        try:
            import marshal

            with open(compiled[name], "rb") as f:
                code = marshal.loads(f.read())
            module = type(sys)(name)
            exec(code, module.__dict__)
        except Exception:
            here = os.path.dirname(os.path.abspath(__file__))
            sys.path.insert(0, here)
            try:
                module = __import__(name)
            finally:
                sys.path.remove(here)
        modules.append(module)
    return modules


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    nonce, fd = request.pop("nonce"), request["report_fd"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.nice(request["niceness"])
    # RLIMIT_NPROC counts all processes of the real uid: without a sandbox uid, allow this many more
    request["existing_processes"] = _own_process_count(os.getuid()) if request["uid"] is None else 0
    libc = _libc()
    confine_files, values = _helpers(request["compiled"] or {})
    shared = request["shared_ns"]  # (holder pid, network namespace id, mount namespace id)
    network = "audit-hook"
    if request["isolate_network"]:
        network = _isolate_network(libc, shared and shared[:2])
    work, files = os.getcwd(), []
    if request["isolate_files"] and libc is not None:
        if shared and shared[2] and confine_files.join_mounts(libc, shared[0], shared[2], work) \
                or confine_files.read_only_mounts(libc, work):
            files.append("mount-ns")
    _set_limits(request)
    if request["uid"] is not None:
        _keep_imports_readable()
        os.setgroups([])
        os.setgid(request["uid"])
        os.setuid(request["uid"])
        files.append("uid")
    if libc is not None:  # after the uid change, which clears it
        libc.prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
        abi = confine_files.landlock(libc, work) if request["isolate_files"] else 0
        if abi:
            files.append(f"landlock-v{abi}")
    del libc, confine_files
    if os.getppid() != _PARENT:  # the parent died before the death signal was armed
        os._exit(1)
    os.write(fd, f"{nonce} net {network}\n{nonce} fs {'+'.join(files) or 'none'}\n".encode())
    os.set_blocking(fd, False)  # a full pipe fails a test instead of hanging the run
    if request["audit_hook"]:
        sys.addaudithook(_audit_hook)
    probe = _prober(values.encode, values.program_object, values.Unencodable)
    _run(request, _reporter(fd), nonce, probe, *_judges(values.plain_copy, values.binop, values.program_object),
         importer=_pristine_importer())


def _reporter(fd, write=os.write, error=OSError):
    def report(data):
        try:
            write(fd, data)
        except error:
            pass
    return report


if __name__ == "__main__":
    main()
