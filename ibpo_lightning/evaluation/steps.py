"""Held-out evaluation inside a run: the validation and test hooks shared by the RL module and the
supervised fine-tuning module.

Each validation (test) batch is a list of the data module's held-out (test) problems, sampled
through the run's :class:`~ibpo_lightning.rollout.sampler.Sampler` and scored by the task's
``verify`` (:class:`EvalSuite`); at the epoch's end each ``model.benchmarks`` task is evaluated
too and the table printed. Lightning's sanity pass (``num_sanity_val_steps: -1``) is the
"before training" measurement, logged at step 0.
"""

from __future__ import annotations

from torchmetrics import MeanMetric

from ibpo_lightning.evaluation.suite import EvalConfig, EvalSuite
from ibpo_lightning.tasks.base import Task


class HeldoutEvaluation:
    """A ``LightningModule`` mixin: mean@n / pass@k on the held-out (or test) split and on extra
    benchmarks.

    The module calls ``init_evaluation`` in its ``__init__`` (after ``LightningModule.__init__``)
    and provides ``parts`` (the run's sampler and task, ``wiring.RunParts``) and
    ``policy_version`` (optimizer updates so far); the data module provides ``val_batch_size``.
    """

    def init_evaluation(self, evaluation: EvalConfig | None, benchmarks: dict[str, Task] | None) -> None:
        self.val_accuracy = MeanMetric()
        ev = evaluation if evaluation is not None else EvalConfig()
        self.benchmarks, self.heldout_name = dict(benchmarks or {}), ev.heldout_name
        self.checked_benchmarks: dict[str, list] = {}
        """Each benchmark's problems as the stage's prompt check kept them (``PolicyHost._fit_prompts``)."""
        if ev.heldout_name in self.benchmarks:
            raise ValueError(f"model.benchmarks may not reuse the held-out split's name {ev.heldout_name!r}")
        self.evaluation = EvalSuite([ev.heldout_name, *self.benchmarks], ev.samples,
                                    ev.pass_k or sorted({1, ev.samples}), ev.temperature, ev.max_new_tokens,
                                    ev.greedy)

    def validation_step(self, problems, batch_idx: int) -> None:
        self._evaluate(problems)

    def test_step(self, problems, batch_idx: int) -> None:
        self._evaluate(problems)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _evaluate(self, problems) -> None:
        right = self.evaluation.evaluate(self.parts.sampler, self.heldout_name, self.parts.task, problems)
        self.val_accuracy.update(right.flatten())  # <split>/accuracy: the mean over all samples

    def _report(self, split: str) -> None:
        chunk = self.trainer.datamodule.val_batch_size
        for name, task in self.benchmarks.items():
            problems = self.checked_benchmarks.get(name)  # as the start-up length check kept them
            if problems is None:
                problems = list(task.test_problems() if split == "test" else task.heldout_problems())
            for start in range(0, len(problems), chunk):
                self.evaluation.evaluate(self.parts.sampler, name, task, problems[start : start + chunk])
        accuracy = float(self.val_accuracy.compute())
        self.val_accuracy.reset()
        results = self.evaluation.compute()
        table = self.evaluation.table(results)
        self.evaluation.reset()
        metrics = {f"{split}/accuracy": accuracy}
        for name, values in results.items():
            prefix = f"{split}/" if name == self.heldout_name else f"{split}/{name}/"
            metrics.update({prefix + key: value for key, value in values.items()})
        what = "test" if split == "test" else "held-out"
        if self.trainer.sanity_checking:  # the sanity pass is the "before training" measurement
            for logger in self.loggers:
                logger.log_metrics({**metrics, "val/policy_version": 0.0}, step=0)
            self.print(f"{what} accuracy before training: {accuracy:.3f}\n{table}")
            return
        self.log(f"{split}/accuracy", metrics.pop(f"{split}/accuracy"), prog_bar=True)
        self.log_dict(metrics)
        self.log(f"{split}/policy_version", float(self.policy_version))
        self.print(f"{what} accuracy after {self.policy_version} steps: {accuracy:.3f}\n{table}")

    def teardown(self, stage: str) -> None:
        for task in self.benchmarks.values():  # their rewards' worker processes
            task.close()
