"""The ``ibpo`` CLI: configs parse, --help documents arguments, bad input gets one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ibpo_lightning.cli import run_cli, run_sft_cli

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("sft_"))
SFT_CONFIGS = sorted((ROOT / "configs").glob("sft_*.yaml"))
OVERLAYS = sorted((ROOT / "configs" / "estimators").glob("*.yaml"))


def fit(tmp_path, *extra):
    return run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--trainer.logger=false", *extra])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "estimator:" in capsys.readouterr().out


@pytest.mark.parametrize("config", SFT_CONFIGS, ids=lambda p: p.name)
def test_every_sft_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_sft_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "rollout:" in out and "estimator:" not in out


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_estimator_overlays_stack_on_a_base_config(overlay, capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(overlay), "--print_config"])
    out = capsys.readouterr().out
    assert overlay.read_text().split("class_path: ")[1].split()[0] in out


def test_overlay_reaches_nested_loss_switches(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "-c", str(ROOT / "configs/estimators/dr_grpo.yaml"),
                 "--print_config"])
    out = capsys.readouterr().out
    assert "aggregation: token_sum_norm" in out and "norm_constant: 1024" in out


def test_help_shows_argument_docstrings(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--help"])
    out = capsys.readouterr().out
    assert "sampling temperature" in out  # rollout.temperature
    assert "problems per RL step" in out  # data.prompts_per_step
    with pytest.raises(SystemExit):
        run_cli(["fit", "--estimator.help", "IBPO"])
    assert "lambda in R' = R + lambda * phi" in capsys.readouterr().out


def test_unknown_config_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit(tmp_path, "--model.learning_rate=0.1")
    assert "learning_rate" in capsys.readouterr().err


def test_missing_class_path_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit(tmp_path, "--estimator=ibpo_lightning.estimators.NoSuchEstimator")
    assert "NoSuchEstimator" in capsys.readouterr().err


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no/such/model"):
        fit(tmp_path, f"--model.model={tmp_path}/no/such/model")


def test_dataset_row_without_answer_names_file_field_and_row(tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl.*row 2.*'answer'"):
        fit(tmp_path, "--data.task=ibpo_lightning.tasks.JsonlTask", f"--data.task.train_path={data}",
            "--data.task.heldout_size=1", "--data.task.reward=ibpo_lightning.rewards.NumberReward")


def test_group_size_below_two_is_refused_for_group_estimators(tmp_path):
    with pytest.raises(ValueError, match="group_size=1.*at least 2"):
        fit(tmp_path, "--rollout.group_size=1", "--estimator=ibpo_lightning.estimators.GRPO")


def test_validate_subcommand_reports_held_out_accuracy(tmp_path):
    cli = run_cli(["validate", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                   "--trainer.enable_progress_bar=false", "--trainer.logger=false"])
    metrics = cli.trainer.callback_metrics
    # one greedy sample per problem: the accuracy over samples is mean@1 and pass@1 of the table
    assert float(metrics["val/accuracy"]) == pytest.approx(float(metrics["val/mean@1"]))
    assert float(metrics["val/pass@1"]) == pytest.approx(float(metrics["val/mean@1"]))
    assert cli.model.policy_version == 0 and cli.model.val_accuracy.update_count == 0  # reset after the epoch


def test_own_reward_example_from_the_docs(tmp_path, monkeypatch):
    """The "Your own reward" example of docs/configuration.md, parsed and built through the CLI:
    the function is the task's reward, composed with the length penalty."""
    text = (ROOT / "docs" / "configuration.md").read_text().split("## Your own reward", 1)[1]
    module = text.split("```python\n", 1)[1].split("```", 1)[0]
    config = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_rewards.py").write_text(module)
    (tmp_path / "own.yaml").write_text(config)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"... #### {i + 1}"}) + "\n"
                            for i in range(60)))
    monkeypatch.syspath_prepend(str(tmp_path))
    from ibpo_lightning.cli import IBPOCLI, PolicyModule, RLDataModule

    cli = IBPOCLI(PolicyModule, RLDataModule, parser_kwargs={"parser_mode": "omegaconf"}, run=False,
                  args=["-c", str(ROOT / "configs/tiny.yaml"), "-c", str(tmp_path / "own.yaml"),
                        f"--data.task.init_args.train_path={data}", "--trainer.logger=false",
                        f"--trainer.default_root_dir={tmp_path}"])
    task = cli.datamodule.task
    assert task.reward.__name__ == "last_line_matches" and task.reward.__module__ == "my_rewards"
    long_right = "x" * 3000 + "\n2"
    assert task.verify(["work\n2", "2\nwork", long_right], ["2", "2", "2"]) == [1.0, 0.0, 1.0]
    assert task.score(["work\n2", long_right], ["2", "2"]) == [1.0, 0.5]
    task.close()  # a plain function has no close(): nothing to do, no error


