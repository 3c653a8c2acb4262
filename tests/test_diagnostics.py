"""The chain task, its scripted policy, and the diagnostics run through the real CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ibpo_lightning.cli import run_cli
from ibpo_lightning.diagnostics import NoisyCalculator
from ibpo_lightning.diagnostics.credit import after_error_auc
from ibpo_lightning.models import load_policy
from ibpo_lightning.tasks import ChainTask
from ibpo_lightning.tasks.chain import first_error, parse_problem, solution_lines

ROOT = Path(__file__).resolve().parent.parent
CSV = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "DIR", "name": "csv", "version": ""}}]
PROBLEM = "Start with 4. Multiply by 4. Add 9. Subtract 7."


def test_solution_and_first_error():
    assert parse_problem(f"noise {PROBLEM} more") == (4, [("*", 4), ("+", 9), ("-", 7)])
    right = "\n".join(solution_lines(4, [("*", 4), ("+", 9), ("-", 7)]))
    assert right == "4 * 4 = 16\n16 + 9 = 25\n25 - 7 = 18\nAnswer: 18"
    assert first_error(PROBLEM, right) is None
    assert first_error(PROBLEM, "4 * 4 = 16\n16 + 9 = 26\n26 - 7 = 19\nAnswer: 19") == len("4 * 4 = 16\n")
    assert first_error(PROBLEM, "4 * 4 = 13\n13 + 9 = 22") == 0
    assert first_error(PROBLEM, "4 * 4 = 16\n16 + 9 = 25") == len("4 * 4 = 16\n16 + 9 = 25")  # stops early
    with pytest.raises(ValueError, match="not a chain problem"):
        first_error("What is 2 + 2?", "4")


def test_task_rewards_the_final_value_and_keeps_held_out_apart():
    task = ChainTask(num_train=50, num_heldout=10)
    assert not {p.prompt for p in task.heldout_problems()} & {p.prompt for p in task.train_problems()}
    problem = task.train_problems()[0]
    start, ops = parse_problem(problem.prompt)
    right = "\n".join(solution_lines(start, ops))
    assert task.score([right, right + "1"], [problem.answer] * 2) == [1.0, 0.0]


@pytest.fixture(scope="module")
def engine():
    _, tokenizer = load_policy("tiny-random-llama")
    calculator = NoisyCalculator(error_rate=1.0, locate_accuracy=1.0)
    calculator.bind(None, tokenizer)
    return calculator


def _prompt(engine, user, answer_so_far=""):
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                               tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return ids + engine.tokenizer.encode(answer_so_far, add_special_tokens=False)


def test_noisy_calculator_errs_continues_and_localises(engine):
    (wrong,), = engine.generate([_prompt(engine, PROBLEM)], 1, max_new_tokens=200, temperature=1.0, seed=0)
    assert first_error(PROBLEM, wrong.text) == 0 and wrong.finished  # error_rate 1: the first line is wrong
    (greedy,), = engine.generate([_prompt(engine, PROBLEM)], 1, max_new_tokens=200, temperature=0.0)
    assert first_error(PROBLEM, greedy.text) is None
    # a continuation builds on the prefix's (wrong) value
    (more,), = engine.generate([_prompt(engine, PROBLEM, "4 * 4 = 15\n")], 1, max_new_tokens=200, temperature=0.0)
    assert more.text.startswith("15 + 9 = 24\n24 - 7 = 17") and more.text.endswith("Answer: 17")
    steps = "Step 1: 4 * 4 = 16\nStep 2: 16 + 9 = 20\nStep 3: 20 - 7 = 13"
    (named,), = engine.generate([_prompt(engine, f"{PROBLEM}\n\n{steps}\n\nwhere it first went wrong")], 1,
                                max_new_tokens=50, temperature=0.3)
    assert "\\boxed{2}" in named.text
    (cut,), = engine.generate([_prompt(engine, PROBLEM)], 1, max_new_tokens=3, temperature=0.0)
    assert len(cut.token_ids) == 3 and not cut.finished


def test_after_error_auc_ranks_blame_from_the_first_error_on():
    assert after_error_auc([-1.0, -1.0, -1.0], 1) == 0.5  # one number everywhere: ties
    assert after_error_auc([0.0, 0.0, -2.0, -1.0], 2) == 1.0  # blame only from the error on
    assert after_error_auc([-2.0, 0.0, -1.0], 2) == 0.5  # one pair won, one lost
    assert after_error_auc([-3.0, -1.0, 0.0], 1) == 0.0
    assert after_error_auc([-1.0, -1.0], 0) is None and after_error_auc([-1.0], 1) is None


@pytest.mark.parametrize("estimator", ["grpo", "vineppo"])
def test_credit_clock_and_gradient_noise_through_the_cli(tmp_path, estimator):
    records = tmp_path / "credit.jsonl"
    callbacks = json.dumps([{"class_path": "ibpo_lightning.diagnostics.CreditLocalisation", "init_args": {"path": str(records)}},
                            {"class_path": "ibpo_lightning.diagnostics.StepClock"}])
    cli = run_cli(["fit", "-c", str(ROOT / "configs/chain.yaml"), "-c", str(ROOT / f"configs/estimators/{estimator}.yaml"),
                   "--model.model=tiny-random-llama", "--data.prompts_per_step=4", "--data.steps=2",
                   "--model.grad_noise_every=1", f"--trainer.default_root_dir={tmp_path}",
                   f"--trainer.logger={json.dumps(CSV).replace('DIR', str(tmp_path))}",
                   "--trainer.enable_progress_bar=false", f"--trainer.callbacks={callbacks}"])
    metrics = cli.trainer.callback_metrics
    assert float(metrics["time/step"]) > 0 and float(metrics["memory/peak_rss_gib"]) > 0.1
    with open(tmp_path / "csv" / "metrics.csv") as f:
        noise = [row for row in csv.DictReader(f) if row["grad/noise"]]
    assert [float(row["policy_version"]) for row in noise] == [1.0, 2.0]  # once per step, not repeated
    assert all(float(row["grad/noise"]) > 0 and float(row["grad/snr"]) > 0 for row in noise)
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert rows and float(metrics["credit/rows_located"]) > 0
    share, token_share = float(metrics["credit/after_error_share"]), float(metrics["credit/after_error_token_share"])
    auc = float(metrics["credit/after_error_auc"])
    if estimator == "grpo":  # one number per answer: the credit split is the token split
        for row in rows:
            assert len(set(row["credit"])) == 1 and row["credit"][0] <= 0
        assert share == pytest.approx(token_share, abs=1e-6) and auc == pytest.approx(0.5)
    else:  # step values: the steps before the first error keep their value, the wrong one loses it
        assert share > token_share and auc > 0.5
    assert all(torch.isfinite(torch.tensor(row["credit"])).all() for row in rows)
