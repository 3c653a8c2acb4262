"""A benchmark's stored output: what was measured, with the command and the machine that measured it.

The benchmark scripts write one such JSON file with ``--out`` (kept under ``docs/data/`` when a
table in the docs publishes it) and print the published table from it with ``--report``, so every
published figure can be read back from the file that backs it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path


def machine() -> dict:
    """The CPU model, its bf16 flags, cores, and the versions the figures depend on."""
    import torch

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"cpu": model, "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"}),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version()}


def record(results, argv: list[str] | None = None) -> dict:
    """``results`` with the command line (``sys.argv`` by default), the date and the machine."""
    command = " ".join(["python", *(sys.argv if argv is None else argv)])
    return {"command": command, "date": datetime.date.today().isoformat(), "machine": machine(),
            "results": results}


def save(path: Path | None, results, argv: list[str] | None = None) -> dict:
    """The record of ``results`` (``record``), written to ``path`` as JSON unless it is None."""
    made = record(results, argv)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(made, indent=1) + "\n")
    return made


def load(path: Path) -> dict:
    """A stored record (``command``, ``date``, ``machine``, ``results``)."""
    return json.loads(Path(path).read_text())


def describe(record: dict) -> str:
    """One line naming the machine and the command of a record, printed above its table."""
    m = record["machine"]
    bf16 = ", ".join(m["bf16_flags"]) or "no native bf16"
    return (f"{record['date']}, {m['cpu']} ({m['cores']} cores, {bf16}), torch {m['torch']}, "
            f"{m['threads']} threads: `{record['command']}`")
