"""Experiment tracking overlays: a run's metrics land in MLflow's local file store and read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from ibpo_lightning.cli import run_cli

ROOT = Path(__file__).parents[1]


def test_mlflow_overlay_records_every_step_in_a_local_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="the `tracking` extra (mlflow-skinny) is not installed")
    monkeypatch.chdir(tmp_path)  # the overlay as shipped: its store is runs/mlruns under the working directory
    run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / "configs/tracking/mlflow.yaml"),
             f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false", "--data.steps=3"])
    store = f"sqlite:///{tmp_path / 'runs/mlflow.db'}"
    assert list((tmp_path / "runs/tracked/csv").glob("version_0/metrics.csv")), "CSV is kept beside MLflow"
    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "ibpo-lightning"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/reward_mean")
    assert [m.step for m in history] == [0, 1, 2]
    assert "train/zero_variance_groups" in run.data.metrics and "val/accuracy" in run.data.metrics
    assert any("tiny-random-llama" in value for value in run.data.params.values())  # the run's settings too


@pytest.mark.parametrize("overlay", ["mlflow", "wandb"])
def test_tracking_overlays_stack_on_a_base_config(overlay, capsys):
    """Both parse on top of a base config (W&B itself is not installed here: its logger is built only
    when a run starts)."""
    with pytest.raises(SystemExit):
        run_cli(["fit", "-c", str(ROOT / "configs/quickstart.yaml"), "-c", str(ROOT / f"configs/tracking/{overlay}.yaml"),
                 "--print_config"])
    out = capsys.readouterr().out
    assert {"mlflow": "MLFlowLogger", "wandb": "WandbLogger"}[overlay] in out and "CSVLogger" in out
    assert "TensorBoardLogger" not in out  # the overlay replaces the base config's loggers, as it says
