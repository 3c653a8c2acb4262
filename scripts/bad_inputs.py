"""Run the bad-input cases of issue 30 through the ``ibpo`` command and record what each prints.

    python scripts/bad_inputs.py --out docs/data/bad_inputs/after.json
    git archive f904532 | (mkdir -p /tmp/before && tar -x -C /tmp/before)
    python scripts/bad_inputs.py --tree /tmp/before --out docs/data/bad_inputs/before.json
    python scripts/bad_inputs.py --report docs/data/bad_inputs/before.json docs/data/bad_inputs/after.json

Each case runs ``python -m ibpo_lightning.cli`` (or a script) of ``--tree`` on the tiny model with
that tree first on ``PYTHONPATH``, and keeps the exit status, how many traceback frames it printed
and the lines that answer the case (those its pattern matches, else the last line of stderr). The three resume
cases share one 2-step run that keeps its checkpoint under Lightning's step name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.enable_model_summary=false"]
RESUME = r"^resuming|^note:|no checkpoint|Restored all states"
PLOT = r"^wrote|error"
LONG = "Add the numbers. " + "one two three four five six seven " * 400


def _jsonl(path: Path, rows: list[dict], blank_after: int | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" + ("\n" if i == blank_after else "") for i, r in enumerate(rows)))
    return path


def cases(work: Path, tree: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv after the interpreter, pattern of the answering line)."""
    cli = ["-m", "ibpo_lightning.cli"]
    tiny = ["-c", str(tree / "configs/tiny.yaml")]
    jsonl = ["--data.task=ibpo_lightning.tasks.JsonlTask", "--data.task.system_prompt=null",
             "--data.task.reward=ibpo_lightning.rewards.NumberReward", "--data.task.answer_format=plain"]
    mixed = _jsonl(work / "mixed.jsonl", [{"question": "1+1?", "answer": 2}, {"question": "2+2?", "answer": "4"},
                                          {"question": "3+3?", "answer": 6}], blank_after=1)
    rows = [{"question": LONG if i == 3 else f"{i}+{i}?", "answer": str(2 * i)} for i in range(8)]
    long_rows = _jsonl(work / "long.jsonl", rows)
    short = _jsonl(work / "short.jsonl", [{"question": f"{i}+1?", "answer": str(i + 1)} for i in range(8)])
    model = work / "model"
    no_tokenizer, cut = model / "no_tokenizer", model / "cut"
    broken = work / "broken.yaml"
    broken.write_text("model:\n  loss:\n    kl_coef: [0.1\n  memory: {}\n")
    good = work / "good.yaml"
    good.write_text("data:\n  steps: 3\n")
    run = work / "resume"

    def fit(root: Path | str, *extra: str) -> list[str]:
        return [*cli, "fit", *tiny, f"--trainer.default_root_dir={root}", *QUIET, *extra]

    return [
        ("JSONL: numbers and strings in one field, and a blank line",
         fit(work / "r1", *jsonl, f"--data.task.train_path={mixed}", "--data.task.heldout_size=1",
             "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"), ""),
        ("training prompt longer than the context",
         fit(work / "r2", *jsonl, f"--data.task.train_path={long_rows}", "--data.task.heldout_size=1",
             "--data.task.seed=1", "--trainer.max_steps=1"), r"long\.jsonl|context|exceeds"),
        ("held-out prompt longer than the context (ibpo validate)",
         [*cli, "validate", *tiny, f"--trainer.default_root_dir={work / 'r3'}", *QUIET, *jsonl,
          f"--data.task.train_path={short}", f"--data.task.heldout_path={long_rows}"], r"long\.jsonl|context|exceeds"),
        ("model directory without tokenizer files", fit(work / "r4", f"--model.model={no_tokenizer}"), ""),
        ("model.safetensors cut short", fit(work / "r5", f"--model.model={cut}"), ""),
        ("YAML syntax error in the second of two -c files",
         [*cli, "fit", *tiny, "-c", str(good), "-c", str(broken), f"--trainer.default_root_dir={work / 'r6'}"], ""),
        ("--ckpt_path last with a checkpoint named by step",
         fit(run, "--ckpt_path=last", "--trainer.max_steps=3"), RESUME),
        ("resume a checkpoint saved when max_steps ended the run",
         fit(run / "again", "--ckpt_path", str(run / "ckpt"), "--trainer.max_steps=2"), RESUME),
        ("resume a checkpoint made with another estimator",
         fit(run / "other", "--ckpt_path", str(run / "ckpt"), "--trainer.max_steps=3",
             "--estimator=ibpo_lightning.estimators.GRPO"), RESUME),
        ("Lightning's OnExceptionCheckpoint added",
         fit(work / "r10", "--trainer.enable_checkpointing=true",
             "--trainer.callbacks+=lightning.pytorch.callbacks.OnExceptionCheckpoint",
             f"--trainer.callbacks.dirpath={work / 'r10'}", "--trainer.max_steps=1"), r"(?i)OnException|resum"),
        ("default_root_dir under /proc", fit("/proc/no/such", "--trainer.max_steps=1"), ""),
        ("a bad value at start-up (data.prompts_per_step=0)", fit(work / "r12", "--data.prompts_per_step=0"), ""),
        ("plot_run.py: 2 runs, 1 label",
         [str(tree / "scripts/plot_run.py"), str(work / "csv"), str(work / "csv"), "--labels", "one",
          "--out", str(work / "a.png")], PLOT),
        ("plot_run.py given the CSV file",
         [str(tree / "scripts/plot_run.py"), str(work / "csv/metrics.csv"), "--out", str(work / "b.png")], PLOT),
    ]


