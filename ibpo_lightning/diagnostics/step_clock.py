"""Wall time, throughput and peak memory of each RL step, for benchmarks and long runs."""

from __future__ import annotations

import resource
import time

import torch
from lightning.pytorch import Callback


class StepClock(Callback):
    """Logs ``time/step`` (wall time from the end of one training step to the end of the next:
    sampling, reward, estimator, training, weight sync), ``throughput/*`` in
    tokens per second of that time, and the process's peak memory (``memory/*``, GiB).

    The first step also carries start-up work (engine warm-up, compilation): drop it when
    averaging. Steps that a validation pass interrupts include its time.
    """

    def __init__(self) -> None:
        self.last: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        elapsed, self.last = now - (self.last or now), now
        batch = outputs["rollout"]  # the step's RolloutBatch (``PolicyModule.training_step``)
        generated = sum(v for k, v in batch.stats.items() if k.startswith("tokens/"))
        trained = float((batch.loss_weights > 0).sum()) if batch.loss_weights is not None else 0.0
        metrics = {"time/step": elapsed,
                   "throughput/generated_tokens_per_s": generated / max(elapsed, 1e-9),
                   "throughput/trained_tokens_per_s": trained / max(elapsed, 1e-9),
                   "memory/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if torch.cuda.is_available():
            metrics["memory/peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