def test_yaml_syntax_error_names_the_file_line_and_column(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("data:\n  steps: 3\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  loss:\n    kl_coef: [0.1\n  memory: {}\n")
    for args in (["-c", str(good), "-c", str(broken)], [f"--config={broken}"]):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), *args])
        message = str(exit_info.value)
        assert message.startswith(f"error: config file {broken}, line ") and "column" in message
        assert "good.yaml" not in message


def test_model_dir_without_tokenizer_or_with_cut_weights_is_named(tmp_path):
    import shutil

    from ibpo_lightning.models.loading import TOKENIZER_FILES, load_policy, resolve_model_path

    base = Path(resolve_model_path("tiny-random-llama"))
    model = tmp_path / "model"
    shutil.copytree(base, model)
    assert load_policy(str(model))[0] is not None  # the copy loads as it is
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(base, no_tokenizer, ignore=shutil.ignore_patterns(*TOKENIZER_FILES, "special_tokens_map.json",
                                                                       "merges.txt", "tokenizer*"))
    with pytest.raises(FileNotFoundError, match=f"model directory {no_tokenizer} has no tokenizer files"):
        fit(tmp_path / "a", f"--model.model={no_tokenizer}")
    weights = next(model.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"model weights {weights} are cut short"):
        fit(tmp_path / "b", f"--model.model={model}")
    weights.write_bytes(data[:100])
    with pytest.raises(ValueError, match=f"model weights {weights} are unreadable"):
        load_policy(str(model))


def test_a_run_that_could_not_keep_its_state_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="default_root_dir /proc/no/such cannot hold the run's logs"):
        run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), "--trainer.default_root_dir=/proc/no/such"])
    with pytest.raises(SystemExit, match="OnExceptionCheckpoint .* use ibpo_lightning.checkpointing.InterruptCheckpoint"):
        run_cli(["fit", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                 "--trainer.enable_checkpointing=true",
                 "--trainer.callbacks+=lightning.pytorch.callbacks.OnExceptionCheckpoint",
                 f"--trainer.callbacks.dirpath={tmp_path}"])


def test_users_errors_print_one_line_and_crashes_keep_their_traceback(tmp_path, monkeypatch):
    import subprocess
    import sys

    from ibpo_lightning.cli import users_error
    from ibpo_lightning.data import RLDataModule
    from ibpo_lightning.tasks import ArithmeticTask

    proc = subprocess.run([sys.executable, "-m", "ibpo_lightning.cli", "fit", "-c", "configs/tiny.yaml",
                           f"--trainer.default_root_dir={tmp_path}", "--data.prompts_per_step=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: data.prompts_per_step must be >= 1, got 0"
    with pytest.raises(ValueError) as ours:
        RLDataModule(ArithmeticTask(num_train=4, num_heldout=1), prompts_per_step=0)
    with pytest.raises(ValueError) as library:
        json.loads("{")  # raised inside a library: a crash, not a message about the input
    with pytest.raises(KeyError) as other:
        {}["missing"]
    assert users_error(ours.value) and not users_error(library.value) and not users_error(other.value)
    monkeypatch.setenv("IBPO_TRACEBACK", "1")
    assert not users_error(ours.value)