def prepare(work: Path, tree: Path, env: dict) -> None:
    """The model directories, a metrics.csv, and a 2-step run whose checkpoint is named by step."""
    from ibpo_lightning.models.loading import resolve_model_path

    base = Path(resolve_model_path("tiny-random-llama"))
    shutil.copytree(base, work / "model/cut")
    weights = next((work / "model/cut").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    shutil.copytree(base, work / "model/no_tokenizer",
                    ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "merges.txt", "vocab.json"))
    (work / "csv").mkdir()
    (work / "csv/metrics.csv").write_text("step,policy_version,train/reward_mean\n0,1,0.5\n1,2,0.6\n")
    run = work / "resume"
    subprocess.run([sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", str(tree / "configs/tiny.yaml"),
                    f"--trainer.default_root_dir={run}", *QUIET, "--trainer.enable_checkpointing=true",
                    "--trainer.max_steps=2"], cwd=tree, env=env, check=True, capture_output=True, timeout=600)
    saved = sorted(run.rglob("*.ckpt"))
    assert saved, f"the preparatory run saved no checkpoint under {run}"
    shutil.copy(saved[-1], run / "ckpt")


def run_case(argv: list[str], pattern: str, tree: Path, env: dict, work: Path) -> dict:
    proc = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in (proc.stdout + "\n" + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    picked = [line for line in lines if pattern and re.search(pattern, line) and not line.startswith("  ")]
    answer = (" / ".join(dict.fromkeys(picked)) if picked else errors[-1] if errors else lines[-1] if lines else "").strip()
    return {"rc": proc.returncode, "traceback_frames": sum(line.startswith('  File "') for line in errors),
            "line": answer.replace(str(work), "WORK")[:600]}


def measure(tree: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("IBPO_TRACEBACK", None)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, tree, env)
        out = []
        for name, argv, pattern in cases(work, tree):
            row = {"case": name, **run_case(argv, pattern, tree, env, work)}
            print(f"{row['rc']:>3}  {row['traceback_frames']:>2} frames  {name}: {row['line']}", flush=True)
            out.append(row)
    return out


def report(before: list[dict], after: list[dict]) -> str:
    rows = ["| case | before: exit, traceback frames, what it says | after |", "|---|---|---|"]
    old = {r["case"]: r for r in before}
    for r in after:
        b = old.get(r["case"])
        cell = (lambda x: f"{x['rc']}, {x['traceback_frames']} frames: `{x['line'].replace('|', '/')}`")
        rows.append(f"| {r['case']} | {cell(b) if b else 'not run'} | {cell(r)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=ROOT, help="source tree to run (default: this checkout)")
    parser.add_argument("--out", type=Path, help="write the records here as JSON")
    parser.add_argument("--report", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="print the stored pair")
    args = parser.parse_args(argv)
    if args.report:
        print(report(*(json.loads(p.read_text()) for p in args.report)))
        return
    records = measure(args.tree.resolve())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
