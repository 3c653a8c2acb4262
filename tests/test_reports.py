"""The report scripts behind published tables read their stored runs and print what the docs show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_dynamic_sampling_report_matches_results_section_7():
    out = _run("scripts/dynamic_sampling_report.py")
    results = (ROOT / "docs/results.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith("| DAPO") or line.startswith("| IBPO")
            or line.startswith("| GRPO")]
    assert len(rows) == 7 and all(row in results for row in rows)
    # the old and the new DAPO, run alone, agree at every step
    assert "before (dynamic sampling inside DAPO) vs DAPO, after, the same command again: first difference at " \
           "none: identical records" in out


def test_bench_step_report_prints_the_stored_rows_of_benchmarks():
    data = ROOT / "docs/data/bench_step_one_place"
    out = _run("scripts/bench_step.py", "--report", *(str(data / r) for r in ("old1", "new1", "old2", "new2")))
    benchmarks = (ROOT / "docs/benchmarks.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith(("| old", "| new"))]
    assert len(rows) == 4 and all(row in benchmarks for row in rows)


def test_gold_sweep_report_prints_the_stored_rows_of_evaluation():
    data = ROOT / "docs/data/gold_sweep"
    out = _run("scripts/gold_sweep.py", "--report", str(data / "before.json"), str(data / "after.json"))
    evaluation = (ROOT / "docs/evaluation.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith(("| before", "| after"))]
    assert len(rows) == 6 and all(row in evaluation for row in rows)
    assert "| after | minerva | 272 | 231 |" in out and "| before | minerva | 272 | 224 |" in out


def test_hostile_cases_stored_for_both_sandboxes_match_code_reward():
    data = ROOT / "docs/data/sandbox_round2"
    old = (data / "calls_on_the_old_sandbox.txt").read_text()
    new = (data / "calls_on_this_sandbox.txt").read_text()
    assert "17 of 21 attacks worked" in old and "0 of 21 attacks worked" in new
    assert "17 of whose 21 attacks scored 1" in (ROOT / "docs/code_reward.md").read_text()


def test_plot_run_takes_the_file_or_its_folder_and_one_label_per_run(tmp_path):
    run = tmp_path / "csv/version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("step,policy_version,train/reward_mean,val/accuracy\n"
                                     "0,1,0.2,\n1,2,0.4,\n1,,,0.5\n")
    out = _run("scripts/plot_run.py", str(run / "metrics.csv"), "--out", str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 0 and "wrote" in out
    proc = subprocess.run([sys.executable, "scripts/plot_run.py", str(run), str(run), "--labels", "one"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "2 runs but 1 --labels" in proc.stderr
    proc = subprocess.run([sys.executable, "scripts/plot_run.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "holds no metrics.csv" in proc.stderr


def test_health_replay_repeats_what_a_run_would_have_said(tmp_path):
    rows = ["step,policy_version,train/reward_mean,train/reward_std,train/truncated_fraction,train/truncated_reward,"
            "train/zero_variance_groups,train/entropy"]
    rows += [f"{i},{i + 1},0.0,0.0,1.0,0.0,1.0,1.5" for i in range(4)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    out = _run("scripts/health_replay.py", str(tmp_path), "--max-new-tokens", "8")
    assert "step 3: run health (truncation): 100% of the samples stopped at rollout.max_new_tokens=8" in out
    assert "step 3: run health (zero_variance)" in out and "2 run-health warnings" in out
    stored = ROOT / "docs/data/health/quickstart_metrics.csv"
    assert "0 run-health warnings" in _run("scripts/health_replay.py", str(stored), "--max-new-tokens", "16")


def test_entropy_report_prints_the_stored_rows_of_evaluation():
    data = ROOT / "docs/data/health"
    runs = [data / "quickstart_metrics_run0.csv", data / "quickstart_metrics.csv",
            *sorted(data.glob("quickstart_entropy_coef_*.csv"))]
    out = _run("scripts/entropy_report.py", *map(str, runs))
    evaluation = (ROOT / "docs/evaluation.md").read_text()
    rows = [line for line in out.splitlines() if line.startswith("| quickstart")]
    assert len(rows) == 4 and all(row in evaluation for row in rows)
