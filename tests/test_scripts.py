"""Smoke tests of the scripts that produce published numbers: each runs on the tiny model (or a
few rows) and its ``--report`` reads back what its ``--out`` stored; the stored outputs under
``docs/data/`` print the rows the docs publish."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DATA = ROOT / "docs" / "data"
SHARED = ROOT.parent / "shared" / "data"


def _run(*args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _report(*args: str) -> str:
    """What a script prints, run in this process: the report paths only read stored files, and a
    process of their own would spend most of its time importing Lightning again."""
    argv, out = sys.argv, io.StringIO()
    sys.argv = [str(ROOT / args[0]), *args[1:]]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / args[0]), run_name="__main__")
    except SystemExit as exit:
        assert exit.code in (None, 0), f"{args[0]} exited with {exit.code}"
    finally:
        sys.argv = argv
    return out.getvalue()


def _stored_and_reported(script: str, out: Path, *args: str) -> tuple[dict, str]:
    printed = _run(f"scripts/{script}", *args, "--out", str(out))
    record = json.loads(out.read_text())
    assert record["machine"]["cpu"] and record["command"].startswith("python scripts/")
    reported = _report(f"scripts/{script}", "--report", str(out))
    assert reported.strip() == printed.strip().splitlines()[-1] or reported.strip() in printed
    return record, reported


def test_bench_logprobs(tmp_path):
    record, table = _stored_and_reported("bench_logprobs.py", tmp_path / "lp.json", "--model", "tiny-random-llama",
                                         "--groups", "2", "--group-size", "2", "--repeats", "1")
    times = record["results"]["times"]
    assert len(times["plain"]) == len(times["shared prompt"]) == 1 and all(t > 0 for t in times["plain"])
    assert "| ratio | **" in table


def test_bench_logprob_memory(tmp_path):
    record, table = _stored_and_reported("bench_logprob_memory.py", tmp_path / "mem.json", "--model",
                                         "tiny-random-llama", "--lengths", "64", "--chunk", "16")
    assert {(r["length"], r["chunk"]) for r in record["results"]} == {(64, None), (64, 16)}
    assert "| 64 | " in table


def test_profile_train_step(tmp_path):
    record, table = _stored_and_reported("profile_train_step.py", tmp_path / "p.json", "--model", "tiny-random-llama",
                                         "--modes", "fp32", "bf16", "--repeats", "1", "--prompts", "2",
                                         "--samples", "2", "--top", "3")
    assert set(record["results"]["seconds"]) == {"fp32", "bf16"} and "aten::" in record["results"]["top"]["bf16"]
    assert "| bf16 | " in table


@pytest.mark.slow
def test_bench_rollout_with_vllm(tmp_path):
    record, table = _stored_and_reported("bench_rollout.py", tmp_path / "r.json",  # vLLM-CPU: head_dim 64 and up
                                         "--repeats", "1", "--shapes", "quick", "--skip-reset")
    rates = record["results"]["rates"]
    assert len(rates) == 1 and all(v[0] > 0 for v in next(iter(rates.values())).values())
    assert "weight sync into vLLM" in table


def test_bench_step_and_its_phase_table(tmp_path):
    out = tmp_path / "step"
    _run("scripts/bench_step.py", "-c", "configs/tiny.yaml", "--steps", "2", "--warmup", "1", "--out", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["train_s"] > 0 and set(summary["matmul_peak_gflops"]) == {"fp32", "bf16"}
    reported = _run("scripts/bench_step.py", "--report", str(out))
    assert "| step |" in reported and "| train |" in reported


def test_bench_precision_on_the_tiny_model(tmp_path):
    """Both precisions on the tiny model (the quickstart with configs/tiny.yaml stacked on it); a
    second call over the finished runs prints the same tables from what they stored."""
    short = tmp_path / "short.yaml"
    short.write_text("trainer:\n  val_check_interval: 2\n")  # the quickstart validates every 5 of its 20 steps
    args = ["scripts/bench_precision.py", "--config", "configs/tiny.yaml", "--config", str(short), "--seeds", "0",
            "--out", str(tmp_path / "runs")]
    first = _run(*args)
    for precision in ("32-true", "bf16-mixed"):
        summary = json.loads((tmp_path / "runs" / f"{precision}_s0" / "summary.json").read_text())
        assert summary["step_s"] > 0 and 0 <= summary["accuracy_after"] <= 1
    assert "| 32-true | 0 | " in first and "| bf16-mixed | 0 | " in first
    def rows(out: str) -> list[str]:
        return [line for line in out.splitlines() if line.startswith("| ")]

    assert rows(_run(*args)) == rows(first)  # the stored runs and peaks, not new measurements


def test_bench_code_reward_on_a_few_mbpp_rows(tmp_path):
    if not (SHARED / "code" / "mbpp.jsonl").is_file():
        pytest.skip("the shared data is not beside the checkout")
    out = _run("scripts/bench_code_reward.py", "--limit", "6", "--workers", "1", "--exclude")
    assert "workers=1: 6 programs in " in out and "6 of 6 scored 1.0" in out and "| 1 | " in out, out


def test_humaneval_references_on_two_problems(tmp_path):
    rows = [{"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n",
             "canonical_solution": "    return a + b\n", "entry_point": "add",
             "test": "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n"},
            {"task_id": "HumanEval/1", "prompt": "def twice(s):\n", "canonical_solution": "    return s * 2\n",
             "entry_point": "twice", "test": "def check(candidate):\n    for x in ['a', 'bc']:\n"
                                             "        assert candidate(x) == x + x\n"}]
    data = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(data, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    out = _run("scripts/humaneval_references.py", str(data), "--workers", "1")
    assert "| 2 | 2 | 2 | " in out, out  # both pass, both broken variants fail


def test_hostile_report_on_one_class():
    out = _run("scripts/hostile_report.py", "-k", "comparison_cannot_be_lied_to")
    assert "all scored 0 (pytest passed)" in out


def test_hostile_cases_on_this_checkout():
    out = _run("scripts/hostile_cases_on.py")
    total = out.count("\n0  ") + out.count("\n1  ")
    assert total >= 21 and f"0 of {total} attacks worked" in out, out


def test_tool_chains(tmp_path):
    record, table = _stored_and_reported("tool_chains.py", tmp_path / "tc.json", "--model", "tiny-random-llama",
                                         "--tool", "--lengths", "2", "4", "--problems", "2", "--max-new-tokens", "16")
    rows = record["results"]
    assert [(r["steps"], r["trained_length"], r["problems"]) for r in rows] == [(2, True, 2), (4, False, 2)]
    assert all(0 <= r["accuracy"] <= 1 and r["turns_per_episode"] >= 1 for r in rows)
    assert "| 4 (not trained) | 2 |" in table


def test_chain_format(tmp_path):
    record, _ = _stored_and_reported("chain_format.py", tmp_path / "cf.json", "--model", "tiny-random-llama",
                                     "--extra-steps", "4", "--extra-count", "2", "--max-new-tokens", "8")
    rows = record["results"]["by_steps"]
    assert [(r["steps"], r["trained"], r["answers"]) for r in rows] == [(2, True, 150), (3, True, 150), (4, False, 2)]
    assert sum(record["results"]["kinds"].values()) == 302 and all(len(r["first_wrong_line"]) == r["steps"] + 1
                                                                    for r in rows)
    both = _run("scripts/chain_format.py", "--report", str(tmp_path / "cf.json"), str(tmp_path / "cf.json"))
    assert "| 4 (not trained) | 2 |" in both and both.count("\n| ") == 4  # header, 3 lengths


def test_bad_inputs_report_of_the_stored_pair():
    out = _run("scripts/bad_inputs.py", "--report", str(DATA / "bad_inputs/before.json"),
               str(DATA / "bad_inputs/after.json"))
    assert out.count("\n| ") >= 14 and "Expected object or value" in out and "long.jsonl row 4" in out


STORED = {  # report command -> the stored output(s) it reads; each printed table row is in docs/benchmarks.md
    "bench_logprobs.py": ["--report", "benchmarks/logprobs_shared_prompt.json"],
    "bench_logprob_memory.py": ["--report", "benchmarks/logprob_memory.json"],
    "bench_rollout.py": ["--report", "benchmarks/rollout.json"],
    "profile_train_step.py": ["--report", "benchmarks/train_micro_batch.json"],
    "bench_step.py": ["--report", "benchmarks/step_phases/32-true", "benchmarks/step_phases/bf16-mixed"],
}


@pytest.mark.parametrize("script", list(STORED))
def test_stored_benchmarks_print_the_published_rows(script):
    args = [a if a.startswith("--") else str(DATA / a) for a in STORED[script]]
    out = _report(f"scripts/{script}", *args)
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "benchmarks.md").read_text()
    assert rows and [r for r in rows if r not in published] == []


def test_stored_trl_comparison_prints_the_published_rows():
    out = _report("scripts/bench_trl_report.py", str(DATA / "benchmarks/trl"))
    rows = [line for line in out.splitlines() if line.startswith(("| ", "TRL "))]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 6 and [r for r in rows if r not in published] == []  # header, 3 runs, 2 ratios


def test_stored_precision_runs_print_the_published_rows():
    out = _report("scripts/bench_precision.py", "--seeds", "0", "1", "--out", str(DATA / "benchmarks/precision"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "benchmarks.md").read_text()
    assert len(rows) == 15 and [r for r in rows if r not in published] == []  # 4 runs and 2 phase tables, headers


def test_stored_quickstart_study_prints_the_published_rows(tmp_path):
    out = _report("scripts/study.py", "report", "--out", str(tmp_path / "study.png"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 12 and [r for r in rows if r not in published] == []  # 2 tables: header, 5 estimators


def test_stored_chain_study_at_equal_tokens_prints_the_published_rows(tmp_path):
    out = _report("scripts/study.py", "report", "--study", "chain", "--out", str(tmp_path / "study.png"))
    rows = [line for line in out.split("at equal generated tokens: 179980")[1].splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 9 and [r for r in rows if r not in published] == []  # header, 8 arms


def test_stored_chain_credit_study_prints_the_published_rows(tmp_path):
    """Section 9.3 publishes the report of every finished run of the study as it stands; a run
    committed without its rows in the text, or a hand-edited figure, fails here."""
    out = _report("scripts/study.py", "report", "--study", "chain_credit", "--out", str(tmp_path / "study.png"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    arms = {done.parent.parent.name for done in (DATA / "study_chain_credit").glob("*/*/done")}
    text = (ROOT / "docs" / "results.md").read_text()
    section = text.split("### 9.3 ")[1].split("\n## ")[0]
    assert len(arms) >= 2 and len(rows) == 2 * (1 + len(arms))  # two tables: a header, an arm a row
    assert [r for r in rows if r not in section] == []


def test_stored_credit_localisation_prints_the_published_rows(tmp_path):
    out = _report("scripts/credit_localisation.py", "--report-only", "--root", str(DATA / "credit_localisation"),
               "--out", str(tmp_path / "credit.png"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 9 and [r for r in rows if r not in published] == []  # header, 8 estimators


def test_stored_cold_start_prints_the_published_rows():
    published = (ROOT / "docs" / "results.md").read_text()
    out = _report("scripts/chain_format.py", "--report", str(DATA / "cold_start/before.json"),
               str(DATA / "cold_start/after.json"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 4 and [r for r in rows if r not in published] == []  # header, 3 lengths (section 5)
    out = _report("scripts/chain_format.py", "--report", str(DATA / "cold_start/errors.json"))
    kinds = [line for line in out.split("| what the first wrong line")[1].splitlines() if line.startswith("| ")]
    assert len(kinds) == 6 and [r for r in kinds if r not in published] == []  # right answers, 5 kinds (6.1)


@pytest.mark.parametrize("root, rows", [("localise_chain", 22), ("localise_chain_repairs", 10)])
def test_stored_chain_localisation_prints_the_published_rows(tmp_path, root, rows):
    out = _report("scripts/localise_chain.py", "report", "--root", str(DATA / root), "--summary", str(tmp_path / "s.json"))
    if root == "localise_chain":  # 6.3 and 9.1 publish its credit table; its repair counts are 9.2's, from 12 steps
        out = out.split("| IBPO reading")[0]
    printed = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(printed) == rows and [r for r in printed if r not in published] == []  # 6.3, 6.4, 9.1, 9.2
    assert json.loads((tmp_path / "s.json").read_text())


@pytest.mark.parametrize("stored", ["sft_calculator.json", "rl_calculator_grpo_seed0.json"])
def test_stored_tool_chains_print_the_published_rows(stored):
    out = _report("scripts/tool_chains.py", "--report", str(DATA / "tool_chains" / stored))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 5 and [r for r in rows if r not in published] == []  # header, 4 lengths


def test_episode_cost_reads_a_stored_run_and_refuses_unlabelled_runs(tmp_path):
    out = _run("scripts/episode_cost.py", str(DATA / "study_chain" / "grpo" / "seed0"), "--labels", "answers",
               "--out", str(tmp_path / "cost.json"))
    row = next(line for line in out.splitlines() if line.startswith("| answers |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "60" and float(cells[2]) > 0 and cells[11] == "1.00"  # 60 steps, one turn per answer
    stored = json.loads((tmp_path / "cost.json").read_text())["answers"]
    assert stored["tokens/observation"] == 0.0 and stored["generated_tokens"] > 3000
    assert _run("scripts/episode_cost.py", "--report", str(tmp_path / "cost.json")).strip() == out.strip()
    proc = subprocess.run([sys.executable, "scripts/episode_cost.py", str(DATA / "study_chain" / "grpo" / "seed0"),
                           "--labels", "a", "b"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "1 runs but 2 --labels" in proc.stderr


def test_stored_episode_cost_prints_the_published_rows():
    out = _report("scripts/episode_cost.py", "--report", str(DATA / "tool_chains" / "episode_cost.json"))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    published = (ROOT / "docs" / "results.md").read_text()
    assert len(rows) == 3 and [r for r in rows if r not in published] == []  # header, no tool, calculator
