"""The hostile-program suite as a table: every case by class, its status and wall time.

Runs ``tests/test_sandbox.py``, ``tests/test_sandbox_hostile.py`` and ``tests/test_sandbox_calls.py`` under pytest (each hostile
case asserts that it scored 0, with and without partial credit, left no process and wrote nothing
outside its run directory) and prints, per class of attack (the test function), the number of
cases, their statuses and their wall times, then the slowest cases. Fails if pytest does.

Usage:  python scripts/hostile_report.py [pytest args, e.g. -k filesystem]
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^\[hostile\] (\S+) \| (.+): ([\d.]+) s wall, status (\w+)$")


def main() -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
               "tests/test_sandbox.py", "tests/test_sandbox_hostile.py", "tests/test_sandbox_calls.py",
               *sys.argv[1:]]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    cases = [m.groups() for m in map(LINE.match, run.stdout.splitlines()) if m]
    by_class: dict[str, list[tuple[str, float, str]]] = defaultdict(list)
    for test, name, wall, status in cases:
        by_class[test].append((name, float(wall), status))
    if run.returncode == 0:
        print(f"{len(cases)} hostile cases, all scored 0 (pytest passed)")
    else:
        print(f"{len(cases)} hostile cases; pytest FAILED: not every case held (see the end)")
    print(f"machine: {_cpu_model()}, Python {platform.python_version()}\n")
    print("| class (test) | cases | statuses | wall min / median / max (s) |\n|---|---|---|---|")
    for test, rows in sorted(by_class.items()):
        walls = sorted(w for _, w, _ in rows)
        statuses = ", ".join(f"{s} {n}" for s, n in _counts(s for _, _, s in rows))
        print(f"| {test} | {len(rows)} | {statuses} | "
              f"{walls[0]:.2f} / {walls[len(walls) // 2]:.2f} / {walls[-1]:.2f} |")
    print("\nslowest cases:")
    for test, name, wall, status in sorted(cases, key=lambda c: -float(c[2]))[:8]:
        print(f"  {float(wall):5.2f} s  {status:<10} {name}")
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-2000:], sep="\n")
        sys.exit(run.returncode)


def _counts(items) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for item in items:
        counts[item] += 1
    return sorted(counts.items())


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
