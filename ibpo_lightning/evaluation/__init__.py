"""Evaluation: mean@k and pass@k metrics, benchmark suites and presets."""

from ibpo_lightning.evaluation.benchmarks import PRESETS, benchmark
from ibpo_lightning.evaluation.metrics import BenchmarkMetrics, MeanAtK, PassAtK, pass_at_k
from ibpo_lightning.evaluation.steps import HeldoutEvaluation
from ibpo_lightning.evaluation.suite import EvalConfig, EvalSuite, correctness, sample_correctness

__all__ = ["PRESETS", "BenchmarkMetrics", "EvalConfig", "EvalSuite", "HeldoutEvaluation", "MeanAtK", "PassAtK",
           "benchmark", "correctness", "pass_at_k", "sample_correctness"]
