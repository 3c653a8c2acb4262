"""Prompts that cannot fit the context are found when the task loads (``data/lengths.py``), named by
file and row, or left out with ``data.drop_long_prompts``; in ``fit`` and in ``validate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ibpo_lightning.cli import run_cli
from ibpo_lightning.data.lengths import PromptRoom, check_problems, prompt_lengths, prompt_room
from ibpo_lightning.models.loading import load_tokenizer, resolve_model_path
from ibpo_lightning.rollout.sampler import encode_chat
from ibpo_lightning.tasks.base import Problem

ROOT = Path(__file__).parents[1]
LONG = "Add the numbers. " + "one two three four five six seven " * 400  # ~2,800 tokens: past 2,048


def _tokenizer():
    return load_tokenizer(resolve_model_path("tiny-random-llama"))


def test_counts_match_the_chat_encoding_where_it_matters():
    tok = _tokenizer()
    texts = ["What is 2 + 3?", "x" * 300, "naïve café 😀 " * 20, "line\n\nbreaks  and   spaces", ""]
    problems = [Problem(t, "1") for t in texts]
    exact = [len(encode_chat(tok, t, "Be brief.")) for t in texts]
    estimate = prompt_lengths(tok, problems, "Be brief.", room=10_000)
    assert all(abs(a - b) <= 2 for a, b in zip(estimate, exact)), (estimate, exact)
    # within reach of the room every count is exact, so no row is misjudged at the boundary
    for room in {*exact, *(n - 1 for n in exact)}:
        counted = prompt_lengths(tok, problems, "Be brief.", room=room)
        assert [n > room for n in counted] == [n > room for n in exact]


def test_a_long_row_is_named_or_dropped():
    tok = _tokenizer()
    problems = [Problem("1 + 1", "2", origin="train.jsonl row 1"), Problem(LONG, "3", origin="train.jsonl row 7"),
                Problem("2 + 2", "4")]
    room = prompt_room(2048, None, 64, "rollout.max_new_tokens")
    assert room == PromptRoom(1984, "the model's context of 2048 positions less rollout.max_new_tokens=64")
    with pytest.raises(ValueError, match=r"1 of 3 training problems .* longer than 1984 tokens \(the model's "
                       r"context .*\): train\.jsonl row 7: \d{4} tokens\. .*data\.drop_long_prompts: true"):
        check_problems(tok, problems, None, room, "training", "JsonlTask", drop=False)
    with pytest.warns(UserWarning, match="left out 1 of 3 training problems"):
        kept = check_problems(tok, problems, None, room, "training", "JsonlTask", drop=True)
    assert [p.answer for p in kept] == ["2", "4"]
    with pytest.raises(ValueError, match="would leave no held-out problem"):
        check_problems(tok, problems[1:2], None, room, "held-out", "JsonlTask", drop=True)
    # the engine's limit, when tighter, is the one named; no limit known checks nothing
    assert prompt_room(2048, 512, 64, "x").why == "the engine's max_model_len of 512 positions less x=64"
    assert check_problems(tok, problems, None, None, "training", "JsonlTask", drop=False) == problems
    with pytest.raises(ValueError, match="rollout.max_new_tokens=4096 does not fit the model's context of 2048"):
        prompt_room(2048, None, 4096, "rollout.max_new_tokens")


def _rows(path: Path, long_at: int, n: int = 6) -> Path:
    rows = [{"question": LONG if i == long_at else f"{i} + {i}?", "answer": f"#### {2 * i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" + ("\n" if i == 1 else "") for i, r in enumerate(rows)))
    return path


def _cli(stage: str, tmp_path: Path, *extra: str):
    return run_cli([stage, "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                    "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                    "--data.task=ibpo_lightning.tasks.JsonlTask", "--data.task.system_prompt=null",
                    "--data.task.reward=ibpo_lightning.rewards.NumberReward", *extra])


def test_fit_names_the_file_and_line_before_the_first_step_or_drops_the_row(tmp_path):
    train = _rows(tmp_path / "train.jsonl", long_at=4)  # a blank line after row 2: row 5 is line 6
    with pytest.raises(ValueError, match=r"1 of 5 training problems .* train\.jsonl row 6: \d+ tokens"):
        _cli("fit", tmp_path / "a", f"--data.task.train_path={train}", "--data.task.heldout_size=1",
             "--data.task.seed=1")
    cli = _cli("fit", tmp_path / "b", f"--data.task.train_path={train}", "--data.task.heldout_size=1",
               "--data.task.seed=1", "--data.drop_long_prompts=true", "--data.steps=1")
    assert cli.model.policy_version == 1 and len(cli.datamodule.train_problems) == 4
    assert all(p.prompt != LONG for p in cli.datamodule.train_problems)


def test_validate_names_a_held_out_row(tmp_path):
    train = _rows(tmp_path / "train.jsonl", long_at=-1)
    heldout = _rows(tmp_path / "heldout.jsonl", long_at=2)
    with pytest.raises(ValueError, match=r"1 of 6 held-out problems .* heldout\.jsonl row 4: \d+ tokens"):
        _cli("validate", tmp_path, f"--data.task.train_path={train}", f"--data.task.heldout_path={heldout}")


def test_sft_validate_names_a_held_out_row_or_drops_it(tmp_path):
    from ibpo_lightning.cli import run_sft_cli

    rows = [{"question": LONG if i == 1 else f"{i} + {i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"} for i in range(4)]
    data, train = tmp_path / "sft.jsonl", tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"}) + "\n"
                             for i in range(4)))
    args = ["validate", "-c", str(ROOT / "configs/sft_tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            "--data.task=ibpo_lightning.tasks.JsonlTask", f"--data.task.train_path={train}",
            f"--data.task.heldout_path={data}", "--data.task.solution_field=answer", "--data.task.system_prompt=null",
            "--data.task.reward=ibpo_lightning.rewards.NumberReward"]
    with pytest.raises(ValueError, match=r"1 of 4 held-out problems .* sft\.jsonl row 2: \d+ tokens"):
        run_sft_cli(args)
    with pytest.warns(UserWarning, match="left out 1 of 4 held-out problems"):
        cli = run_sft_cli([*args, "--data.drop_long_prompts=true"])
    assert len(cli.datamodule.evaluation_problems("held-out")) == 3


def test_a_benchmark_row_is_named_or_dropped(tmp_path):
    """``model.benchmarks`` tasks are checked with the held-out budget and their own system prompt."""
    extra = _rows(tmp_path / "extra.jsonl", long_at=3)
    benchmarks = {"extra": {"class_path": "ibpo_lightning.tasks.JsonlTask",
                            "init_args": {"heldout_path": str(extra), "system_prompt": None,
                                          "reward": {"class_path": "ibpo_lightning.rewards.NumberReward"}}}}
    args = [f"--model.benchmarks={json.dumps(benchmarks)}", "--data.task=ibpo_lightning.tasks.ArithmeticTask",
            "--data.task.num_heldout=2"]
    with pytest.raises(ValueError, match=r"1 of 6 extra held-out problems .* extra\.jsonl row 5: \d+ tokens"):
        run_cli(["validate", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}/a",
                 "--trainer.enable_progress_bar=false", "--trainer.logger=false", *args])
    with pytest.warns(UserWarning, match="left out 1 of 6 extra held-out problems"):
        cli = run_cli(["validate", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}/b",
                       "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--data.drop_long_prompts=true",
                       *args])
    assert len(cli.model.checked_benchmarks["extra"]) == 5 and "val/extra/mean@1" in cli.trainer.callback_metrics
