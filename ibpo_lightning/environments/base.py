"""What an environment is: it opens an episode from a problem, reads each model turn and answers
with an observation, or ends the episode.

The shape follows the reset/step convention of Gym and OpenEnv (``reset`` opens an episode,
``step`` takes the agent's action and returns what it sees next), with the model's turn text as
the action. A configured environment is a template: the rollout asks it for a fresh copy per
episode (``spawn``), so episodes never share state.

:class:`ToolEnvironment` is the common case: the model calls tools by writing
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` in its turn (the Hermes format that
the chat templates of Qwen2.5, Hermes and SmolLM3 render and that TRL's tool parsing reads), the
environment runs every call of the turn and answers with their results, one per line, as a
``tool`` message. A turn without a call ends the episode: it is the answer the task's reward
reads. A call that cannot be read or run is answered with an error line, never raised: a failing
tool is something the model sees, not a crash of the trainer.
"""

from __future__ import annotations

import copy
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ibpo_lightning.tasks.base import Problem


@dataclass(frozen=True)
class Feedback:
    """The environment's answer to one model turn."""

    observation: str | None = None
    """Text the model reads next (rendered as a ``role`` message); None when the episode ends."""
    tool_calls: int = 0
    """Tool calls the turn made."""
    malformed_calls: int = 0
    """Of those, calls that could not be parsed or run (answered with an error line)."""

    @property
    def done(self) -> bool:
        return self.observation is None


class Environment(ABC):
    """One episode's world; configure one and the rollout spawns a copy per episode.

    Args:
        max_turns: model turns per episode; a turn past the last one gets no observation, so the
            episode ends with whatever the last turn said.
        role: chat role of the observations (the chat template renders them as that turn).
    """

    def __init__(self, max_turns: int = 4, role: str = "tool") -> None:
        if max_turns < 1:
            raise ValueError(f"environment max_turns must be >= 1, got {max_turns}")
        self.max_turns, self.role = max_turns, role

    def spawn(self) -> "Environment":
        """A fresh copy for one episode (the configured object itself is never stepped)."""
        return copy.deepcopy(self)

    def reset(self, problem: Problem) -> None:
        """Open an episode on ``problem`` (the default keeps nothing)."""

    @abstractmethod
    def step(self, turn: str) -> Feedback:
        """Read the model's turn text and answer it, or end the episode (``observation=None``)."""

    def close(self) -> None:
        """Release what the environment holds (the default holds nothing)."""


_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


def parse_tool_calls(turn: str) -> list[ToolCall | str]:
    """Each ``<tool_call>`` block of ``turn`` in order: a :class:`ToolCall`, or the error text of a
    block that is not ``{"name": str, "arguments": object}`` JSON. An opened block that is never
    closed counts as a malformed call."""
    found: list[ToolCall | str] = []
    for body in _CALL.findall(turn):
        try:
            spec = json.loads(body, strict=False)  # a program's raw newlines are welcome
        except json.JSONDecodeError as err:
            found.append(f"the tool call is not JSON ({err.msg})")
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            found.append('a tool call needs {"name": <tool>, "arguments": {...}}')
            continue
        arguments = spec.get("arguments", {})
        if not isinstance(arguments, dict):
            found.append(f"the arguments of {spec['name']} must be an object")
            continue
        found.append(ToolCall(spec["name"], arguments))
    if turn.count("<tool_call>") > turn.count("</tool_call>"):
        found.append("a <tool_call> is not closed with </tool_call>")
    return found


class ToolEnvironment(Environment):
    """Runs the tool calls of each turn; a turn with none ends the episode.

    Subclasses fill ``tools`` (name -> function of keyword arguments returning text). A tool that
    raises is answered ``error: <message>``.

    Args:
        max_turns: model turns per episode (see :class:`Environment`).
        max_calls_per_turn: calls run per turn; the rest are answered with an error line.
        role: chat role of the tool results.
    """

    def __init__(self, max_turns: int = 4, max_calls_per_turn: int = 4, role: str = "tool") -> None:
        super().__init__(max_turns, role)
        if max_calls_per_turn < 1:
            raise ValueError(f"environment max_calls_per_turn must be >= 1, got {max_calls_per_turn}")
        self.max_calls_per_turn = max_calls_per_turn
        self.tools: dict[str, Callable[..., str]] = {}

    def step(self, turn: str) -> Feedback:
        calls = parse_tool_calls(turn)
        if not calls:
            return Feedback()
        lines, bad = [], 0
        for k, call in enumerate(calls):
            if k >= self.max_calls_per_turn:
                call = f"at most {self.max_calls_per_turn} tool calls a turn"
            result, ok = self._run(call)
            bad += not ok
            lines.append(result)
        return Feedback("\n".join(lines), tool_calls=len(calls), malformed_calls=bad)

    def _run(self, call: ToolCall | str) -> tuple[str, bool]:
        """The result line of one call, and whether the call could be run."""
        if isinstance(call, str):
            return f"error: {call}", False
        tool = self.tools.get(call.name)
        if tool is None:
            return f"error: no tool named {call.name!r} (tools: {', '.join(sorted(self.tools))})", False
        try:
            return str(tool(**call.arguments)), True
        except Exception as err:  # noqa: BLE001 - a failing tool is an observation, never a crash
            return f"error: {call.name}: {err}", False
