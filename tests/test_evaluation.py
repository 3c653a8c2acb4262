"""pass@k and mean@k metrics, the evaluation suite, `ibpo validate` with sampling, scripts/evaluate.py."""

import importlib.util
import itertools
import json
import random
import re
from pathlib import Path

import pytest
import torch

from ibpo_lightning.cli import run_cli
from ibpo_lightning.evaluation import BenchmarkMetrics, EvalSuite, MeanAtK, PassAtK, pass_at_k
from ibpo_lightning.rewards import NumberReward
from ibpo_lightning.rollout.engine import Sample
from ibpo_lightning.tasks import JsonlTask, Problem

ROOT = Path(__file__).parents[1]
GPU_CONFIGS = sorted((ROOT / "configs" / "gpu").glob("*.yaml"))


def brute_force_pass_at_k(samples: list[int], k: int) -> float:
    """The fraction of all k-subsets of the samples holding at least one right one."""
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force_on_random_inputs():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 10)
        row = [int(rng.random() < rng.random()) for _ in range(n)]
        k = rng.randint(1, n)
        assert pass_at_k(n, sum(row), k) == pytest.approx(brute_force_pass_at_k(row, k), abs=1e-12)


def test_pass_at_k_metric_matches_brute_force_over_problems():
    torch.manual_seed(0)
    correct = (torch.rand(37, 8) < torch.rand(37, 1)).float()
    for k in (1, 2, 5, 8):
        metric = PassAtK(k)
        metric.update(correct[:20])
        metric.update(correct[20:])  # accumulates over batches
        expected = sum(brute_force_pass_at_k(row, k) for row in correct.int().tolist()) / len(correct)
        assert float(metric.compute()) == pytest.approx(expected, abs=1e-9)


def test_pass_at_k_edge_cases_and_stability():
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: every 3-subset holds a right one
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # C(200, 100) overflows a naive float
    assert pass_at_k(1000, 10, 1) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_mean_at_k_and_pass_at_1_agree():
    correct = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    mean, p1, p4 = MeanAtK(), PassAtK(1), PassAtK(4)
    for m in (mean, p1, p4):
        m.update(correct)
    assert float(mean.compute()) == pytest.approx((0.25 + 1 + 0) / 3)
    assert float(p1.compute()) == pytest.approx(float(mean.compute()))
    assert float(p4.compute()) == pytest.approx(2 / 3)


def test_benchmark_metrics_reset_and_validation():
    metrics = BenchmarkMetrics(samples=4, pass_k=[4, 1, 2])
    metrics.update(torch.tensor([[0, 1, 0, 0.0]]))
    assert list(metrics.compute()) == ["mean@4", "pass@1", "pass@2", "pass@4"]
    assert metrics.problems == 1
    metrics.reset()
    assert metrics.problems == 0
    with pytest.raises(ValueError, match=r"k=\[8\]"):
        BenchmarkMetrics(samples=4, pass_k=[1, 8])
    with pytest.raises(ValueError, match="at least 2 samples"):
        PassAtK(2).update(torch.ones(3, 1))


