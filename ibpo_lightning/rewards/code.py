"""The code reward: extract a program from a completion and run it against tests in the sandbox."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ibpo_lightning.rewards.sandbox import Result, SandboxConfig, run_tests

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(completion: str) -> str:
    """The last ```python (or ```py) fenced block, else the last bare ``` block, else all text.

    A final block whose closing fence is missing (a truncated generation) runs to the end.
    """
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    for wanted in (("python", "py", "python3"), ("",)):
        bodies = [body for lang, body in blocks if lang in wanted]
        if bodies:
            return bodies[-1]
    return completion


@dataclass(frozen=True)
class TestSpec:
    """Tests of one problem: statements run after ``preamble``, the program and ``setup``."""

    __test__ = False  # not a pytest test class

    tests: tuple[str, ...]
    setup: str = ""
    preamble: str = ""

    def to_json(self) -> str:
        return json.dumps({"tests": list(self.tests), "setup": self.setup,
                           "preamble": self.preamble})

    @classmethod
    def parse(cls, answer: str | Sequence[str] | TestSpec) -> TestSpec:
        """From a spec, a list of test strings, or JSON of either a list or an object with
        ``tests`` (a list or one string) and optional ``setup`` and ``preamble``."""
        if isinstance(answer, TestSpec):
            return answer
        value = json.loads(answer) if isinstance(answer, str) else answer
        if isinstance(value, dict):
            tests = value.get("tests")
            setup, preamble = value.get("setup", ""), value.get("preamble", "")
        else:
            tests, setup, preamble = value, "", ""
        if isinstance(tests, str):
            tests = [tests]
        if not isinstance(tests, (list, tuple)) or not tests:
            raise ValueError(f"tests must be a non-empty list of strings, got {tests!r:.200}")
        if not all(isinstance(t, str) for t in [*tests, setup, preamble]):
            raise ValueError("tests, setup and preamble must be strings")
        return cls(tuple(tests), setup, preamble)


class CodeReward:
    """Scores completions by running their program against tests, many programs at once.

    Call it as ``reward(completions, answers) -> list[float]``; each answer is a
    :class:`TestSpec`, a list of test strings, or its JSON. A bounded pool of threads each waits
    on one sandboxed child process (see :mod:`ibpo_lightning.rewards.sandbox`).

    Args:
        workers: Programs run at once (threads, each launching one child process).
        partial_credit: Reward the fraction of tests passed instead of 1.0 only when all pass.
        timeout_s: Wall-clock seconds per program.
        memory_mb: Address space per process in MiB.
        max_processes: Processes a program may have at once.
        niceness: Added to the children's nice value so they yield the CPU to the trainer.
        isolate_network: Put each program in an empty network namespace where the OS allows.
        isolate_files: Let each program write only its own run directory (a read-only mount
            namespace and Landlock, where the OS allows).
        strict_tests: Judge assert-style tests in this process on plain values (see
            :class:`~ibpo_lightning.rewards.sandbox.SandboxConfig`); False only for tests that
            compare the program's own objects with their ``__eq__``.
    """

    def __init__(
        self,
        workers: int = 2,
        partial_credit: bool = False,
        timeout_s: float = 5.0,
        memory_mb: int = 1024,
        max_processes: int = 16,
        niceness: int = 10,
        isolate_network: bool = True,
        isolate_files: bool = True,
        strict_tests: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.partial_credit = partial_credit
        self.config = SandboxConfig(
            timeout_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes,
            niceness=niceness, isolate_network=isolate_network, isolate_files=isolate_files,
            strict_tests=strict_tests,
        )

    def run(self, programs: Sequence[str], specs: Sequence[TestSpec]) -> list[Result]:
        """Sandbox results of each program against the spec at the same index."""
        if len(programs) != len(specs):
            raise ValueError(f"{len(programs)} programs but {len(specs)} test specs")

        def one(i: int) -> Result:
            spec = specs[i]
            return run_tests(programs[i], spec.tests, spec.setup, spec.preamble, self.config)

        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(programs)))) as pool:
            return list(pool.map(one, range(len(programs))))

    def __call__(self, completions: list[str], answers: Sequence[str | TestSpec]) -> list[float]:
        """Reward of each completion against the tests at the same index."""
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        specs = [TestSpec.parse(a) for a in answers]
        results = self.run([extract_program(c) for c in completions], specs)
        return [r.reward(self.partial_credit) for r in results]
