"""One RL step, top to bottom, in one place.

    problems -> sample groups (answers or multi-turn episodes) -> rewards -> (dynamic sampling)
    -> the estimator's extra rollouts -> collate -> reference log-probs -> prepare -> assign
    (environment tokens masked) -> update -> metrics

``PolicyModule.training_step`` hands :meth:`RLStep.run` the problems the data module drew for
this step and logs what comes back; no other Lightning hook takes part in it (the rollout
callback syncs the new weights into the engine afterwards, in ``on_train_batch_end``). Sampling
happens inside the step, with the weights of that moment, so a batch can never be sampled by an
older policy than the engine holds; the step still checks the engine's version against the
trainer's (``max_policy_lag``), since an engine that keeps its own weights can miss a sync.

Every forward pass goes through the :class:`~ibpo_lightning.training.scorer.Scorer`, every
generate call through the :class:`~ibpo_lightning.rollout.sampler.Sampler`; per-batch data the
estimator computes travels in ``batch.notes``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from ibpo_lightning.diagnostics import group_gradient_noise
from ibpo_lightning.tasks.base import Problem
from ibpo_lightning.training import PolicyUpdate, Scorer, batch_metrics
from ibpo_lightning.training.metrics import episode_metrics
from ibpo_lightning.types import RolloutBatch
from ibpo_lightning.wiring import RunParts


class StaleEngineError(RuntimeError):
    """The engine's weights are older than the run allows (a missed weight sync)."""


@dataclass
class StepResult:
    """What one RL step leaves: the batch (for callbacks: ``outputs["rollout"]``), its metrics, and
    the gradient-noise metrics when they were due (logged once, not every step)."""

    batch: RolloutBatch
    metrics: dict[str, float]
    noise: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(stats: dict[str, float], key: str):
    start = time.perf_counter()
    yield
    stats[key] = stats.get(key, 0.0) + time.perf_counter() - start


class RLStep:
    """Runs one RL step with the run's parts, the host's scorer and its policy update.

    Args:
        parts: the sampler, task, estimator, prompt source and dynamic-sampling switch.
        scorer: every forward pass (reference log-probs, the estimator's, the update's).
        update: the optimizer updates of one batch.
        needs_reference: fill ``batch.ref_logprobs`` (KL in the loss or the estimator's reward).
        max_policy_lag: how many updates the engine's weights may lag the trainer's.
        grad_noise_every: every this many steps log the per-group gradient noise (one process).
    """

    def __init__(self, parts: RunParts, scorer: Scorer, update: PolicyUpdate, needs_reference: bool,
                 max_policy_lag: int = 0, grad_noise_every: int = 0) -> None:
        self.parts, self.scorer, self.update = parts, scorer, update
        self.needs_reference, self.max_policy_lag, self.grad_noise_every = needs_reference, max_policy_lag, grad_noise_every

    def run(self, problems: list[Problem], version: int, opt, sched, device) -> StepResult:
        """Sample, credit and train on ``problems`` with the policy at ``version``."""
        sampler, task, estimator, parallel = self.parts.sampler, self.parts.task, self.parts.estimator, self.scorer.parallel
        lag = version - sampler.engine_version
        if not 0 <= lag <= self.max_policy_lag:
            raise StaleEngineError(
                f"the engine holds policy version {sampler.engine_version}, but the policy is at {version} "
                f"(model.update.max_policy_lag={self.max_policy_lag}): the engine missed a weight sync")
        sampler.policy_version = version  # keys the seeds: a resumed step samples what it sampled before
        self.scorer.tokens_scored = 0
        batch = sampler.sample_groups(problems, task.system_prompt)
        with _timed(batch.stats, "time/reward"):
            fresh, batch.trajectories = batch.trajectories, []
            batch.add_scored(fresh, task)
        if self.parts.dynamic_sampling is not None:
            with _timed(batch.stats, "time/resample"):
                draw, most = self.parts.draw_problems, lambda n: int(parallel.reduce(n, "max"))
                batch.stats.update(self.parts.dynamic_sampling.fill(batch, sampler, task, draw, most))
        with _timed(batch.stats, "time/estimator"):
            estimator.plan(batch, sampler, task)
        batch.stats.update({f"tokens/{kind}": float(n) for kind, n in sampler.tokens_by_kind.items()})
        batch.stats["generate/prompt_tokens"] = float(sampler.prompt_tokens)
        batch.stats.update(episode_metrics(sampler.episode_counts))
        batch.collate(sampler.tokenizer.pad_token_id).to(device)
        with _timed(batch.stats, "time/logprobs"):
            if self.needs_reference:  # KL in the loss or in the estimator's reward: computed once
                batch.ref_logprobs = self.scorer.full(batch, batch.rows(lambda t: t.trained), "reference")
        with _timed(batch.stats, "time/estimator"):
            estimator.prepare(batch, self.scorer)
            batch.advantages, batch.loss_weights = estimator.assign(batch)
            batch.loss_weights = batch.model_tokens_only(batch.loss_weights)  # environment tokens: context only
        noise = self._gradient_noise(batch, version)
        metrics = batch_metrics(batch)
        for key, value in self.update.run(batch, opt, sched, lag).items():
            metrics[key] = metrics.get(key, 0.0) + value  # time/logprobs: the reference's and the old policy's
        metrics["logprobs/tokens"] = float(self.scorer.tokens_scored)
        return StepResult(batch, parallel.same_keys(metrics), noise)

    def _gradient_noise(self, batch: RolloutBatch, version: int) -> dict[str, float]:
        due = self.grad_noise_every and version % self.grad_noise_every == 0
        if not due or self.scorer.parallel.world > 1:  # one process only
            return {}
        rows = [i for i in range(len(batch)) if bool(batch.loss_weights[i].any())]
        return group_gradient_noise(self.scorer, self.update.loss, batch, rows)
