"""The call cases of the hostile suite against another checkout of the sandbox: which were holes.

Runs every case of ``LIBRARY_CASES`` and ``METHOD_CASES`` (``tests/test_sandbox_calls.py``) with
the ``ibpo_lightning`` found first on the path, and prints its reward: 1 means the attack worked
there. With this checkout every case scores 0 (the test file asserts it); on the sandbox before
issue 31 (``mkdir -p /tmp/base && git archive 99b8958 | tar -x -C /tmp/base``) most scored 1:

    PYTHONPATH=/tmp/base python scripts/hostile_cases_on.py
"""

from __future__ import annotations

from pathlib import Path

import ibpo_lightning.rewards as rewards
from ibpo_lightning.rewards import SandboxConfig, run_tests

CASES = Path(__file__).resolve().parents[1] / "tests" / "test_sandbox_calls.py"


def main() -> None:
    source = CASES.read_text().split("@pytest.mark.parametrize")[0]
    tables: dict = {}
    exec(compile(source.replace("from tests.", "# from tests."), str(CASES), "exec"), tables)  # noqa: S102
    config = SandboxConfig(timeout_s=2.0, memory_mb=512)
    tree = Path(rewards.__file__).resolve().parents[2]
    # the checkout this runs in prints as ".", so a stored output names no directory of one machine
    print(f"sandbox under test: {'.' if tree == Path.cwd().resolve() else tree}")
    worked = 0
    for kind, table in (("library", tables["LIBRARY_CASES"]), ("method", tables["METHOD_CASES"])):
        for name, (program, test, *setup) in table.items():
            reward = run_tests(program, [test], setup=(setup or [""])[0], config=config).reward()
            worked += reward == 1.0
            print(f"{reward:.0f}  {kind}: {name}")
    print(f"{worked} of {len(tables['LIBRARY_CASES']) + len(tables['METHOD_CASES'])} attacks worked")


if __name__ == "__main__":
    main()
