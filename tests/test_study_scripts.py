"""The study, localisation and chain-format scripts' own logic: resuming, pairing with GRPO, the credit table, error kinds."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the study's dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _write_run(out: Path, val: list[tuple[int, float, float]], rewards: list[float], tokens: int) -> None:
    """A run folder as the study writes it: CSV rows per step, validation rows, a ``done`` file."""
    (out / "csv").mkdir(parents=True)
    keys = ["step", "policy_version", "train/reward_mean", "tokens/fresh", "val/accuracy", "val/greedy",
            "val/policy_version"]
    with open(out / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for step, reward in enumerate(rewards):
            w.writerow({"step": step, "policy_version": step + 1, "train/reward_mean": reward, "tokens/fresh": tokens})
        for step, sampled, greedy in val:
            w.writerow({"step": step, "val/accuracy": sampled, "val/greedy": greedy, "val/policy_version": step})
    (out / "done").write_text("1 s\n")


def test_study_report_pairs_each_seed_with_grpo(tmp_path, capsys, monkeypatch):
    study = _script("study")
    _write_run(tmp_path / "grpo" / "seed0", [(0, 0.30, 0.40), (4, 0.40, 0.45)], [0.3, 0.4, 0.5, 0.5], 100)
    _write_run(tmp_path / "grpo" / "seed3", [(4, 0.50, 0.50)], [0.4, 0.4, 0.4, 0.4], 100)  # beyond run's 0 1 2
    _write_run(tmp_path / "ibpo" / "seed0", [(4, 0.45, 0.55)], [0.3, 0.3, 0.3, 0.3], 150)
    _write_run(tmp_path / "ibpo" / "seed3", [(4, 0.60, 0.50)], [0.3, 0.3, 0.3, 0.3], 150)
    (tmp_path / "ibpo" / "seed4" / "csv").mkdir(parents=True)  # an interrupted run: no done file
    monkeypatch.setattr(sys, "argv", ["study.py", "report", "--study", "chain", "--root", str(tmp_path),
                                      "--estimators", "grpo", "ibpo", "--out", str(tmp_path / "s.png")])
    study.main()
    out = capsys.readouterr().out
    assert (tmp_path / "s.png").stat().st_size > 0
    assert (tmp_path / "s_paired.png").stat().st_size > 0 and f"wrote {tmp_path / 's_paired.png'}" in out
    assert "held-out accuracy 0.300, held-out greedy accuracy 0.400" in out  # the first run's pass before
    ibpo = next(line for line in out.splitlines() if line.startswith("| IBPO"))
    cells = [c.strip() for c in ibpo.split("|")[1:-1]]
    assert cells[1] == "2"  # every stored seed is read (no --seeds), the interrupted one left out
    assert cells[2] == "52.5 ± 10.6 (45.0 / 60.0)"  # sampled accuracy after
    assert cells[3] == "22.5 ± 10.6"  # gain over the 0.30 before
    assert cells[4] == "7.5 ± 3.5"  # minus GRPO's on the same seed: +5 and +10 points
    assert cells[7] == "5.0 ± 7.1"  # greedy minus GRPO's: +10 and 0 points
    assert cells[9] == "600"  # generated tokens: 4 steps x 150
    assert study.finished(tmp_path / "ibpo" / "seed0") and not study.finished(tmp_path / "ibpo" / "seed4")


def test_study_rejects_an_estimator_the_study_does_not_have(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "study.py"), "report", "--study", "chain",
                             "--root", str(tmp_path), "--estimators", "acpo"], capture_output=True, text=True)
    assert result.returncode == 2 and "the chain study has" in result.stderr


def test_study_goes_on_only_from_the_weights_it_started_from(tmp_path, monkeypatch):
    study = _script("study")
    model, root = tmp_path / "model", tmp_path / "study"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights A")
    (model / "config.json").write_text("{}")  # not weights: not recorded
    first, second = hashlib.sha256(b"weights A").hexdigest(), hashlib.sha256(b"weights B").hexdigest()
    study.check_start_model(root, str(model))
    assert (root / "start_model.sha256").read_text() == f"{first}  model.safetensors\n"  # sha256sum's format
    study.check_start_model(root, str(model))  # the same weights: goes on
    study.check_start_model(root, "smollm2-135m-instruct")  # a built-in name: nothing to compare
    (model / "model.safetensors").write_bytes(b"weights B")
    monkeypatch.setattr(study.subprocess, "run", lambda *a, **k: pytest.fail("a run started"))
    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--study", "chain", "--root", str(root),
                                      "--model", str(model), "--seeds", "0", "--estimators", "grpo"])
    with pytest.raises(SystemExit) as stop:
        study.main()
    assert first in str(stop.value) and second in str(stop.value)
    assert "not the model this study started from" in str(stop.value)


def test_localisation_table_from_credit_records(tmp_path):
    loc = _script("localise_chain")
    rows = [{"credit": [-1.0, -1.0, -1.0, -1.0], "error_token": 1},  # one number: share = token share
            {"credit": [0.0, 0.0, -2.0, -2.0], "error_token": 2},  # blame only from the error on
            {"credit": [0.0, 0.0, 0.5, 0.0], "error_token": 2},  # positive credit only: no blame
            {"credit": [-1.0], "error_token": 0}]  # no token before the error: no AUC
    path = tmp_path / "credit.jsonl"
    path.write_text("".join(json.dumps({"step": 0, "kind": "fresh", **r}) + "\n" for r in rows))
    out = loc.localisation(path)
    assert out["rows"] == 3 and out["auc_rows"] == 2
    assert out["share"] == pytest.approx((0.75 + 1.0 + 1.0) / 3)
    assert out["token_share"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert out["auc"] == pytest.approx(0.75) and out["shaped_auc"] == pytest.approx(1.0)
    assert out["masked_rows"] == 2 and out["masked_positive"] == 1 and out["masked_after"] == pytest.approx(1.0)


def test_chain_error_kinds():
    kind = _script("chain_format").error_kind
    problem = "Start with 4. Multiply by 4. Subtract 20. Add 9."  # 16, -4, 5
    assert kind(problem, "4 * 4 = 16\n16 - 20 = -4\n-4 + 9 = 5\nAnswer: 5") == "right"
    assert kind(problem, "4 * 4 = 16\n16 - 20 = 4\n4 + 9 = 13\nAnswer: 13") == "result -"
    assert kind(problem, "4 * 4 = 15\n15 - 20 = -5\n-5 + 9 = 4\nAnswer: 4") == "result *"
    assert kind(problem, "4 * 4 = 16\n16 - 2 = 14\n14 + 9 = 23\nAnswer: 23") == "copied operation"
    assert kind(problem, "4 * 4 = 16\n6 - 20 = -14\n-14 + 9 = -5\nAnswer: -5") == "carried value"
    assert kind(problem, "4 * 4 = 16\nthen subtract\n") == "format"
    assert kind(problem, "4 * 4 = 16\n16 - 20 = -4") == "missing line"
    assert kind(problem, "4 * 4 = 16\n16 - 20 = -4\n-4 + 9 = 5\nAnswer: 6") == "answer line"


def test_engine_fidelity_distance_and_a_run_on_the_tiny_model():
    fidelity = _script("engine_fidelity")
    import torch

    probs = [torch.tensor([0.5, 0.25, 0.25, 0.0])]
    assert fidelity.distance([[0, 0, 1, 2]], probs) == pytest.approx(0.0)  # frequencies equal to probs
    assert fidelity.distance([[3, 3]], probs) == pytest.approx(1.0)  # all mass where p is 0
    assert fidelity.distance_probs(probs, [torch.tensor([0.25, 0.25, 0.25, 0.25])]) == pytest.approx(0.25)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "engine_fidelity.py"), "--model", "tiny-random-llama",
                          "--engines", "hf", "--positions", "2", "--samples", "20", "--max-prob", "2"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "2 positions" in out and "hf engine" in out and "other format" in out, out


def test_an_interrupted_study_run_resumes_from_its_checkpoint_and_joins_its_logs(tmp_path, monkeypatch):
    study = _script("study")
    root, checkpoints = tmp_path / "study", tmp_path / "ckpt"
    commands = []

    def attempt(first_step: int, last_step: int, interrupted: bool):
        def fake_run(cmd, check):
            commands.append(cmd)
            out = Path(cmd[cmd.index("--trainer.default_root_dir") + 1]) / "csv"
            out.mkdir(parents=True, exist_ok=True)
            with open(out / "metrics.csv", "w", newline="") as f:
                w = csv.DictWriter(f, ["step", "policy_version", "train/reward_mean"])
                w.writeheader()
                w.writerows({"step": k, "policy_version": k + 1, "train/reward_mean": k / 10}
                            for k in range(first_step, last_step))
            if interrupted:  # the run saved a checkpoint at step 5, then the study was stopped
                last = checkpoints / "quickstart" / "grpo" / "seed0" / "last.ckpt"
                last.parent.mkdir(parents=True, exist_ok=True)
                last.write_bytes(b"state")
                raise KeyboardInterrupt
        monkeypatch.setattr(study.subprocess, "run", fake_run)

    monkeypatch.setattr(sys, "argv", ["study.py", "run", "--root", str(root), "--seeds", "0", "--estimators", "grpo",
                                      "--checkpoints", str(checkpoints), "--steps", "10",
                                      "--export", str(tmp_path / "exports")])
    attempt(0, 7, interrupted=True)
    with pytest.raises(KeyboardInterrupt):
        study.main()
    attempt(5, 10, interrupted=False)
    study.main()
    first, second = commands
    assert "--ckpt_path" not in first and second[second.index("--ckpt_path") + 1].endswith("seed0/last.ckpt")
    assert second[second.index("--trainer.num_sanity_val_steps") + 1] == "0"  # the start was measured before
    callbacks = json.loads(second[second.index("--trainer.callbacks") + 1])
    assert callbacks[-1] == {"class_path": "ibpo_lightning.export.HFExport",
                             "init_args": {"dirpath": str(tmp_path / "exports" / "quickstart" / "grpo" / "seed0")}}
    run = root / "grpo" / "seed0"
    rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(10))  # steps 5 and 6 from the resumed attempt only
    assert (run / "done").exists() and not list(checkpoints.rglob("*.ckpt"))  # deleted once finished
    assert not list((run / "csv").glob("metrics.part*.csv"))


def test_readings_by_generated_tokens_and_their_interpolation():
    from ibpo_lightning.diagnostics.run_logs import by_tokens, value_at

    # 3 steps of 100 fresh + 50 resample tokens (and 40 tool-result tokens, read, not generated);
    # held-out readings after 2 and 3 updates, the one before training given apart
    series = {"train/reward_mean": [(0.0, 0.1), (1.0, 0.2), (2.0, 0.3)],
              "tokens/fresh": [(0.0, 100.0), (1.0, 100.0), (2.0, 100.0)],
              "tokens/resample": [(0.0, 50.0), (1.0, 50.0), (2.0, 50.0)],
              "tokens/observation": [(0.0, 40.0), (1.0, 40.0), (2.0, 40.0)],
              "val/accuracy": [(2.0, 0.5), (3.0, 0.8)]}
    points = by_tokens(series, "val/accuracy", start=0.2)
    assert points == [(0.0, 0.2), (300.0, 0.5), (450.0, 0.8)]
    assert value_at(points, 150.0) == pytest.approx(0.35)
    assert value_at(points, 400.0) == pytest.approx(0.7)
    assert value_at(points, 0.0) == 0.2 and math.isnan(value_at(points, 451.0))