class ScriptedRollout:
    """A stand-in for the Sampler: answer ``i`` of every problem is ``answers[i]``."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def encode(self, text, system=None):
        return [len(text)]

    def generate(self, prompts, n, *, temperature, max_new_tokens=None, kind="fresh"):
        self.calls.append((n, temperature, max_new_tokens, kind))
        return [[Sample([1], [0.0], self.answers[i], True) for i in range(n)] for _ in prompts]

    def answer(self, problems, prompts, n, **kw):  # single-turn: one generate call
        return self.generate(prompts, n, **kw)


def test_eval_suite_computes_and_tabulates(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+0?", "answer": str(i)}) + "\n" for i in range(4)))
    task = JsonlTask(heldout_path=str(path), answer_format="plain", reward=NumberReward())
    suite = EvalSuite(["heldout", "mini"], samples=3, pass_k=[1, 3], temperature=0.7, max_new_tokens=5)
    rollout = ScriptedRollout(["\\boxed{0}", "\\boxed{1}", "nothing"])
    problems = list(task.heldout_problems())  # answers 0, 1, 2, 3
    right = suite.evaluate(rollout, "mini", task, problems)
    assert right.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert rollout.calls == [(3, 0.7, 5, "validation")]
    results = suite.compute()
    assert list(results) == ["mini"]  # the held-out split saw no problems
    assert results["mini"] == pytest.approx({"mean@3": 2 / 12, "pass@1": 2 / 12, "pass@3": 0.5})
    lines = suite.table(results).splitlines()
    assert lines[0].split() == ["benchmark", "problems", "samples", "temp", "mean@3", "pass@1", "pass@3", "seconds"]
    assert lines[1].split()[:7] == ["mini", "4", "3", "0.7", "0.167", "0.167", "0.500"]


def test_eval_suite_adds_a_greedy_pass_beside_the_samples(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i}+0?", "answer": str(i)}) + "\n" for i in range(2)))
    task = JsonlTask(heldout_path=str(path), answer_format="plain", reward=NumberReward())
    suite = EvalSuite(["heldout"], samples=2, pass_k=[2], temperature=1.0, greedy=True)
    rollout = ScriptedRollout(["\\boxed{0}", "nothing"])  # the greedy pass gets the first script line
    right = suite.evaluate(rollout, "heldout", task, list(task.heldout_problems()))
    assert right.tolist() == [[1, 0], [0, 0]]  # the return value stays the sampled answers
    assert rollout.calls == [(2, 1.0, None, "validation"), (1, 0.0, None, "validation")]
    assert suite.compute()["heldout"] == pytest.approx({"mean@2": 0.25, "pass@2": 0.5, "greedy": 0.5})
    assert "greedy" in suite.table(suite.compute()).splitlines()[0].split()


def test_eval_suite_refuses_identical_greedy_samples_and_bad_names():
    with pytest.raises(ValueError, match="evaluation.temperature > 0"):
        EvalSuite(["heldout"], samples=4, temperature=0.0)
    with pytest.raises(ValueError, match="greedy needs model.evaluation.temperature > 0"):
        EvalSuite(["heldout"], temperature=0.0, greedy=True)
    with pytest.raises(ValueError, match="without '.' or '/'"):
        EvalSuite(["heldout", "gsm8k/test"])


def test_validate_with_samples_reports_pass_at_k_per_benchmark(tmp_path, capsys):
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n"
                             for i in range(3)))
    benchmarks = {"extra": {"class_path": "ibpo_lightning.tasks.JsonlTask",
                            "init_args": {"heldout_path": str(extra), "answer_format": "plain",
                                          "reward": {"class_path": "ibpo_lightning.rewards.NumberReward"}}}}
    cli = run_cli(["validate", "-c", str(ROOT / "configs/tiny.yaml"), f"--trainer.default_root_dir={tmp_path}",
                   "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                   "--model.evaluation.samples=2", "--model.evaluation.temperature=1.0", "--model.evaluation.pass_k=[1, 2]",
                   f"--model.benchmarks={json.dumps(benchmarks)}"])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    for key in ("val/accuracy", "val/mean@2", "val/pass@1", "val/pass@2", "val/extra/mean@2", "val/extra/pass@2"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["val/accuracy"] == pytest.approx(metrics["val/mean@2"])
    assert metrics["val/pass@1"] == pytest.approx(metrics["val/mean@2"])
    assert metrics["val/pass@2"] >= metrics["val/pass@1"]
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("benchmark"))
    assert header.split() == ["benchmark", "problems", "samples", "temp", "mean@2", "pass@1", "pass@2", "seconds"]
    assert re.search(r"^heldout\s+8\s+2\s+1\s", out, re.MULTILINE)  # tiny.yaml holds out 8 problems
    assert re.search(r"^extra\s+3\s+2\s+1\s", out, re.MULTILINE)
    assert cli.model.evaluation.metrics["heldout"].problems == 0  # reset after the epoch


@pytest.mark.parametrize("config", GPU_CONFIGS, ids=lambda p: p.name)
def test_gpu_configs_parse(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "-c", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "estimator:" in out and "samples: 8" in out


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_evaluate_script_on_two_benchmarks(shared_data, capsys):
    evaluate = load_script("evaluate")
    metrics = evaluate.main(["--model", "tiny-random-llama", "--benchmark", "countdown", "--benchmark", "aime24",
                             "--limit", "3", "--samples", "2", "--max-new-tokens", "4", "--engine", "hf",
                             "--data-dir", str(shared_data)])
    assert {"val/pass@1", "val/pass@2", "val/aime24/pass@2", "val/aime24/mean@2"} <= set(metrics)
    out = capsys.readouterr().out
    assert re.search(r"^countdown\s+3\s+2\s+0\.7\s", out, re.MULTILINE)
    assert re.search(r"^aime24\s+3\s+2\s+0\.7\s", out, re.MULTILINE)
    assert "s in all" in out
