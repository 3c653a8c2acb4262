"""A Python tool: the model writes a program, the environment runs it in the code sandbox and
returns what it printed.

The program runs in the same confined child process as the code reward's tests
(``ibpo_lightning.rewards.sandbox``: its own process group, CPU, memory and file limits, no
network, writes only to its run directory, a wall-clock timeout). Its printed output comes back
as the observation, or the last line of its error ("ZeroDivisionError: division by zero") when it
raised; a program that runs out of time reads ``error: timed out`` (whichever limit stopped it
first: the wall clock or its CPU seconds, which equal the timeout rounded up and race it). A program that fails is a result the model sees
and learns from, never an error of the trainer.
"""

from __future__ import annotations

from ibpo_lightning.environments.base import ToolEnvironment
from ibpo_lightning.rewards.sandbox import SandboxConfig, run_tests


class PythonTool(ToolEnvironment):
    """One tool, ``python(code)``, for GSM8K-style math and code tasks.

    The model calls it as ``<tool_call>{"name": "python", "arguments": {"code": "print(17 * 23)"}}
    </tool_call>`` and reads ``391``.

    Args:
        max_turns: model turns per episode.
        max_calls_per_turn: programs run per turn.
        timeout_s: wall-clock seconds a program may run.
        memory_mb: address space of the program's process.
        output_chars: leading characters of the output shown to the model.
    """

    def __init__(self, max_turns: int = 4, max_calls_per_turn: int = 2, timeout_s: float = 5.0,
                 memory_mb: int = 1024, output_chars: int = 1000) -> None:
        super().__init__(max_turns, max_calls_per_turn)
        if output_chars < 1:
            raise ValueError(f"environment output_chars must be >= 1, got {output_chars}")
        self.config = SandboxConfig(timeout_s=timeout_s, memory_mb=memory_mb, output_bytes=4 * output_chars)
        self.output_chars = output_chars
        self.tools = {"python": self.python}

    def python(self, code: str) -> str:
        if not isinstance(code, str):
            raise ValueError("code must be a string")
        result = run_tests(code, [], config=self.config)
        if result.status in ("timeout", "cpu_limit"):
            return f"error: timed out after {self.config.timeout_s:g} s"
        if result.status != "ok":
            errors = [line for line in result.stderr.strip().splitlines() if line.strip()]
            said = errors[-1] if errors else result.status
            return (result.stdout + said)[: self.output_chars]
        return result.stdout.rstrip("\n")[: self.output_chars] or "(no output)"
