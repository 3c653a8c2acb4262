"""Run a model-written program against its tests in a separate, confined process.

The layers, outermost first:

- :mod:`run`: the parent side, :func:`run_tests` (start the child, wait, kill, judge the report);
- :mod:`namespaces`: what every run of a process shares (runs directory, namespace holder,
  helpers compiled once);
- :mod:`confine_uids` and :mod:`confine_files`: a sandbox uid per run; writes only to the run
  directory (read-only mount namespace, Landlock);
- :mod:`child`: the script the child process runs (limits, isolation, then the program and its
  tests);
- :mod:`values`: the only data that crosses back, plain values checked by exact type;
- :mod:`plan` and :mod:`harden`: tests judged in the parent on those values, or rewritten for
  the child where the parent cannot judge them.

See ``docs/code_reward.md``.
"""

from ibpo_lightning.rewards.sandbox.namespaces import NETNS_HOLDER_MARK, RUNS_DIR
from ibpo_lightning.rewards.sandbox.run import Result, SandboxConfig, run_tests

__all__ = ["NETNS_HOLDER_MARK", "RUNS_DIR", "Result", "SandboxConfig", "run_tests"]
