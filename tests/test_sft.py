"""Supervised fine-tuning (``ibpo sft``): worked solutions from tasks, a response-only loss, the
stage through the real CLI, an RL run starting from its export, and FSDP2 on 2 processes."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ibpo_lightning.cli import main, run_cli, run_sft_cli
from ibpo_lightning.models import load_policy, load_tokenizer
from ibpo_lightning.rewards import NumberReward
from ibpo_lightning.rollout.sampler import encode_chat
from ibpo_lightning.sft import collate, encode_example, pack
from ibpo_lightning.sft.module import response_nll
from ibpo_lightning.tasks import ArithmeticTask, ChainTask, JsonlTask
from ibpo_lightning.tasks.base import Problem
from ibpo_lightning.training import Scorer

ROOT = Path(__file__).parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


# -- worked solutions ------------------------------------------------------------------------------
def test_chain_problems_carry_their_solution_lines():
    task = ChainTask(num_steps=[2, 3], num_train=40, num_heldout=5)
    lengths = {p.solution.count("\n") for p in task.train_problems()}
    assert lengths == {2, 3}  # two or three step lines, then the answer line
    for p in task.train_problems():
        assert task.first_error(p.prompt, p.solution) is None and p.solution.endswith(f"Answer: {p.answer}")
    # a single length draws what it drew before lengths could be mixed
    assert ChainTask(num_steps=3, num_train=3, num_heldout=1).heldout_problems()[0].prompt == \
        "Start with 7. Multiply by 2. Subtract 8. Subtract 13."


def test_gsm8k_solutions_answer_in_the_boxed_format(tmp_path):
    data = tmp_path / "g.jsonl"
    rows = [{"question": f"q{i}", "answer": f"He buys 2*3=<<2*3=6>>6 eggs.\n#### 1,00{i}"} for i in range(3)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = JsonlTask(train_path=str(data), heldout_size=1, solution_field="answer", reward=NumberReward())
    p = task.sft_problems()[0]
    assert p.solution == f"He buys 2*3=6 eggs.\nThe final answer is \\boxed{{{p.answer}}}." and "," not in p.answer
    assert task.verify([p.solution], [p.answer]) == [1.0]


def test_a_task_without_solutions_is_named():
    with pytest.raises(ValueError, match="ArithmeticTask has no worked solutions"):
        ArithmeticTask(num_train=8, num_heldout=2).sft_problems()


# -- tokens and the loss ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-random-llama")


def test_prompt_is_the_rl_prompt_and_the_response_ends_the_turn(tokenizer):
    problem = Problem("Start with 2. Add 3.", "5", "2 + 3 = 5\nAnswer: 5")
    e = encode_example(tokenizer, problem, "Be brief.")
    assert e.prompt_ids == encode_chat(tokenizer, problem.prompt, "Be brief.")  # what the sampler sends
    assert tokenizer.decode(e.response_ids) == "2 + 3 = 5\nAnswer: 5<|im_end|>"


def test_prompt_and_padding_tokens_carry_no_loss(tokenizer):
    model, _ = load_policy("tiny-random-llama")
    from ibpo_lightning.models.policy import with_scoring

    with_scoring(model)
    problems = [Problem("Start with 2. Add 3.", "5", "2 + 3 = 5\nAnswer: 5"),
                Problem("Start with 4. Multiply by 2. Subtract 1.", "7", "4 * 2 = 8\n8 - 1 = 7\nAnswer: 7")]
    examples = [encode_example(tokenizer, p, None) for p in problems]
    ids, attn, mask = collate(examples, tokenizer.pad_token_id)
    for row, e in zip(mask, examples):
        assert row[: len(e.prompt_ids)].sum() == 0 and row[len(e.prompt_ids) : len(e)].sum() == len(e.response_ids)
        assert row[len(e):].sum() == 0
    scorer = Scorer(model, None, 1.0, 8, pad_id=tokenizer.pad_token_id, share_prompts=False)
    summed, _ = response_nll(scorer, examples, tokenizer.pad_token_id, "cpu")
    # by hand: full logits, each response token's log-prob only
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits.log_softmax(-1)
    want = -sum(float(logits[r, t - 1, ids[r, t]]) for r, e in enumerate(examples)
                for t in range(len(e.prompt_ids), len(e)))
    assert float(summed.detach()) == pytest.approx(want, rel=1e-5)  # with prompt tokens it would be larger


def test_a_solution_with_tool_calls_is_replayed_as_an_episode(tokenizer):
    from ibpo_lightning.environments import Calculator
    from ibpo_lightning.rollout.episodes import TurnFormat
    from ibpo_lightning.sft.data import encode_episode

    problem = ChainTask(num_steps=2, num_train=1, num_heldout=1, solution_format="calculator").train_problems()[0]
    turns = TurnFormat(tokenizer, "tool")
    e = encode_episode(tokenizer, problem, "sys", Calculator(), turns)
    assert e.prompt_ids == encode_chat(tokenizer, problem.prompt, "sys")
    tools = [tokenizer.decode(e.response_ids[a:b]) for a, b in e.env_spans]  # the calculator's own answers
    assert tools == [f"\n<|im_start|>tool\n{v}<|im_end|>\n<|im_start|>assistant\n" for v in
                     re.findall(r"= (-?\d+)", problem.solution)]
    _, _, mask = collate([e], tokenizer.pad_token_id)
    target = [t for t, m in zip(e.prompt_ids + e.response_ids, mask[0].tolist()) if m]
    assert tokenizer.decode(target) == problem.solution.replace("</tool_call>", "</tool_call><|im_end|>") + "<|im_end|>"
    assert e.target_tokens == len(target) == int(mask.sum())
    with pytest.raises(ValueError, match="has 3 turns, but its episode ends at turn 2"):
        encode_episode(tokenizer, problem, "sys", Calculator(max_turns=2), turns)
    with pytest.raises(ValueError, match="its last turn still calls a tool"):
        encode_episode(tokenizer, Problem(problem.prompt, "1", "Answer: 1 <tool_call>{"), "sys", Calculator(), turns)


def test_micro_batches_respect_the_token_budget(tokenizer):
    task = ChainTask(num_steps=[1, 4], num_train=30, num_heldout=1)
    examples = [encode_example(tokenizer, p, task.system_prompt) for p in task.sft_problems()]
    chunks = pack(examples, max_rows=8, max_tokens=200)
    assert sorted(map(id, sum(chunks, []))) == sorted(map(id, examples))
    assert all(len(c) <= 8 and len(c) * max(map(len, c)) <= 200 for c in chunks)


# -- the stage through the CLI ---------------------------------------------------------------------
def _sft_args(root: Path, *extra: str) -> list[str]:
    return ["-c", str(ROOT / "configs/sft_tiny.yaml"), f"--trainer.default_root_dir={root}",
            "--trainer.max_epochs=2", "--data.shuffle=false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={root}",
            "--trainer.callbacks+=ibpo_lightning.export.HFExport", f"--trainer.callbacks.dirpath={root}/export",
            *QUIET, *extra]


def _losses(root: Path) -> list[float]:
    (path,) = root.glob("lightning_logs/version_*/metrics.csv")
    return [float(r["train/loss"]) for r in csv.DictReader(path.open()) if r.get("train/loss")]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    main(["sft", *_sft_args(root)])  # `ibpo sft ...`: the console entry point
    return root


def test_sft_loss_decreases_and_exports_a_model(sft_run, capsys):
    losses = _losses(sft_run)
    assert len(losses) == 8  # 32 problems / 8 per update x 2 epochs
    assert sum(losses[-2:]) / 2 < losses[0] - 1.0, losses
    model, _ = load_policy(str(sft_run / "export"))
    base, _ = load_policy("tiny-random-llama")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))


def test_rl_starts_from_the_sft_export(sft_run, tmp_path):
    from tests.helpers import _checksum

    cli = run_cli(["fit", "-c", str(ROOT / "configs/chain_rl.yaml"), f"--model.model={sft_run}/export",
                   f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.accelerator=cpu",
                   "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0",
                   "--rollout.engine=ibpo_lightning.rollout.HFEngine", "--rollout.max_new_tokens=8",
                   "--rollout.group_size=2", "--data.prompts_per_step=2", "--data.steps=2",
                   "--data.task.num_train=16", "--data.task.num_heldout=2",
                   "--trainer.callbacks+=tests.helpers.WeightsAtStart", f"--trainer.callbacks.path={tmp_path}/w",
                   *QUIET])
    assert cli.model.policy_version == 2
    exported, _ = load_policy(str(sft_run / "export"))
    assert float((tmp_path / "w").read_text()) == pytest.approx(_checksum(exported.named_parameters()), rel=1e-9)


def test_sft_validate_subcommand(sft_run):
    cli = run_sft_cli(["validate", "-c", str(ROOT / "configs/sft_tiny.yaml"), f"--model.model={sft_run}/export",
                       f"--trainer.default_root_dir={sft_run}/validate", "--trainer.logger=false", *QUIET])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/accuracy"]) <= 1.0


def _sft_on_two_processes(root: Path, *extra: str) -> None:
    """``ibpo sft`` under FSDP2 on 2 processes, 4 problems per rank (8 per update, as one process)."""
    command = [sys.executable, "-m", "ibpo_lightning.cli", "sft",
               *_sft_args(root, *extra, "--data.batch_size=4", "--trainer.num_sanity_val_steps=0",
                          "--trainer.limit_val_batches=0", "--trainer.devices=2",
                          "--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
                          "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1")]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


CALCULATOR = ["-c", str(ROOT / "configs/environments/calculator.yaml"), "--data.task.init_args.solution_format=calculator",
              "--rollout.max_new_tokens=48"]


@pytest.mark.slow
def test_sft_with_the_calculator_under_fsdp2_matches_one_process(tmp_path):
    """Worked chains written through the calculator, replayed as episodes (the tool's tokens without
    loss): the loss falls on one process, and FSDP2 on 2 processes gives the same losses."""
    one, two = tmp_path / "one", tmp_path / "two"
    main(["sft", *_sft_args(one, *CALCULATOR, "--trainer.num_sanity_val_steps=0")])
    losses = _losses(one)
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < losses[0] - 1.0, losses
    _sft_on_two_processes(two, *CALCULATOR)
    assert _losses(two) == pytest.approx(losses, rel=1e-4)


@pytest.mark.slow
def test_fsdp2_on_two_processes_matches_one_process(sft_run, tmp_path):
    """The same 8 problems per update (4 per rank, no shuffling): the same losses and weights."""
    _sft_on_two_processes(tmp_path)
    # fp32; summation order differs across ranks and with the thread count
    assert _losses(tmp_path) == pytest.approx(_losses(sft_run), rel=1e-4)
    two, _ = load_policy(str(tmp_path / "export"))
    one, _ = load_policy(str(sft_run / "export"))
    # 8 Adam steps at lr 3e-3 move a weight up to 0.024; Adam's normalisation magnifies float
    # summation-order noise where gradients are tiny, measured up to 5e-5
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        assert float((a - b).abs().max()) < 2e-4, name
